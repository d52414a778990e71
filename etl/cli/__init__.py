"""The ``etl`` command: a thin layer over the library, in command groups (one module each).

Every command parses its options, makes one library call and renders the result (see
:mod:`etl.cli.render`); only this package prints. A failure is rendered by
:mod:`etl.cli.failures`, the same for every command (with ``--json``: the error document).
Human output (progress, tables, errors) goes to stderr; what a script wants (a run directory, a
JSON summary) goes to stdout.
"""

from __future__ import annotations

import gc
import logging
from typing import Any

import click
from rich.logging import RichHandler

from etl import interrupt
from etl.cli.failures import ARGV, fail
from etl.cli.render import err, print_phases, print_report
from etl.config import load_settings
from etl.metrics import bounded_allocators
from etl.version import __version__


class EtlGroup(click.Group):
    """The root group: it keeps the command line (for "run the same command again" hints); an
    error outside a command's own handling (a usage error, an invalid setting) is shown as the
    commands show theirs, with ``--json`` as the error document on stdout."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta[ARGV] = list(args)
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.Abort) as exc:
            if "--json" not in ctx.meta.get(ARGV, ()):
                raise
            fail(exc, as_json=True)
        except click.exceptions.Exit:
            raise
        except (Exception, KeyboardInterrupt) as exc:
            # Outside the commands' own handling: the settings (an invalid ETL_* value), parsing.
            fail(exc, as_json="--json" in ctx.meta.get(ARGV, ()))


@click.group(cls=EtlGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="etl")
@click.option("--staging-dir", type=str, metavar="PATH|URI",
              help="Where runs are staged: a folder, or a URI pyarrow opens (file://, s3://, gs://, "
                   "hdfs://) (env ETL_STAGING_DIR; default ./staging).")
@click.option("-v", "--verbose", count=True, help="Log more (-v info, -vv debug).")
@click.pass_context
def main(ctx: click.Context, staging_dir: str | None, verbose: int) -> None:
    """Stage JSON exports as Parquet, validate and transform them, load them into PostgreSQL.

    \b
    Typical use:
      etl stage mids ./export            # -> staging/mids/<run>
      etl validate staging/mids/<run>
      etl transform staging/mids/<run>
      etl demo                           # all of it on a generated export

    Every command takes --json: one JSON document on stdout, an error document on failure
    ({"error": {"type", "message", "file", "record", "next"}}) with the same exit code. Ctrl-C
    or SIGTERM stops a command cleanly (exit 130 / 143) and names the command that resumes.
    """
    interrupt.install()  # Ctrl-C and SIGTERM raise Interrupted: cleaned up, exit 130 / 143
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=max(level, logging.DEBUG), format="%(message)s",
                        handlers=[RichHandler(console=err, show_path=False)], force=True)
    ctx.ensure_object(dict)
    ctx.obj["settings"] = load_settings(staging_dir=staging_dir)
    bounded_allocators()
    # The modules loaded so far live as long as the process: out of the cyclic collector's sight,
    # and it runs less often (its full passes over them were 2-3% of a stage's CPU).
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


def _register() -> None:
    from etl.cli import bench, cache, data, db, ops, pipeline, query, report, spec

    for command in (
        data.datasets_cmd, data.generate_cmd, data.demo_cmd, spec.init_cmd,
        pipeline.stage_cmd, pipeline.validate_cmd, pipeline.transform_cmd, pipeline.load_cmd,
        pipeline.run_cmd, pipeline.rebuild_cmd, pipeline.reconcile_cmd,
        bench.bench_cmd, bench.bench_reads_cmd,
        db.db_group, ops.runs_group, ops.health_cmd, ops.stats_cmd,
        cache.cache_group, query.query_group, report.report_cmd,
    ):
        main.add_command(command)


_register()

__all__ = ["main", "print_phases", "print_report"]

if __name__ == "__main__":  # pragma: no cover
    main()
