"""`etl report RUN`: a staged run's report as one self-contained HTML page."""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape

from etl.cli.options import RunDir, ctx_settings, json_option
from etl.cli.render import echo_json, err, handle_errors
from etl.run import open_run


def ledger_url(ctx: click.Context, flag: str | None) -> str | None:
    """Where the load figures come from: --database-url > environment > the project's embedded
    server if it is running (a report never starts one) > none."""
    url = ctx_settings(ctx, database_url=flag).database_url
    if url:
        return url
    from etl.infra import embedded

    status = embedded.status()
    return status["url"] if status["running"] and status["ready"] else None


@click.command("report")
@click.argument("run_dir", type=RunDir())
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the page here (default: RUN_DIR/report.html).")
@click.option("--database-url", help="Read the run's latest load from this database's run ledger (env "
              "ETL_DATABASE_URL or DATABASE_URL; default: the embedded server if it is running, never "
              "started for a report).")
@json_option
@click.pass_context
@handle_errors
def report_cmd(ctx: click.Context, run_dir: Path | str, out: Path | None, database_url: str | None,
               as_json: bool) -> None:
    """Write a staged run's report: one HTML page that needs no network to be read.

    The page shows the row flow per level (source files -> staged -> rejected -> in tables ->
    loaded), time and peak memory per phase, the failing rules with example rows and their
    source file and record, and a profile of every column (null share, distinct count,
    min/max, a histogram). Load figures come from the run ledger when a database is given or
    the embedded server is running (this command never starts one). `etl run` writes the
    report by itself. The last line printed is the page's path.

    \b
    Examples:
      etl report staging/mids/mids-1a2b3c4d5e6f
      etl report staging/mids/mids-1a2b3c4d5e6f --out /tmp/mids.html --json
      etl report staging/mids/mids-1a2b3c4d5e6f --database-url postgresql://me@db/games
    """
    from etl.report import write_report

    settings = ctx_settings(ctx)
    run = open_run(run_dir)
    path = write_report(run, out=out, database_url=ledger_url(ctx, database_url),
                        memory_limit=settings.memory_limit, threads=settings.threads)
    if as_json:
        echo_json({"report": str(path)})
        return
    err.print(f"report of {escape(run.id)}: {escape(str(path))}", highlight=False)
    click.echo(path)
