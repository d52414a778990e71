"""Operations: the run ledger (runs, runs show), health, stats."""

from __future__ import annotations

import json
import sys
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from etl.cli.failures import failed
from etl.cli.options import (
    cache_options,
    ctx_settings,
    database_url_option,
    json_option,
    resolve_database_url,
    resolve_redis_url,
)
from etl.cli.render import (
    duration,
    echo_json,
    err,
    handle_errors,
    kb,
    mb,
    print_phases,
    short,
    status_cell,
    total_rows,
    when,
)
from etl.errors import EtlError
from etl.metrics import Phase


@click.group("runs", invoke_without_command=True)
@click.option("--dataset", help="Only this dataset's loads.")
@click.option("--limit", type=int, default=20, show_default=True, help="Show at most this many loads.")
@json_option
@database_url_option
@click.pass_context
@handle_errors
def runs_group(ctx: click.Context, dataset: str | None, limit: int, as_json: bool,
               database_url: str | None) -> None:
    """List the loads recorded in the run ledger, newest first (`etl runs show RUN` for one;
    `etl runs prune` deletes old staged runs). Reads the database given, or the project's
    embedded server if it runs: it never starts one.

    \b
    Examples:
      etl runs
      etl runs --dataset mids --limit 5 --json
      etl runs show mids-3f2a
      etl runs prune --dry-run
    """
    if ctx.invoked_subcommand is not None:
        return
    from etl.ops import runs as list_runs

    runs = list_runs(resolve_database_url(ctx, database_url, start=False), dataset=dataset, limit=limit)
    if as_json:
        echo_json(runs)
        return
    if not runs:
        err.print("no loads recorded" + (f" for {escape(dataset)}" if dataset else ""))
        return
    table = Table(title="runs", title_justify="left")
    for col in ("id", "dataset", "run", "mode", "status", "started", "duration", "rows", "peak RSS", "error"):
        table.add_column(col, justify="right" if col in ("id", "duration", "rows", "peak RSS") else "left")
    for r in runs:
        table.add_row(str(r["id"]), escape(r["dataset"]), escape(r["run_id"]), escape(r["mode"] or ""),
                      status_cell(r["status"]), when(r["started_at"]), duration(r), total_rows(r),
                      mb(r["peak_rss"]) if r["peak_rss"] is not None else "", escape(short(r["error"])))
    err.print(table)


@runs_group.command("show")
@click.argument("run")
@json_option
@database_url_option
@click.pass_context
@handle_errors
def runs_show_cmd(ctx: click.Context, run: str, as_json: bool, database_url: str | None) -> None:
    """Show one load: its figures, phases, rows per table, finished steps and error.

    RUN is a ledger id from `etl runs`, or a staged run id or a prefix of one (its latest load).

    \b
    Examples:
      etl runs show 42
      etl runs show mids-3f2a --json
    """
    from etl.ops import run_info

    parent = ctx.parent.params.get("database_url") if ctx.parent else None
    r = run_info(resolve_database_url(ctx, database_url or parent, start=False), run)
    if as_json:
        echo_json(r)
        return
    info = Table.grid(padding=(0, 2))
    info.add_column(style="bold")
    info.add_column()
    for label, value in (
        ("ledger id", str(r["id"])), ("dataset", escape(r["dataset"])), ("run", escape(r["run_id"])),
        ("manifest sha256", escape(r["manifest_sha256"] or "")), ("mode", escape(r["mode"] or "")),
        ("status", status_cell(r["status"])), ("host / pid", escape(f"{r['host'] or ''} / {r['pid'] or ''}")),
        ("started", when(r["started_at"])), ("ended", when(r["ended_at"])),
        ("duration", duration(r)), ("peak RSS", mb(r["peak_rss"]) if r["peak_rss"] is not None else ""),
    ):
        info.add_row(label, value)
    err.print(info)
    if r["phases"]:
        print_phases([Phase(p.get("name", "?"), float(p.get("seconds") or 0), int(p.get("rows") or 0),
                            int(p.get("peak_rss") or 0)) for p in r["phases"]], title="phases")
    if r["rows"]:
        rows = Table(title="rows per table", title_justify="left")
        rows.add_column("table")
        rows.add_column("rows", justify="right")
        for name, n in r["rows"].items():
            rows.add_row(escape(name), f"{int(n):,}")
        err.print(rows)
    if r["steps"]:
        steps = Table(title="finished steps", title_justify="left")
        for col in ("step", "done", "detail"):
            steps.add_column(col, overflow="fold")
        for s in r["steps"]:
            steps.add_row(escape(s["step"]), when(s["done_at"]),
                          escape(json.dumps(s["detail"])) if s["detail"] is not None else "")
        err.print(steps)
    if r["error"]:
        err.print(f"[bold red]error:[/] {escape(r['error'])}", soft_wrap=True)


_HEALTH_STYLE = {"ok": "green", "warn": "yellow", "fail": "red", "skip": "dim"}


@click.command("health")
@cache_options
@json_option
@click.pass_context
@handle_errors
def health_cmd(ctx: click.Context, database_url: str | None, redis_url: str | None, as_json: bool) -> None:
    """Check each part: database (reachable, version), migrations (at head), Redis (optional),
    staging directory (writable, free space), each dataset's last load.

    Exits 0 when every required part is ok, 1 when one fails (Redis, free space and failed last
    loads only warn).

    \b
    Examples:
      etl health
      etl health --json --database-url postgresql://etl@db:5432/etl
    """
    from etl.ops import health

    settings = ctx_settings(ctx)
    try:
        url = resolve_database_url(ctx, database_url, start=False)
    except EtlError as exc:  # no database given or running: report it as the failed part
        report: dict[str, Any] = {"ok": False, "checks": [{"name": "database", "status": "fail",
                                                           "required": True, "detail": exc.message,
                                                           "hint": exc.hint}]}
    else:
        report = health(url, redis_url=resolve_redis_url(ctx, redis_url), staging_dir=settings.staging_root)
    if as_json:
        failing = [c for c in report["checks"] if c["status"] == "fail" and c["required"]]
        echo_json(report if report["ok"] else {"error": failed(
            "HealthCheckFailed", "; ".join(f"{c['name']}: {c['detail']}" for c in failing),
            next_step=next((c["hint"] for c in failing if c.get("hint")), None)
            or "fix the failing parts, then run `etl health` again"), **report})
    else:
        table = Table(title="health", title_justify="left")
        for col in ("part", "status", "detail"):
            table.add_column(col, overflow="fold")
        for c in report["checks"]:
            style = _HEALTH_STYLE[c["status"]]
            detail = c["detail"] + (f"\n  next: {c['hint']}" if c.get("hint") else "")
            table.add_row(escape(c["name"]) + ("" if c["required"] else " (optional)"),
                          f"[{style}]{c['status']}[/]", escape(detail))
        err.print(table)
    if not report["ok"]:
        sys.exit(1)


@click.command("stats")
@database_url_option
@click.option("--runs", "last_runs", type=int, default=10, show_default=True, help="How many last loads.")
@json_option
@click.pass_context
@handle_errors
def stats_cmd(ctx: click.Context, database_url: str | None, last_runs: int, as_json: bool) -> None:
    """Rows per table per dataset, table and index sizes, and the last loads with their timings.

    \b
    Examples:
      etl stats
      etl stats --json --runs 3
    """
    from etl.ops import stats

    info = stats(resolve_database_url(ctx, database_url, start=False), runs=last_runs)
    if as_json:
        echo_json(info)
        return
    for name, ds in info["datasets"].items():
        table = Table(title=f"{name}: {ds['rows']:,} rows, {mb(ds['total_bytes'])}"
                            + (f", generation {ds['generation']}" if "generation" in ds else ""),
                      title_justify="left")
        for col in ("table", "rows", "table size", "index size", "total"):
            table.add_column(col, justify="left" if col == "table" else "right")
        for t in ds["tables"]:
            label = t["table"] + (" (view)" if t["kind"] == "view" else "")
            table.add_row(escape(label), "-" if t["rows"] is None else f"{t['rows']:,}",
                          kb(t["table_bytes"]), kb(t["index_bytes"]), kb(t["total_bytes"]))
        err.print(table)
    runs = Table(title="last loads", title_justify="left")
    for col in ("id", "dataset", "run", "status", "ended", "time", "rows", "phases"):
        runs.add_column(col, overflow="fold")
    for r in info["runs"]:
        phases = " ".join(f"{p.get('name')} {float(p.get('seconds') or 0):.2f}s" for p in r["phases"] or [])
        runs.add_row(str(r["id"]), r["dataset"], escape(r["run_id"]), status_cell(r["status"]),
                     when(r["ended_at"]), duration(r), total_rows(r), phases)
    err.print(runs)


@runs_group.command("prune")
@click.option("--keep", type=click.IntRange(min=0), default=3, show_default=True, metavar="N",
              help="Keep the N runs of each dataset staged last.")
@click.option("--dataset", help="Only this dataset's runs (default: every dataset in the staging folder).")
@click.option("--dry-run", is_flag=True, help="Delete nothing: list what would go, with sizes.")
@click.option("--force", is_flag=True, help="Also delete runs the run ledger needs (live, in use by a "
              "load, resumable), and prune without a database.")
@json_option
@database_url_option
@click.pass_context
@handle_errors
def runs_prune_cmd(ctx: click.Context, keep: int, dataset: str | None, dry_run: bool, force: bool,
                   as_json: bool, database_url: str | None) -> None:
    """Delete old staged runs: keep the N newest of each dataset, and every run the database needs.

    Whatever its age, a run is kept when the run ledger says the live schema came from it (the
    latest successful load, and the latest full load a merge built on), a load of it is running,
    or its latest load was interrupted or abandoned (`etl load RUN` resumes it); --force deletes
    those too. The ledger is read from --database-url or the running embedded server (never
    started for this); without one, only --force prunes. Prints the space freed.

    \b
    Examples:
      etl runs prune --dry-run
      etl runs prune --keep 1 --dataset mids
      etl runs prune --keep 0 --force --json
    """
    from etl.errors import EtlError
    from etl.prune import prune

    settings = ctx_settings(ctx)
    parent = ctx.parent.params.get("database_url") if ctx.parent else None
    try:
        url: str | None = resolve_database_url(ctx, database_url or parent, start=False)
    except EtlError as exc:  # no database: the ledger cannot say which runs are needed
        if not force:
            exc.hint = f"{exc.hint}; or give --force to prune by age alone" if exc.hint else None
            raise
        url = None
    report = prune(settings.staging_root, database_url=url, keep=keep, dataset=dataset or (
        ctx.parent.params.get("dataset") if ctx.parent else None), force=force, dry_run=dry_run)
    if as_json:
        echo_json(report)
        return
    if not report["runs"]:
        err.print(f"no staged runs under {escape(report['staging_dir'])}")
        return
    table = Table(title=f"staged runs under {escape(report['staging_dir'])}"
                        + (" (dry run)" if dry_run else ""), title_justify="left")
    for col in ("dataset", "run", "staged", "size", "action", "why"):
        table.add_column(col, justify="right" if col == "size" else "left", overflow="fold")
    verb = "would delete" if dry_run else "deleted"
    for r in report["runs"]:
        action = f"[red]{verb}[/]" if r["action"] == "delete" else "[green]kept[/]"
        table.add_row(escape(r["dataset"]), escape(r["run_id"]), escape(r["staged_at"]),
                      _size(r["bytes"]), action, escape(r["reason"]))
    err.print(table)
    gone = sum(1 for r in report["runs"] if r["action"] == "delete")
    err.print(f"{verb} {gone} run{'' if gone == 1 else 's'}, "
              f"{'would free' if dry_run else 'freed'} {_size(report['freed_bytes'])}; kept "
              f"{len(report['runs']) - gone} ({_size(report['kept_bytes'])})")
    click.echo(report["freed_bytes"])


def _size(n: int) -> str:
    return mb(n) if n >= 10_000_000 else kb(n)
