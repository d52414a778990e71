"""The ``etl`` command: a thin layer over the library, in command groups (one module each).

Every command parses its options, makes one library call and renders the result (see
:mod:`etl.cli.render`); only this package prints. Human output (progress, tables, errors) goes to
stderr; what a script wants (a run directory, a JSON summary) goes to stdout.
"""

from __future__ import annotations

import logging
from pathlib import Path

import click
from rich.logging import RichHandler

from etl.cli.render import err, handle_errors, print_phases, print_report
from etl.config import load_settings
from etl.metrics import prefer_jemalloc
from etl.version import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="etl")
@click.option("--staging-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where runs are staged (env ETL_STAGING_DIR; default ./staging).")
@click.option("-v", "--verbose", count=True, help="Log more (-v info, -vv debug).")
@click.pass_context
@handle_errors  # a bad setting in the environment or pyproject.toml, said as such
def main(ctx: click.Context, staging_dir: Path | None, verbose: int) -> None:
    """Stage JSON exports as Parquet, validate and transform them, load them into PostgreSQL.

    \b
    Typical use:
      etl stage mids ./export            # -> staging/mids/<run>
      etl validate staging/mids/<run>
      etl transform staging/mids/<run>
      etl demo                           # all of it on a generated export
    """
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=max(level, logging.DEBUG), format="%(message)s",
                        handlers=[RichHandler(console=err, show_path=False)], force=True)
    ctx.ensure_object(dict)
    ctx.obj["settings"] = load_settings(staging_dir=staging_dir)
    prefer_jemalloc()


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
