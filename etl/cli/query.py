"""Cached reads of the live data: ``etl query DATASET QUERY ARG``, one group per dataset whose
reads are declared (:attr:`etl.dataset.Dataset.reads`), one command per query."""

from __future__ import annotations

from typing import Any

import click

from etl.cli.options import cache_options, json_option, resolve_database_url, resolve_redis_url
from etl.cli.render import echo_json, handle_errors
from etl.dataset import ReadQuery, Reads
from etl.datasets import available


def _reads() -> dict[str, Reads]:
    return {name: ds.reads for name, ds in available().items() if ds.reads is not None}


def _query_cmd(dataset: str, q: ReadQuery) -> click.Command:
    @click.command(q.name, help=q.help)
    @click.argument("arg", metavar=q.metavar)
    @cache_options
    @json_option  # an answer is always JSON; the flag is accepted as on every command
    @click.pass_context
    @handle_errors
    def cmd(ctx: click.Context, arg: str, database_url: str | None, redis_url: str | None,
            as_json: bool) -> None:
        from etl.infra.cache import Cache
        from etl.query import run

        with Cache(resolve_database_url(ctx, database_url, start=False),
                   redis_url=resolve_redis_url(ctx, redis_url)) as cache:
            result = run(cache, dataset, q.name, arg)
        echo_json(result)

    return cmd


class _DatasetReads(click.Group):
    """``etl query DATASET``: a group of the dataset's queries."""

    def __init__(self, name: str, reads: Reads, **attrs: Any) -> None:
        super().__init__(name, help=reads.help or f"Reads of the {name} dataset.", **attrs)
        for q in reads.queries:
            self.add_command(_query_cmd(name, q))


class _QueryGroup(click.Group):
    """The datasets with reads, found in the registry when asked (so `etl --help` loads none)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_reads())

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        reads = _reads().get(cmd_name)
        return _DatasetReads(cmd_name, reads) if reads is not None else None


@click.group("query", cls=_QueryGroup)
def query_group() -> None:
    """Cached reads of the live data (in-process LRU, then Redis, then PostgreSQL), as JSON.

    Every answer carries the dataset's generation: which load it comes from. A read that starts
    after a load's swap committed always sees that load. The queries are the datasets' own
    (`etl query DATASET --help`).

    \b
    Examples:
      etl query mids power 42
      etl query mids powerset Blaster_Ranged.Fire_Blast
      etl query mids build-summary Blaster --redis-url redis://127.0.0.1:6379/0
    """
