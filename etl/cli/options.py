"""Options several commands share, and what they resolve to (settings, database and Redis URLs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.markup import escape

from etl.cli.render import F, err
from etl.config import Settings
from etl.run import MANIFEST
from etl.staging_fs import is_uri, resolve

json_option = click.option(
    "--json", "as_json", is_flag=True,
    help='Print one JSON document on stdout, also on failure ({"error": {"type", "message", "file", '
         '"record", "next"}}, same exit code); progress and messages go to stderr.')


def ctx_settings(ctx: click.Context, **flags: Any) -> Settings:
    base: Settings = ctx.obj["settings"]
    return base.with_overrides(**flags)


def looks_like_run(path: str) -> bool:
    return (resolve(path) / MANIFEST).is_file()


class RunDir(click.ParamType):
    """A staged run: a folder (a :class:`~pathlib.Path`, which must exist when ``exists``), or a
    URI under a staging root on another filesystem (``s3://...``; kept as text for ``open_run``)."""

    name = "run"

    def __init__(self, *, exists: bool = True) -> None:
        self.exists = exists

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Path | str:
        if isinstance(value, str) and is_uri(value):
            return value
        path = Path(value)
        if self.exists and not path.is_dir():
            self.fail(f"Directory {str(value)!r} does not exist.", param, ctx)
        return path


ENGINE_OPTIONS = [
    click.option("--engine", type=click.Choice(["local", "ray"]),
                 help="Where the work runs: local threads and processes, or tasks on a Ray cluster "
                      "(the stage, the transform a table a task, the load's COPY a chunk a task; env "
                      "ETL_ENGINE, [tool.etl] engine; default local). Ray: pip install 'etl-staging[ray]'."),
    click.option("--ray-address", metavar="ADDRESS",
                 help="The Ray cluster for --engine ray, e.g. ray://head:10001 (env ETL_RAY_ADDRESS); "
                      "none: a local Ray is started for the run and stopped after."),
]


def engine_options(fn: F) -> F:
    """``--engine`` and ``--ray-address`` (commands that are not stage options' users)."""
    for opt in reversed(ENGINE_OPTIONS):
        fn = opt(fn)
    return fn


STAGE_OPTIONS = [
    click.option("--memory-limit",
                 help="DuckDB memory limit while staging, e.g. 256MB (env ETL_MEMORY_LIMIT)."),
    click.option("--chunk-rows", type=int, help="At most this many rows per Parquet chunk."),
    click.option("--threads", type=int, help="Worker threads (default: one per core)."),
    *ENGINE_OPTIONS,
    click.option("--max-record-bytes", type=int, default=64 << 20, show_default=True,
                 help="Refuse a single JSON record larger than this."),
    click.option("--force", is_flag=True, help="Stage again even if this content was staged before."),
    click.option("--strict", is_flag=True, help="Stop on a file that is not valid JSON even where the "
                 "dataset quarantines such files (licenses)."),
]


def stage_options(fn: F) -> F:
    for opt in reversed(STAGE_OPTIONS):
        fn = opt(fn)
    return fn


rule_option = click.option(
    "--rule", "rules", multiple=True, metavar="NAME=SEVERITY",
    help="Run one rule at another severity: error, warning or off (repeatable; NAME may be a "
         "glob such as 'powers.*.range'). Adds to ETL_RULES and [tool.etl] rules, and wins "
         "over them for the rules it names.")


UNSAFE_WARNING = (
    "--unsafe-fast builds the tables UNLOGGED and commits without waiting for the disk. "
    "UNLOGGED tables skip the write-ahead log: if the PostgreSQL server crashes or is shut down "
    "uncleanly, they come back EMPTY, and they are not copied to replicas or point-in-time "
    "backups. Use it for scratch databases you can rebuild (`etl rebuild RUN`), not for data "
    "you need to keep.")


def load_options(fn: F) -> F:
    for opt in reversed([
        click.option("--database-url", help="PostgreSQL URL (env ETL_DATABASE_URL or DATABASE_URL; "
                     "default: the project's embedded server, started if needed)."),
        click.option("--unsafe-fast", is_flag=True,
                     help="Build UNLOGGED tables with synchronous_commit off (faster; lost on a "
                          "server crash). Asks for confirmation."),
        click.option("--yes", is_flag=True, help="Do not ask for confirmation (with --unsafe-fast)."),
        json_option,
        click.option("--mode", "load_mode", type=click.Choice(["full", "merge"]), default="full",
                     show_default=True,
                     help="full: build a new schema and swap it in; merge: upsert into the live "
                          "tables (insert new rows, update changed ones, report unchanged)."),
        click.option("--tag", help="Name of the import (the dataset row its rows belong to; "
                     "licenses). Default: the dataset's default tag."),
        click.option("--delete-missing", is_flag=True,
                     help="With --mode merge: delete live rows (of the import's tag) that the "
                          "import no longer has."),
        click.option("--warm", "warm", type=int, default=0, show_default=True, metavar="N",
                     help="After the load, preload the read cache's N hottest keys into Redis "
                          "(ETL_REDIS_URL) for the new data; 0: don't."),
    ]):
        fn = opt(fn)
    return fn


def resolve_mode(unsafe_fast: bool, yes: bool, load_mode: str = "full") -> Any:
    if load_mode == "merge":
        if unsafe_fast:
            raise click.UsageError("--unsafe-fast applies to full loads, not --mode merge")
        return "merge"
    if not unsafe_fast:
        return "full"
    err.print(f"[bold yellow]warning:[/] {escape(UNSAFE_WARNING)}", soft_wrap=True)
    if not yes and not click.confirm("Load with --unsafe-fast?", default=False, err=True):
        raise click.Abort()
    return "unsafe-fast"


project_dir_option = click.option(
    "--project-dir", type=click.Path(file_okay=False, path_type=Path),
    help="The project whose server to use (default: the folder of the nearest pyproject.toml).")


database_url_option = click.option(
    "--database-url", help="PostgreSQL URL (env ETL_DATABASE_URL or DATABASE_URL; default: the embedded "
                           "server under the project directory).")


def resolve_database_url(ctx: click.Context, flag: str | None, *, start: bool = True) -> str:
    """The database to use: --database-url > environment > the embedded server, started if
    needed; ``start=False`` (read-only commands): only a running one, else
    :class:`~etl.infra.errors.NoDatabase` saying what to pass or start."""
    from etl.infra.pg import existing_url, resolve_url

    url = ctx_settings(ctx, database_url=flag).database_url
    return resolve_url(url) if start else existing_url(url)


redis_url_option = click.option(
    "--redis-url", help="Redis for the shared cache tier (env ETL_REDIS_URL; default: none, the cache is "
                        "in-process only).")


def resolve_redis_url(ctx: click.Context, flag: str | None) -> str | None:
    """The Redis to use: --redis-url > ETL_REDIS_URL > none."""
    return ctx_settings(ctx, redis_url=flag).redis_url or None


def cache_options(fn: F) -> F:
    return database_url_option(redis_url_option(fn))
