"""The database: the project's embedded server, migrations, optimizing."""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from etl.cli.options import database_url_option, json_option, project_dir_option, resolve_database_url
from etl.cli.render import echo_json, err, handle_errors
from etl.config import Settings


@click.group("db")
def db_group() -> None:
    """The project's private PostgreSQL, used when no database URL is given.

    With no --database-url, ETL_DATABASE_URL or DATABASE_URL, commands that need a database start
    a server of the project's own: data in .etl/pg/ under the project directory, listening on
    127.0.0.1 only, on a port of its own. It keeps running until `etl db stop`.

    \b
    Examples:
      etl db start
      etl db status --json
      etl db stop
    """


@db_group.command("start")
@project_dir_option
@json_option
@click.pass_context
@handle_errors
def db_start_cmd(ctx: click.Context, project_dir: Path | None, as_json: bool) -> None:
    """Start the project's private PostgreSQL (created on first use) and print its URL.

    The last line printed is the URL; the database is `etl`, the user `postgres` (no password,
    127.0.0.1 only). Starting a running server just prints its URL.

    \b
    Examples:
      etl db start
      psql "$(etl db start)"
    """
    from etl.infra import embedded

    url = embedded.ensure_started(project_dir)
    info = embedded.status(project_dir)
    if as_json:
        echo_json({**info, "url": url})
        return
    err.print(f"PostgreSQL {info['version']} runs on 127.0.0.1:{info['port']} (pid {info['pid']})\n"
              f"  data: {escape(info['data_dir'])}\n  log:  {escape(info['log_file'])}\n"
              f"  connect: psql {url}", highlight=False)
    settings: Settings = ctx.obj["settings"]
    if settings.database_url:
        err.print("[yellow]note:[/] a database URL is configured (ETL_DATABASE_URL / DATABASE_URL), "
                  "so the other commands use that server, not this one")
    click.echo(url)


@db_group.command("stop")
@project_dir_option
@json_option
@handle_errors
def db_stop_cmd(project_dir: Path | None, as_json: bool) -> None:
    """Stop the project's private PostgreSQL (its data stays; `etl db start` brings it back).

    \b
    Example:
      etl db stop
    """
    from etl.infra import embedded

    stopped = embedded.stop(project_dir)
    if as_json:
        echo_json({"stopped": bool(stopped)})
    elif stopped:
        err.print("stopped the embedded PostgreSQL")
    else:
        err.print("the embedded PostgreSQL was not running")


@db_group.command("status")
@project_dir_option
@json_option
@handle_errors
def db_status_cmd(project_dir: Path | None, as_json: bool) -> None:
    """Show whether the project's private PostgreSQL runs, its URL, data folder and log.

    \b
    Examples:
      etl db status
      etl db status --json
    """
    from etl.infra import embedded

    info = embedded.status(project_dir)
    if as_json:
        echo_json(info)
        return
    if not info["exists"]:
        err.print(f"no embedded PostgreSQL in {escape(info['project_dir'])} yet: `etl db start` "
                  "creates one (so do `etl run`, `load`, `rebuild` and `demo`, given no URL)")
        return
    table = Table(title="embedded PostgreSQL", title_justify="left", show_header=False)
    table.add_column("")
    table.add_column("", overflow="fold")
    state = "[green]running[/]" if info["running"] else "[yellow]stopped[/]"
    for key, value in (("state", state), ("url", info["url"]), ("pid", info["pid"]),
                       ("version", info["version"]), ("data", info["data_dir"]),
                       ("log", info["log_file"]), ("runs as", info["user"])):
        if value is not None:
            table.add_row(key, value if key == "state" else escape(str(value)))
    err.print(table)


@db_group.command("upgrade")
@database_url_option
@click.option("--revision", default="head", show_default=True,
              help="Migrate up to this revision (see migrations/versions).")
@json_option
@click.pass_context
@handle_errors
def db_upgrade_cmd(ctx: click.Context, database_url: str | None, revision: str, as_json: bool) -> None:
    """Apply the Alembic migrations of the run ledger (schema etl), then create the live schema of
    each dataset that has none, from the dataset's own table definitions (a dataset's tables are
    not migrated: every full load builds them anew).

    Running it again applies nothing. The last line printed (stdout) is the current revision.

    \b
    Examples:
      etl db upgrade
      etl db upgrade --database-url postgresql://etl@localhost:5432/etl
    """
    from etl.ops import upgrade

    done = upgrade(resolve_database_url(ctx, database_url), revision=revision)
    if as_json:
        echo_json(done)
        return
    applied = done["applied"]
    if applied:
        err.print(f"applied {len(applied)} migration{'s' if len(applied) > 1 else ''}: {', '.join(applied)}")
    else:
        err.print("nothing to apply: the database is up to date")
    if done["created"]:
        err.print(f"created the live schema of {', '.join(done['created'])} from the datasets' tables")
    click.echo(done["current"] or "none")


@db_group.command("optimize")
@database_url_option
@click.option("--dataset", "datasets", multiple=True, help="Only this dataset (repeatable; default: all).")
@json_option
@click.pass_context
@handle_errors
def db_optimize_cmd(ctx: click.Context, database_url: str | None, datasets: tuple[str, ...],
                    as_json: bool) -> None:
    """Refresh the materialized views (CONCURRENTLY when they have a unique index, so reads go
    on), then ANALYZE every table, and report what was done and how long it took.

    \b
    Examples:
      etl db optimize
      etl db optimize --dataset mids --json
    """
    from etl.ops import optimize

    report = optimize(resolve_database_url(ctx, database_url, start=False), datasets=list(datasets) or None)
    if as_json:
        echo_json(report)
        return
    table = Table(title=f"optimize ({report['seconds']:.2f} s)", title_justify="left")
    for col in ("dataset", "what", "how", "time"):
        table.add_column(col)
    for name, entry in report["datasets"].items():
        for v in entry["views"]:
            how = "concurrently" if v["concurrently"] else f"blocking ({v['why_not']})"
            table.add_row(name, f"refresh {v['view']}", how, f"{v['seconds']:.3f} s")
        total = sum(a["seconds"] for a in entry["analyze"])
        table.add_row(name, f"analyze {len(entry['analyze'])} tables", "", f"{total:.3f} s")
    err.print(table)
