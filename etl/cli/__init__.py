"""The ``etl`` command: a thin layer over the library. Only this module prints.

Human output (progress, tables, errors) goes to stderr; what a script wants (a run directory, a
JSON summary) goes to stdout.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from etl import __version__
from etl.config import Settings, load_settings
from etl.datasets import available, get_dataset
from etl.errors import EtlError
from etl.metrics import Phase, prefer_jemalloc
from etl.run import MANIFEST, Run, open_run

# Piped or captured output gets wide lines, so rule names and paths are never folded.
err = Console(stderr=True, width=None if sys.stderr.isatty() else 200)
F = TypeVar("F", bound=Callable[..., Any])


def _handle_errors(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except EtlError as exc:
            # escape: file names like "Powers [old].json" are text, not rich markup.
            err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, markup=True,
                      soft_wrap=True)
            sys.exit(exc.exit_code)

    return wrapper  # type: ignore[return-value]


@contextmanager
def _progress(enabled: bool = True) -> Iterator[Callable[[str, int, int], None]]:
    """A rich progress display and the callback the library reports to."""
    if not enabled or not err.is_terminal:
        yield lambda phase, done, total: None
        return
    tasks: dict[str, TaskID] = {}
    with Progress(TextColumn("{task.description:>10}"), BarColumn(), TextColumn("{task.percentage:>5.1f}%"),
                  TimeElapsedColumn(), console=err, transient=True) as bar:
        def report(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = bar.add_task(phase, total=total)
            bar.update(tasks[phase], completed=done, total=total)

        yield report


def _mb(n: int) -> str:
    return f"{n / 1e6:,.0f} MB"


def print_phases(phases: list[Phase], title: str = "summary") -> None:
    table = Table(title=title, title_justify="left")
    for col in ("phase", "time", "rows", "rows/s", "peak RSS"):
        table.add_column(col, justify="left" if col == "phase" else "right")
    for p in phases:
        table.add_row(p.name, f"{p.seconds:.2f} s", f"{p.rows:,}", f"{p.rows_per_s:,.0f}", _mb(p.peak_rss))
    err.print(table)


def _settings(ctx: click.Context, **flags: Any) -> Settings:
    base: Settings = ctx.obj["settings"]
    return base.with_overrides(**flags)


def _looks_like_run(path: str) -> bool:
    return (Path(path) / MANIFEST).is_file()


# ------------------------------------------------------------------------------ the group


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="etl")
@click.option("--staging-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where runs are staged (env ETL_STAGING_DIR; default ./staging).")
@click.option("-v", "--verbose", count=True, help="Log more (-v info, -vv debug).")
@click.pass_context
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


_stage_options = [
    click.option("--memory-limit",
                 help="DuckDB memory limit while staging, e.g. 256MB (env ETL_MEMORY_LIMIT)."),
    click.option("--chunk-rows", type=int, help="At most this many rows per Parquet chunk."),
    click.option("--threads", type=int, help="Worker threads (default: one per core)."),
    click.option("--max-record-bytes", type=int, default=64 << 20, show_default=True,
                 help="Refuse a single JSON record larger than this."),
    click.option("--force", is_flag=True, help="Stage again even if this content was staged before."),
    click.option("--strict", is_flag=True, help="Stop on a file that is not valid JSON even where the "
                 "dataset quarantines such files (licenses)."),
]


def stage_options(fn: F) -> F:
    for opt in reversed(_stage_options):
        fn = opt(fn)
    return fn


# ------------------------------------------------------------------------------ datasets


@main.command("datasets")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def datasets_cmd(as_json: bool) -> None:
    """List the datasets this toolkit knows (built-in and from plugins).

    \b
    Example:
      etl datasets
    """
    found = available()
    if as_json:
        click.echo(json.dumps({name: {
            "version": ds.version, "description": ds.description,
            "levels": list(ds.levels), "tables": [t.name for t in ds.tables],
        } for name, ds in found.items()}, indent=2))
        return
    table = Table(title="datasets", title_justify="left")
    for col in ("name", "version", "staged levels", "target tables", "description"):
        table.add_column(col)
    for name, ds in sorted(found.items()):
        table.add_row(name, ds.version, ", ".join(ds.levels), ", ".join(t.name for t in ds.tables),
                      ds.description)
    Console().print(table)


# ------------------------------------------------------------------------------ stage


def _do_stage(ctx: click.Context, dataset: str, sources: tuple[str, ...], *, force: bool,
              max_record_bytes: int, strict: bool = False, **flags: Any) -> tuple[Run, Phase, bool]:
    from etl.stage import stage

    settings = _settings(ctx, **flags)
    with _progress() as progress:
        result = stage(get_dataset(dataset), list(sources), settings=settings, force=force,
                       max_record_bytes=max_record_bytes, progress=progress, strict=strict)
    _print_quarantined(result.run.manifest.get("quarantined") or [])
    if result.skipped:
        err.print(f"[yellow]already staged[/] (same content, dataset version "
                  f"{result.run.manifest['dataset_version']}): {escape(str(result.run.path))} "
                  "— use --force to redo")
    return result.run, result.phase, result.skipped


@main.command("stage")
@click.argument("dataset")
@click.argument("sources", nargs=-1, required=True)
@stage_options
@click.pass_context
@_handle_errors
def stage_cmd(ctx: click.Context, dataset: str, sources: tuple[str, ...], **opts: Any) -> None:
    """Stage an export: JSON files, directories or globs -> Parquet chunks.

    Writes staging/DATASET/RUN/raw/<level>/part-*.parquet and manifest.json. The run id comes
    from the content, so staging the same export again is skipped. The last line printed is the
    run directory.

    \b
    Examples:
      etl stage mids ../shared/data/mids
      etl stage mids 'exports/**/*.json' --memory-limit 512MB --chunk-rows 50000
    """
    run, phase, skipped = _do_stage(ctx, dataset, sources, **opts)
    if not skipped:
        _print_levels(run)
        print_phases([phase])
    click.echo(run.path)


def _print_quarantined(bad: list[dict[str, Any]]) -> None:
    if not bad:
        return
    err.print(f"[yellow]quarantined {len(bad)} file(s)[/] that are not valid JSON (left out; "
              "--strict makes this fatal):")
    for q in bad[:20]:
        err.print(f"  {escape(q['relpath'])}: {escape(q['reason'])}", soft_wrap=True)
    if len(bad) > 20:
        err.print(f"  … and {len(bad) - 20} more (see the manifest's \"quarantined\")")


def _print_levels(run: Run) -> None:
    table = Table(title=f"staged {run.id}", title_justify="left")
    table.add_column("level")
    table.add_column("rows", justify="right")
    table.add_column("chunks", justify="right")
    for name, entry in run.manifest["levels"].items():
        table.add_row(name, f"{entry['rows']:,}", str(len(entry["chunks"])))
    err.print(table)


# ------------------------------------------------------------------------------ validate


def _severity_cell(rule: dict[str, Any]) -> str:
    color = {"error": "red", "warning": "yellow"}.get(rule["severity"], "dim")
    cell = f"[{color}]{rule['severity']}[/]"
    override = rule.get("override")
    if override:
        cell += f" [dim](was {rule['default_severity']}; {escape(override['source'])})[/]"
    return cell


def print_report(report: dict[str, Any]) -> None:
    """The validation report as `etl validate` shows it: the failing rules (errors first),
    then cleaning counts and rows per level. `etl run` shows the same when validation stops it."""
    from etl.validate import failing_rules

    table = Table(title=f"validation of {report['run_id']}: {report['status'].upper()}",
                  title_justify="left")
    for col in ("rule", "severity", "failed", "example"):
        table.add_column(col, justify="right" if col == "failed" else "left", overflow="fold")
    for rule in failing_rules(report):
        ex = rule["examples"][0] if rule["examples"] else {}
        where = f"{ex.get('file')} #{ex.get('record')}" + (f" {ex['path']}" if ex.get("path") else "")
        table.add_row(escape(rule["name"]), _severity_cell(rule), f"{rule['failed']:,}",
                      escape(f"{where} {ex.get('values', '')}"))
    checked = [r for r in report["rules"] if r["failed"] is not None]
    passed = sum(1 for r in checked if not r["failed"])
    off = len(report["rules"]) - len(checked)
    table.caption = (f"{passed} of {len(checked)} rules pass on every row"
                     + (f"; {off} set off" if off else ""))
    err.print(table)
    changed = [c for c in report["cleaning"] if c["changed"]]
    if changed:
        ct = Table(title="cleaning", title_justify="left")
        for col in ("step", "level.column", "changed"):
            ct.add_column(col, justify="right" if col == "changed" else "left")
        for c in changed:
            ct.add_row(c["name"], f"{c['level']}.{c['column']}", f"{c['changed']:,}")
        err.print(ct)
    lv = Table(title="rows per level", title_justify="left")
    for col in ("level", "rows", "rejected"):
        lv.add_column(col, justify="left" if col == "level" else "right")
    for name, v in report["levels"].items():
        lv.add_row(name, f"{v['rows']:,}", f"{v['rejected']:,}")
    err.print(lv)


_rule_option = click.option(
    "--rule", "rules", multiple=True, metavar="NAME=SEVERITY",
    help="Run one rule at another severity: error, warning or off (repeatable; NAME may be a "
         "glob such as 'powers.*.range'). Adds to ETL_RULES and [tool.etl] rules, and wins "
         "over them for the rules it names.")


def print_rules(dataset: Any, settings: Settings) -> None:
    """Every rule of ``dataset`` with the severity it runs with here (`--list-rules`)."""
    from etl.validate.rules import resolve_rules

    table = Table(title=f"rules of {dataset.name}", title_justify="left")
    for col in ("rule", "kind", "severity", "description"):
        table.add_column(col, overflow="fold")
    for res in resolve_rules(dataset, settings.rules):
        entry = res.to_dict(None, [])
        table.add_row(escape(res.rule.name), res.rule.kind, _severity_cell(entry),
                      escape(entry["description"]))
    err.print(table)


@main.command("validate")
@click.argument("target")
@click.argument("sources", nargs=-1)
@click.option("--max-reject-ratio", type=float, default=0.0, show_default=True,
              help="Fraction of a level's rows that error rules may reject before the run fails.")
@_rule_option
@click.option("--list-rules", is_flag=True, help="List the rules of the dataset (TARGET: a dataset "
              "name or a run) with the severity each would run with, and exit.")
@click.option("--report", "report_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write report.json here (for CI).")
@stage_options
@click.pass_context
@_handle_errors
def validate_cmd(ctx: click.Context, target: str, sources: tuple[str, ...], max_reject_ratio: float,
                 rules: tuple[str, ...], list_rules: bool, report_file: Path | None,
                 **opts: Any) -> None:
    """Check a staged run (or stage the export first) against the dataset's rules.

    TARGET is a run directory, or a dataset name followed by the export's SOURCES. Writes
    report.json and rejects/<level>.parquet in the run. Exit 0: passed; 1: error rules
    rejected more than --max-reject-ratio of some level; 2: the input cannot be read.

    Severities can be set per rule: --rule NAME=SEVERITY here, ETL_RULES="NAME=SEVERITY,...",
    or [tool.etl] rules = { "NAME" = "SEVERITY" } in pyproject.toml (flag > env > file).

    \b
    Examples:
      etl validate staging/mids/mids-1a2b3c4d5e6f
      etl validate mids ../shared/data/mids --report out/report.json
      etl validate mids ../shared/data/mids --rule powersets.full_name.unique=warning
      etl validate mids --list-rules
    """
    from etl.validate import validate

    settings = _settings(ctx, rules=rules)
    if list_rules:
        print_rules(open_run(target).dataset() if _looks_like_run(target) else get_dataset(target),
                    settings)
        return
    phases: list[Phase] = []
    if sources or not _looks_like_run(target):
        if not sources:
            raise click.UsageError(f"{target} is not a staged run; give DATASET SOURCE... to stage first")
        run, phase, skipped = _do_stage(ctx, target, sources, **opts)
        if not skipped:
            phases.append(phase)
    else:
        run = open_run(target)
    with _progress() as progress:
        result = validate(run, get_dataset(run.dataset_name), max_reject_ratio=max_reject_ratio,
                          rules=settings.rules, report_file=report_file, progress=progress)
    phases.append(result.phase)
    print_report(result.report)
    print_phases(phases)
    click.echo(run.path)
    if not result.passed:
        err.print(f"[bold red]validation failed[/]: see {escape(str(run.path / 'report.json'))} and "
                  f"{escape(str(run.path / 'rejects'))}")
        sys.exit(1)


# ------------------------------------------------------------------------------ transform


@main.command("transform")
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.pass_context
@_handle_errors
def transform_cmd(ctx: click.Context, run_dir: Path) -> None:
    """Build the target tables of a validated run as Parquet under RUN_DIR/tables/.

    \b
    Example:
      etl transform staging/mids/mids-1a2b3c4d5e6f
    """
    from etl.transform import transform

    run = open_run(run_dir)
    with _progress() as progress:
        result = transform(run, get_dataset(run.dataset_name), progress=progress)
    table = Table(title=f"tables of {run.id}", title_justify="left")
    table.add_column("table")
    table.add_column("rows", justify="right")
    for name, rows in result.rows.items():
        table.add_row(name, f"{rows:,}")
    err.print(table)
    print_phases([result.phase])
    click.echo(run.path)


# ------------------------------------------------------------------------------ load, run, rebuild

_UNSAFE_WARNING = (
    "--unsafe-fast builds the tables UNLOGGED and commits without waiting for the disk. "
    "UNLOGGED tables skip the write-ahead log: if the PostgreSQL server crashes or is shut down "
    "uncleanly, they come back EMPTY, and they are not copied to replicas or point-in-time "
    "backups. Use it for scratch databases you can rebuild (`etl rebuild RUN`), not for data "
    "you need to keep.")


def _load_options(fn: F) -> F:
    for opt in reversed([
        click.option("--database-url", help="PostgreSQL URL (env ETL_DATABASE_URL or DATABASE_URL; "
                     "default: the project's embedded server, started if needed)."),
        click.option("--unsafe-fast", is_flag=True,
                     help="Build UNLOGGED tables with synchronous_commit off (faster; lost on a "
                          "server crash). Asks for confirmation."),
        click.option("--yes", is_flag=True, help="Do not ask for confirmation (with --unsafe-fast)."),
        click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout."),
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


def _mode(unsafe_fast: bool, yes: bool, load_mode: str = "full") -> Any:
    if load_mode == "merge":
        if unsafe_fast:
            raise click.UsageError("--unsafe-fast applies to full loads, not --mode merge")
        return "merge"
    if not unsafe_fast:
        return "full"
    err.print(f"[bold yellow]warning:[/] {escape(_UNSAFE_WARNING)}", soft_wrap=True)
    if not yes and not click.confirm("Load with --unsafe-fast?", default=False, err=True):
        raise click.Abort()
    return "unsafe-fast"


def _connect_hint(url: str, settings: Settings) -> None:
    from etl.errors import mask_secrets

    if not settings.database_url:
        err.print(f"loaded into the project's embedded PostgreSQL; connect with: "
                  f"[bold]psql {escape(url)}[/]  (stop it with `etl db stop`)", soft_wrap=True)
    else:
        err.print(f"database: {escape(mask_secrets(url))}", soft_wrap=True)


def _print_load(result: Any) -> None:
    if result.merged:
        title = f"merged into schema {result.schema} (ledger #{result.ledger_id}" + (
            f", tag {result.tag})" if result.tag else ")")
        table = Table(title=title, title_justify="left")
        for col in ("table", "staged", "inserted", "updated", "unchanged", "deleted"):
            table.add_column(col, justify="left" if col == "table" else "right")
        for name, c in result.merged.items():
            table.add_row(name, *(f"{c[k]:,}" if k in c else "-"
                                  for k in ("staged", "inserted", "updated", "unchanged", "deleted")))
        err.print(table)
        if not result.changed:
            err.print("nothing changed: every row is already in the database as imported")
        return
    if result.skipped:
        err.print(f"run {result.run.id} is already loaded into schema {result.schema} "
                  f"(ledger #{result.ledger_id}); nothing to do. Use --force to load it again.")
        return
    if result.resumed_from:
        err.print(f"resumed load #{result.ledger_id}: {len(result.resumed_from)} step(s) were already "
                  "done")
    table = Table(title=f"schema {result.schema} (ledger #{result.ledger_id}, {result.mode})",
                  title_justify="left")
    for col in ("table", "rows", "checksum"):
        table.add_column(col, justify="left" if col != "rows" else "right")
    for name, rows in result.rows.items():
        table.add_row(name, f"{rows:,}", result.checksums.get(name, ""))
    err.print(table)


def _print_pipeline(result: Any, settings: Settings, *, as_json: bool) -> None:
    """The end of `etl run` and `etl demo`: JSON, or report, load, phases, how to connect."""
    if as_json:
        click.echo(json.dumps(result.summary(), indent=2))
        return
    print_report(result.report)
    if result.load is not None:
        _print_load(result.load)
    print_phases(result.phases, title=f"{result.run.id}: {sum(p.seconds for p in result.phases):.2f} s")
    if result.load is not None:
        _connect_hint(result.load.url, settings)
    click.echo(result.run.path)


@main.command("load")
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@_load_options
@click.option("--force", is_flag=True, help="Load again even if this run is already loaded.")
@click.pass_context
@_handle_errors
def load_cmd(ctx: click.Context, run_dir: Path, database_url: str | None, unsafe_fast: bool, yes: bool,
             as_json: bool, force: bool, load_mode: str, tag: str | None,
             delete_missing: bool, warm: int) -> None:
    """Load a transformed run into PostgreSQL: a new schema, COPY, keys, indexes, views, checks,
    then one swap.

    The dataset's live schema is untouched until the final swap. An interrupted load (killed,
    connection lost) resumes when you run the same command again. A second load of the same
    dataset while one runs is refused.

    \b
    Examples:
      etl load staging/mids/mids-1a2b3c4d5e6f
      etl load staging/mids/mids-1a2b3c4d5e6f --database-url postgresql://me@db:5432/games
      etl load staging/licenses/licenses-1a2b3c4d5e6f --mode merge --tag baseline
      ETL_REDIS_URL=redis://localhost:6379/0 etl load staging/mids/mids-1a2b3c4d5e6f --warm 200
    """
    from etl.load import load

    settings = _settings(ctx, database_url=database_url)
    mode = _mode(unsafe_fast, yes, load_mode)
    run = open_run(run_dir)
    with _progress() as progress:
        result = load(run, database_url=settings.database_url, mode=mode, force=force, progress=progress,
                      tag=tag, delete_missing=delete_missing, warm=warm)
    if as_json:
        click.echo(json.dumps({
            "run": str(run.path), "run_id": run.id, "schema": result.schema,
            "ledger_id": result.ledger_id, "mode": result.mode, "skipped": result.skipped,
            "merged": result.merged, "changed": result.changed, "tag": result.tag,
            "rows": result.rows, "checksums": result.checksums,
            "phases": [p.to_dict() for p in result.phases]}, indent=2))
        return
    _print_load(result)
    if result.phases:
        print_phases(result.phases)
    _connect_hint(result.url, settings)
    click.echo(run.path)


@contextmanager
def _validation_shown(*, as_json: bool) -> Iterator[None]:
    """When validation stops a command (`etl run`, `etl demo`, `etl rebuild`), show why as
    `etl validate` does: the failing-rules table, or with --json a JSON error document on stdout
    that carries the failing rules; then exit 1 with the error."""
    from etl.validate import failing_rules
    from etl.validate.errors import ValidationFailed

    try:
        yield
    except ValidationFailed as exc:
        report = exc.report
        if report is None:
            raise
        if as_json:
            click.echo(json.dumps({
                "status": "failed", "phase": "validate", "error": exc.message, "hint": exc.hint,
                "run_id": report["run_id"], "dataset": report["dataset"],
                "max_reject_ratio": report["max_reject_ratio"],
                "failed_levels": report["failed_levels"], "levels": report["levels"],
                "failed_rules": failing_rules(report), "overrides": report.get("overrides", []),
            }, indent=2, default=str))
        else:
            print_report(report)
        raise


@main.command("run")
@click.argument("dataset")
@click.argument("sources", nargs=-1, required=True)
@click.option("--max-reject-ratio", type=float, default=0.0, show_default=True,
              help="Allowed share of rejected rows per level before the run stops.")
@_rule_option
@_load_options
@stage_options
@click.pass_context
@_handle_errors
def run_cmd(ctx: click.Context, dataset: str, sources: tuple[str, ...], max_reject_ratio: float,
            rules: tuple[str, ...], database_url: str | None, unsafe_fast: bool, yes: bool,
            as_json: bool, load_mode: str, tag: str | None, delete_missing: bool, warm: int,
            **opts: Any) -> None:
    """Stage, validate, transform and load an export in one go.

    Validation errors stop the run before anything reaches the database, with the failing
    rules shown as `etl validate` shows them (--json: in the JSON error document on stdout).
    Ends with a per-phase summary (time, rows, rows/s, peak memory); --json prints it as JSON
    for scripts.

    \b
    Examples:
      etl run mids ../shared/data/mids
      etl run mids ./export --database-url postgresql://me@db:5432/games --json
      etl run mids ./export --rule powersets.full_name.unique=warning
    """
    from etl.pipeline import run_all

    settings = _settings(ctx, database_url=database_url, memory_limit=opts.get("memory_limit"),
                         chunk_rows=opts.get("chunk_rows"), threads=opts.get("threads"),
                         rules=rules)
    mode = _mode(unsafe_fast, yes, load_mode)
    with _validation_shown(as_json=as_json), _progress() as progress:
        result = run_all(get_dataset(dataset), list(sources), settings=settings,
                         max_reject_ratio=max_reject_ratio, mode=mode, force=opts.get("force", False),
                         progress=progress, tag=tag, delete_missing=delete_missing,
                         strict=opts.get("strict", False), warm=warm)
    _print_quarantined(result.run.manifest.get("quarantined") or [])
    _print_pipeline(result, settings, as_json=as_json)


@main.command("rebuild")
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--database-url", help="PostgreSQL URL (default: as for `etl load`).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
@click.pass_context
@_handle_errors
def rebuild_cmd(ctx: click.Context, run_dir: Path, database_url: str | None, as_json: bool) -> None:
    """Rebuild the dataset in the database from a staged run directory alone.

    Every chunk file is first checked against the sha256 in the manifest; a changed or missing
    file is refused and named. The tables then load as a full, verified, atomic load.

    \b
    Example:
      etl rebuild staging/mids/mids-1a2b3c4d5e6f
    """
    from etl.pipeline import rebuild

    settings = _settings(ctx, database_url=database_url)
    with _progress() as progress:
        result = rebuild(run_dir, settings=settings, progress=progress)
    if as_json:
        click.echo(json.dumps(result.summary(), indent=2))
        return
    if result.load is not None:
        _print_load(result.load)
    print_phases(result.phases)
    if result.load is not None:
        _connect_hint(result.load.url, settings)
    click.echo(result.run.path)


# ------------------------------------------------------------------------------ generate, demo, bench


@main.command("generate")
@click.argument("dataset", type=click.Choice(["mids", "aodb", "licenses"]))
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--results", type=int, help="licenses: number of result files (default 515).")
@click.option("--powersets", type=int, help="mids: number of powerset files.")
@click.option("--entries", type=int, help="mids: or about this many entries (powersets + powers + effects).")
@click.option("--copies", type=int, help="mids: or N renamed copies of the whole real export --template "
              "(every record as it is, only key names suffixed _c1.._cN-1; compact JSON).")
@click.option("--pretty", is_flag=True, help="mids --copies: indent like the real export instead of "
              "compact JSON.")
@click.option("--items", type=int, help="aodb: number of items (default 1,000).")
@click.option("--files", type=int, default=1, show_default=True, help="aodb: split the items over this "
              "many files.")
@click.option("--ndjson", is_flag=True, help="aodb: one item a line instead of a JSON array.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--template", type=click.Path(exists=True, path_type=Path),
              help="A real export to amplify (mids: e.g. ../shared/data/mids, synthetic when absent; "
                   "aodb: default ../shared/data/aodb).")
@_handle_errors
def generate_cmd(dataset: str, out: Path, results: int | None, powersets: int | None,
                 entries: int | None, copies: int | None, pretty: bool, items: int | None, files: int,
                 ndjson: bool, seed: int, template: Path | None) -> None:
    """Write an export in the real format, of any size, deterministic by seed.

    \b
    Examples:
      etl generate mids /tmp/mids-demo --powersets 50
      etl generate mids /tmp/mids-360k --entries 360000 --template ../shared/data/mids
      etl generate mids /tmp/mids-x5 --copies 5 --template ../shared/data/mids_full
      etl generate aodb /tmp/aodb-170k --items 170000 --template ../shared/data/aodb
      etl generate licenses /tmp/licenses-515 --results 515
    """
    if dataset == "licenses":
        from etl.datasets.licenses.gen import generate_licenses

        tree = generate_licenses(out, results=results or 515, seed=seed)
        err.print(f"wrote {tree.files:,} files, {tree.bytes / 1e6:,.1f} MB: {tree.results:,} "
                  f"results, {tree.images:,} screenshots")
        click.echo(out)
        return
    if dataset == "aodb":
        from etl.datasets.aodb.gen import generate_aodb

        made_items = generate_aodb(out, items=items or 1_000, seed=seed, files=files, ndjson=ndjson,
                                   template=template or Path("../shared/data/aodb"))
        err.print(f"wrote {made_items.files:,} file(s), {made_items.bytes / 1e6:,.1f} MB: "
                  f"{made_items.items:,} items, {made_items.stat_values:,} stat values, "
                  f"{made_items.spells:,} spells")
        click.echo(out)
        return
    from etl.datasets.mids.gen import copy_mids, generate_mids, powersets_for_entries

    if copies:
        if template is None:
            from etl.errors import ConfigError

            raise ConfigError("--copies copies a real export and needs --template",
                              hint="pass --template ../shared/data/mids_full")
        made = copy_mids(template, out, copies=copies, pretty=pretty)
    else:
        count = powersets or powersets_for_entries(entries or 2_000)
        made = generate_mids(out, powersets=count, seed=seed, template_dir=template)
    err.print(f"wrote {made.files:,} files, {made.bytes / 1e6:,.1f} MB: {made.powersets:,} powersets, "
              f"{made.powers:,} powers, {made.effects:,} effects ({made.entries:,} entries)")
    click.echo(out)


@main.command("demo")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path(".etl/demo-export"),
              show_default=True, help="Where to write the generated export.")
@click.option("--powersets", type=int, default=200, show_default=True)
@click.option("--database-url", help="Where to load (env ETL_DATABASE_URL or DATABASE_URL; default: "
              "the project's embedded PostgreSQL, started if needed).")
@click.option("--no-load", is_flag=True, help="Stop after transform (no database needed).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
@click.pass_context
@_handle_errors
def demo_cmd(ctx: click.Context, out: Path, powersets: int, database_url: str | None, no_load: bool,
             as_json: bool) -> None:
    """Generate a small mids export (the real format) and run the whole pipeline on it.

    Needs nothing but this repository: the export comes from the project's own generator, and
    with no database URL the tables load into a PostgreSQL of the project's own (`etl db`).

    \b
    Examples:
      etl demo
      etl demo --database-url postgresql://postgres@127.0.0.1:5432/postgres
      etl demo --no-load
    """
    from etl.datasets.mids.gen import generate_mids
    from etl.pipeline import run_all, run_pipeline

    settings = _settings(ctx, database_url=database_url)
    made = generate_mids(out, powersets=powersets, seed=0)
    err.print(f"generated a mids export: {made.files:,} files, {made.bytes / 1e6:,.1f} MB in {out}")
    with _progress() as progress:
        if no_load:
            result = run_pipeline(get_dataset("mids"), [str(out)], settings=settings, progress=progress)
        else:
            result = run_all(get_dataset("mids"), [str(out)], settings=settings, progress=progress)
    _print_pipeline(result, settings, as_json=as_json)


@main.command("bench")
@click.option("--dataset", type=click.Choice(["mids", "aodb", "licenses"]), default="mids",
              show_default=True, help="What to measure: mids (the real export and copies, or sizes "
              "in entries), aodb (sizes in items) or licenses (sizes in result files; first import "
              "and re-import).")
@click.option("--copies", type=int, multiple=True, help="mids: measure the real export itself (1) "
              "and renamed copies of it for scale (N: every powerset file N times, names suffixed "
              "_c1.._cN-1 so keys stay unique, data as dirty as the original, written compact). "
              "Repeatable. Default when a real export is found: 1 and 5.")
@click.option("--entries", type=int, multiple=True, help="Generated export sizes to measure instead "
              "(repeatable): mids entries amplified from --template (or synthetic), aodb items "
              "(default 170,000), licenses result files (default 515).")
@click.option("--template", type=click.Path(file_okay=False, path_type=Path),
              help="The real export (default $ETL_SHARED_DATA/<dataset> or ../shared/data/<dataset>; "
                   "mids prefers mids_full to the mids sample, and falls back to the synthetic "
                   "generator when neither is there).")
@click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path(".etl/bench"), show_default=True,
              help="Where copies, generated exports and staged runs go (kept between runs).")
@click.option("--max-reject-ratio", type=float, default=0.0, show_default=True,
              help="Passed to validate, so an export with rejected rows is still measured.")
@click.option("--database-url", help="Where to load (default: the embedded server).")
@click.option("--no-load", is_flag=True, help="Measure stage, validate and transform only.")
@click.option("--json", "as_json", is_flag=True, help="Print results as JSON on stdout.")
@_handle_errors
def bench_cmd(dataset: str, copies: tuple[int, ...], entries: tuple[int, ...], template: Path | None,
              work_dir: Path, max_reject_ratio: float, database_url: str | None, no_load: bool,
              as_json: bool) -> None:
    """Measure the whole pipeline on the real export, renamed copies of it, or generated exports.

    Each phase runs in its own process, as `etl stage/validate/transform/load` would, and
    reports time, rows, rows/s and that process's peak RSS. The load is measured through keys,
    indexes, the materialized view, verification and the swap, and compared with the ceiling:
    a server-side COPY ... FROM file (FORMAT binary) of the same final rows.

    \b
    Examples:
      etl bench
      etl bench --template ../shared/data/mids_full --copies 5
      etl bench --copies 1 --copies 5 --work-dir /tmp/bench --database-url postgresql://postgres@127.0.0.1/bench
      etl bench --entries 360000 --template ../shared/data/mids
      etl bench --dataset aodb --entries 170000
    """
    from etl.bench import find_real_export, run_bench

    full = bool(copies) or not entries  # amplifying (--entries) reads its template whole: the sample
    real = None if dataset == "licenses" else find_real_export(dataset, template, full=full)
    if copies or (dataset == "mids" and real is not None and not entries):
        sizes, plan = [], list(copies) or [1, 5]
    else:
        sizes, plan = list(entries) or {"aodb": [170_000], "licenses": [515]}.get(
            dataset, [78_000, 360_000]), []
    results = run_bench(sizes, copies=plan, template=real, work_dir=work_dir,
                        log=lambda msg: err.print(msg), database_url=database_url, load=not no_load,
                        dataset=dataset, max_reject_ratio=max_reject_ratio)
    if as_json:
        click.echo(json.dumps(results, indent=2))
        return
    for res in results:
        print_phases([Phase(p["name"], p["seconds"], p["rows"], p["peak_rss"]) for p in res["phases"]],
                     title=f"{res['dataset']} {res['entries']:,} "
                           f"{'items' if res['dataset'] == 'aodb' else 'entries'}, {res['files']:,} files, "
                           f"{res['bytes'] / 1e6:,.0f} MB"
                           + (f" (real export x{res['copies']})" if res.get("copies") else ""))
        if res["load_parts"]:
            print_phases([Phase(p["name"], p["seconds"], p["rows"], p["peak_rss"])
                          for p in res["load_parts"]], title="load, step by step")
        if res.get("rejected"):
            err.print("validation rejected rows (measured with --max-reject-ratio "
                      f"{max_reject_ratio}): " + ", ".join(f"{k} {n:,}" for k, n in res["rejected"].items()))
        err.print(f"whole run: {res['total_seconds']:.2f} s in-process "
                  f"({res['total_wall_seconds']:.2f} s with interpreter starts); max peak RSS "
                  f"{_mb(res['max_peak_rss'])}")
        if res.get("reimport"):
            print_phases([Phase(p["name"], p["seconds"], p["rows"], p["peak_rss"])
                          for p in res["reimport"]], title="re-import (merge, nothing changed)")
            err.print(f"first import {res['total_seconds']:.2f} s in-process "
                      f"({res['total_wall_seconds']:.2f} s wall); re-import "
                      f"{res['reimport_seconds']:.2f} s ({res['reimport_wall_seconds']:.2f} s wall)")
        if res["unsafe_fast_parts"]:
            safe = {p["name"]: p["seconds"] for p in res["load_parts"]}
            fast = {p["name"]: p["seconds"] for p in res["unsafe_fast_parts"]}
            err.print("--unsafe-fast (UNLOGGED, synchronous_commit off): " + ", ".join(
                f"{name} {fast[name]:.2f} s (vs {safe[name]:.2f} s)" for name in fast if name in safe))
        if res["copy_ceiling"]:
            copy = next(p for p in res["load_parts"] if p["name"] == "load")
            ceiling = res["copy_ceiling"]["seconds"]
            statements = (copy.get("extra") or {}).get("copy_seconds")
            err.print(f"COPY ceiling (server-side COPY FROM binary file, same rows): {ceiling:.2f} s; "
                      f"the load's COPY phase took {copy['seconds']:.2f} s = "
                      f"{copy['seconds'] / ceiling:.2f}x the ceiling"
                      + (f" (its COPY statements {statements:.2f} s = {statements / ceiling:.2f}x; the "
                         "rest creates the build schema)" if statements else ""))
            workers = (copy.get("extra") or {}).get("worker_peak_rss")
            if workers:
                err.print(f"the COPY worker processes' peak RSS: {_mb(workers)} each (pages shared "
                          "with the loading process counted in full)")


# ------------------------------------------------------------------------------ db (the embedded server)

_project_dir_option = click.option(
    "--project-dir", type=click.Path(file_okay=False, path_type=Path),
    help="The project whose server to use (default: the folder of the nearest pyproject.toml).")


@main.group("db")
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
@_project_dir_option
@click.pass_context
@_handle_errors
def db_start_cmd(ctx: click.Context, project_dir: Path | None) -> None:
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
    err.print(f"PostgreSQL {info['version']} runs on 127.0.0.1:{info['port']} (pid {info['pid']})\n"
              f"  data: {escape(info['data_dir'])}\n  log:  {escape(info['log_file'])}\n"
              f"  connect: psql {url}", highlight=False)
    settings: Settings = ctx.obj["settings"]
    if settings.database_url:
        err.print("[yellow]note:[/] a database URL is configured (ETL_DATABASE_URL / DATABASE_URL), "
                  "so the other commands use that server, not this one")
    click.echo(url)


@db_group.command("stop")
@_project_dir_option
@_handle_errors
def db_stop_cmd(project_dir: Path | None) -> None:
    """Stop the project's private PostgreSQL (its data stays; `etl db start` brings it back).

    \b
    Example:
      etl db stop
    """
    from etl.infra import embedded

    if embedded.stop(project_dir):
        err.print("stopped the embedded PostgreSQL")
    else:
        err.print("the embedded PostgreSQL was not running")


@db_group.command("status")
@_project_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print as JSON on stdout.")
@_handle_errors
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
        click.echo(json.dumps(info, indent=2))
        return
    if not info["exists"]:
        err.print(f"no embedded PostgreSQL in {escape(info['project_dir'])} yet: `etl db start` "
                  "creates one (so does any command that needs a database, given no URL)")
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


# ------------------------------------------------------------------------------ migrations and the run ledger

_database_url_option = click.option(
    "--database-url", help="PostgreSQL URL (env ETL_DATABASE_URL or DATABASE_URL; default: the embedded "
                           "server under the project directory).")


def _database_url(ctx: click.Context, flag: str | None) -> str:
    """The database to use: --database-url > environment > the embedded server."""
    from etl.infra.pg import resolve_url

    return resolve_url(_settings(ctx, database_url=flag).database_url)


@db_group.command("upgrade")
@_database_url_option
@click.option("--revision", default="head", show_default=True,
              help="Migrate up to this revision (see migrations/versions).")
@click.pass_context
@_handle_errors
def db_upgrade_cmd(ctx: click.Context, database_url: str | None, revision: str) -> None:
    """Apply the Alembic migrations: the run ledger (schema etl) and each dataset's live schema.

    Running it again applies nothing. The last line printed (stdout) is the current revision.

    \b
    Examples:
      etl db upgrade
      etl db upgrade --database-url postgresql://etl@localhost:5432/etl
    """
    from etl.infra import ledger

    url = _database_url(ctx, database_url)
    applied = ledger.upgrade(url, revision)
    if applied:
        err.print(f"applied {len(applied)} migration{'s' if len(applied) > 1 else ''}: {', '.join(applied)}")
    else:
        err.print("nothing to apply: the database is up to date")
    click.echo(ledger.current(url) or "none")


def _jsonable(value: Any) -> Any:
    from datetime import datetime, timedelta

    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return round(value.total_seconds(), 3)
    return value


_STATUS_COLOR = {"succeeded": "green", "failed": "red", "running": "yellow"}


def _status(status: str) -> str:
    return f"[{_STATUS_COLOR.get(status, 'white')}]{escape(status)}[/]"


def _when(value: Any) -> str:
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S") if value is not None else ""


def _duration(run: dict[str, Any]) -> str:
    d = run.get("duration")
    return f"{d.total_seconds():,.1f} s" if d is not None else "—"


def _total_rows(run: dict[str, Any]) -> str:
    rows = run.get("rows") or {}
    return f"{sum(int(v) for v in rows.values()):,}" if rows else ""


def _short(text: str | None, width: int = 60) -> str:
    if not text:
        return ""
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= width else line[: width - 1] + "…"


@main.group("runs", invoke_without_command=True)
@click.option("--dataset", help="Only this dataset's loads.")
@click.option("--limit", type=int, default=20, show_default=True, help="Show at most this many loads.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON on stdout.")
@_database_url_option
@click.pass_context
@_handle_errors
def runs_group(ctx: click.Context, dataset: str | None, limit: int, as_json: bool,
               database_url: str | None) -> None:
    """List the loads recorded in the run ledger, newest first (`etl runs show RUN` for one).

    \b
    Examples:
      etl runs
      etl runs --dataset mids --limit 5 --json
      etl runs show mids-3f2a
    """
    if ctx.invoked_subcommand is not None:
        return
    from etl.infra import ledger
    from etl.infra.pg import connect

    with connect(_database_url(ctx, database_url)) as conn:
        runs = ledger.list_runs(conn, dataset=dataset, limit=limit)
    if as_json:
        click.echo(json.dumps(_jsonable(runs), indent=2))
        return
    if not runs:
        err.print("no loads recorded" + (f" for {escape(dataset)}" if dataset else ""))
        return
    table = Table(title="runs", title_justify="left")
    for col in ("id", "dataset", "run", "mode", "status", "started", "duration", "rows", "peak RSS", "error"):
        table.add_column(col, justify="right" if col in ("id", "duration", "rows", "peak RSS") else "left")
    for r in runs:
        table.add_row(str(r["id"]), escape(r["dataset"]), escape(r["run_id"]), escape(r["mode"] or ""),
                      _status(r["status"]), _when(r["started_at"]), _duration(r), _total_rows(r),
                      _mb(r["peak_rss"]) if r["peak_rss"] is not None else "", escape(_short(r["error"])))
    err.print(table)


@runs_group.command("show")
@click.argument("run")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON on stdout.")
@_database_url_option
@click.pass_context
@_handle_errors
def runs_show_cmd(ctx: click.Context, run: str, as_json: bool, database_url: str | None) -> None:
    """Show one load: its figures, phases, rows per table, finished steps and error.

    RUN is a ledger id from `etl runs`, or a staged run id or a prefix of one (its latest load).

    \b
    Examples:
      etl runs show 42
      etl runs show mids-3f2a --json
    """
    from etl.infra import ledger
    from etl.infra.pg import connect

    parent = ctx.parent.params.get("database_url") if ctx.parent else None
    with connect(_database_url(ctx, database_url or parent)) as conn:
        r = ledger.get_run(conn, run)
    if as_json:
        click.echo(json.dumps(_jsonable(r), indent=2))
        return
    info = Table.grid(padding=(0, 2))
    info.add_column(style="bold")
    info.add_column()
    for label, value in (
        ("ledger id", str(r["id"])), ("dataset", escape(r["dataset"])), ("run", escape(r["run_id"])),
        ("manifest sha256", escape(r["manifest_sha256"] or "")), ("mode", escape(r["mode"] or "")),
        ("status", _status(r["status"])), ("host / pid", escape(f"{r['host'] or ''} / {r['pid'] or ''}")),
        ("started", _when(r["started_at"])), ("ended", _when(r["ended_at"])),
        ("duration", _duration(r)), ("peak RSS", _mb(r["peak_rss"]) if r["peak_rss"] is not None else ""),
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
            steps.add_row(escape(s["step"]), _when(s["done_at"]),
                          escape(json.dumps(s["detail"])) if s["detail"] is not None else "")
        err.print(steps)
    if r["error"]:
        err.print(f"[bold red]error:[/] {escape(r['error'])}", soft_wrap=True)


# ------------------------------------------------------------------------------ cached reads and operations
# (issue 6: etl query, etl cache, etl health, etl stats, etl db optimize, etl bench-reads)

_redis_url_option = click.option(
    "--redis-url", help="Redis for the shared cache tier (env ETL_REDIS_URL; default: none, the cache is "
                        "in-process only).")


def _redis_url(ctx: click.Context, flag: str | None) -> str | None:
    """The Redis to use: --redis-url > ETL_REDIS_URL > none."""
    return _settings(ctx, redis_url=flag).redis_url or None


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(_jsonable(data), indent=2, default=str))


def _cache_options(fn: F) -> F:
    return _database_url_option(_redis_url_option(fn))


@main.group("query")
def query_group() -> None:
    """Cached reads of the live data (in-process LRU, then Redis, then PostgreSQL), as JSON.

    Every answer carries the dataset's generation: which load it comes from. A read that starts
    after a load's swap committed always sees that load.

    \b
    Examples:
      etl query mids power 42
      etl query mids powerset Blaster_Ranged.Fire_Blast
      etl query mids build-summary Blaster --redis-url redis://127.0.0.1:6379/0
    """


@query_group.group("mids")
def query_mids_group() -> None:
    """Reads of the mids dataset: a power, a powerset with its powers, an archetype's build summary.

    \b
    Example:
      etl query mids power 42
    """


def _run_query(ctx: click.Context, name: str, arg: str, database_url: str | None,
               redis_url: str | None) -> None:
    from etl.infra.cache import Cache
    from etl.query import run

    with Cache(_database_url(ctx, database_url), redis_url=_redis_url(ctx, redis_url)) as cache:
        result = run(cache, "mids", name, arg)
    _echo_json(result)


@query_mids_group.command("power")
@click.argument("power_id", type=int)
@_cache_options
@click.pass_context
@_handle_errors
def query_power_cmd(ctx: click.Context, power_id: int, database_url: str | None,
                    redis_url: str | None) -> None:
    """A power by id, with its powerset, effects and requirements (JSON on stdout).

    \b
    Example:
      etl query mids power 42
    """
    _run_query(ctx, "power", str(power_id), database_url, redis_url)


@query_mids_group.command("powerset")
@click.argument("name")
@_cache_options
@click.pass_context
@_handle_errors
def query_powerset_cmd(ctx: click.Context, name: str, database_url: str | None,
                       redis_url: str | None) -> None:
    """A powerset by full name (case-insensitive), with its powers (JSON on stdout).

    \b
    Example:
      etl query mids powerset Blaster_Ranged.Fire_Blast
    """
    _run_query(ctx, "powerset", name, database_url, redis_url)


@query_mids_group.command("build-summary")
@click.argument("archetype")
@_cache_options
@click.pass_context
@_handle_errors
def query_build_summary_cmd(ctx: click.Context, archetype: str, database_url: str | None,
                            redis_url: str | None) -> None:
    """An archetype's build summary: one row per power of its powersets, from the materialized
    view power_build_summary (JSON on stdout). ARCHETYPE is a class name or a display name.

    \b
    Examples:
      etl query mids build-summary Class_Blaster
      etl query mids build-summary blaster
    """
    _run_query(ctx, "build-summary", archetype, database_url, redis_url)


@main.group("cache")
def cache_group() -> None:
    """The shared read cache in Redis: statistics, clearing, warming.

    Keys carry the dataset's generation, which every load bumps, so nothing ever needs clearing
    for correctness.

    \b
    Examples:
      etl cache stats
      etl cache warm mids --top 100
      etl cache clear
    """


@cache_group.command("stats")
@_cache_options
@click.option("--json", "as_json", is_flag=True, help="Print as JSON on stdout.")
@click.pass_context
@_handle_errors
def cache_stats_cmd(ctx: click.Context, database_url: str | None, redis_url: str | None,
                    as_json: bool) -> None:
    """Hits and misses per tier and per query (all processes), Redis memory and keys, LRU sizes.

    Counters are kept in Redis; without Redis only the generations are shown.

    \b
    Example:
      etl cache stats --json
    """
    from etl.infra import cache

    info = cache.stats(_database_url(ctx, database_url), _redis_url(ctx, redis_url))
    if as_json:
        _echo_json(info)
        return
    gens = Table(title=f"generations (namespace {info['namespace']})", title_justify="left")
    for col in ("dataset", "generation", "run", "swapped at"):
        gens.add_column(col)
    for name, g in info["generations"].items():
        gens.add_row(name, str(g["generation"]), escape(str(g["run_id"])), _when(g["swapped_at"]))
    err.print(gens)
    r = info["redis"]
    if r is None:
        err.print("no Redis configured (--redis-url, ETL_REDIS_URL): counters live in each process only")
        return
    if "error" in r:
        err.print(f"[yellow]Redis unreachable[/] at {escape(r['url'])}: {escape(r['error'])}")
        return
    table = Table(title="reads per query and tier (all processes)", title_justify="left")
    for col in ("query", "lru hit", "lru miss", "redis hit", "redis miss", "db read"):
        table.add_column(col, justify="left" if col == "query" else "right")
    for q, c in r["queries"].items():
        table.add_row(q, *(f"{c.get(k, 0):,}" for k in ("lru_hit", "lru_miss", "redis_hit", "redis_miss",
                                                         "db_read")))
    err.print(table)
    ratio = r["hit_ratio"]
    err.print(f"Redis {escape(r['url'])}: {r['used_memory_human']} used, {r['keys']:,} keys of this database "
              f"({r['value_keys']:,} values); hit ratio lru {ratio['lru']}, redis {ratio['redis']}")
    for proc in r["processes"][:5]:
        err.print(f"  LRU of {escape(proc['process'])}: {proc['lru_entries']:,} entries, "
                  f"{_mb(proc['lru_bytes'])}")


@cache_group.command("clear")
@_cache_options
@click.option("--all", "everything", is_flag=True, help="Every database's keys (all of etl:*), not just "
                                                        "this one's.")
@click.pass_context
@_handle_errors
def cache_clear_cmd(ctx: click.Context, database_url: str | None, redis_url: str | None,
                    everything: bool) -> None:
    """Delete this database's keys from Redis: values, generations, counters, hot keys.

    Never needed for correctness (a reload changes the keys readers use); useful to free memory
    or reset the counters. The in-process caches of running programs are not touched.

    \b
    Examples:
      etl cache clear
      etl cache clear --all --redis-url redis://127.0.0.1:6379/0
    """
    from etl.errors import ConfigError
    from etl.infra import cache

    url = _redis_url(ctx, redis_url)
    if not url:
        raise ConfigError("no Redis configured: there is nothing shared to clear",
                          hint="give --redis-url or set ETL_REDIS_URL")
    db = None if everything else _database_url(ctx, database_url)
    deleted = cache.clear(db, url, everything=everything)
    err.print(f"deleted {deleted:,} keys")
    click.echo(deleted)


@cache_group.command("warm")
@click.argument("dataset")
@click.option("--top", type=int, default=200, show_default=True, help="How many keys to preload.")
@_cache_options
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@click.pass_context
@_handle_errors
def cache_warm_cmd(ctx: click.Context, dataset: str, top: int, database_url: str | None,
                   redis_url: str | None, as_json: bool) -> None:
    """Preload the hottest keys of DATASET into Redis for the current generation (run it after a
    load). Hot keys are counted by every reader; with none yet, every archetype's build summary
    and every powerset are loaded.

    \b
    Examples:
      etl load staging/mids/<run> && etl cache warm mids
      etl cache warm mids --top 50 --json
    """
    from etl.errors import ConfigError
    from etl.infra.cache import Cache
    from etl.query import warm

    url = _redis_url(ctx, redis_url)
    if not url:
        raise ConfigError("no Redis configured: warming an in-process cache that exits at once is useless",
                          hint="give --redis-url or set ETL_REDIS_URL")
    with Cache(_database_url(ctx, database_url), redis_url=url) as c:
        result = warm(c, dataset, top=top)
    if as_json:
        _echo_json(result)
        return
    err.print(f"warmed {result['keys']} keys of {dataset} (generation {result['generation']}, "
              f"{result['from_hot_list']} from the hot list) in {result['seconds']:.2f} s: {result['tiers']}")


_HEALTH_STYLE = {"ok": "green", "warn": "yellow", "fail": "red", "skip": "dim"}


@main.command("health")
@_cache_options
@click.option("--json", "as_json", is_flag=True, help="Print as JSON on stdout.")
@click.pass_context
@_handle_errors
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

    settings = _settings(ctx)
    try:
        url = _database_url(ctx, database_url)
    except EtlError as exc:  # the embedded server could not start: report it as the failed part
        report: dict[str, Any] = {"ok": False, "checks": [{"name": "database", "status": "fail",
                                                           "required": True, "detail": exc.message}]}
    else:
        report = health(url, redis_url=_redis_url(ctx, redis_url), staging_dir=settings.staging_dir)
    if as_json:
        _echo_json(report)
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


@main.command("stats")
@_database_url_option
@click.option("--runs", "last_runs", type=int, default=10, show_default=True, help="How many last loads.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON on stdout.")
@click.pass_context
@_handle_errors
def stats_cmd(ctx: click.Context, database_url: str | None, last_runs: int, as_json: bool) -> None:
    """Rows per table per dataset, table and index sizes, and the last loads with their timings.

    \b
    Examples:
      etl stats
      etl stats --json --runs 3
    """
    from etl.ops import stats

    info = stats(_database_url(ctx, database_url), runs=last_runs)
    if as_json:
        _echo_json(info)
        return
    for name, ds in info["datasets"].items():
        table = Table(title=f"{name}: {ds['rows']:,} rows, {_mb(ds['total_bytes'])}"
                            + (f", generation {ds['generation']}" if "generation" in ds else ""),
                      title_justify="left")
        for col in ("table", "rows", "table size", "index size", "total"):
            table.add_column(col, justify="left" if col == "table" else "right")
        for t in ds["tables"]:
            label = t["table"] + (" (view)" if t["kind"] == "view" else "")
            table.add_row(escape(label), "-" if t["rows"] is None else f"{t['rows']:,}",
                          _kb(t["table_bytes"]), _kb(t["index_bytes"]), _kb(t["total_bytes"]))
        err.print(table)
    runs = Table(title="last loads", title_justify="left")
    for col in ("id", "dataset", "run", "status", "ended", "time", "rows", "phases"):
        runs.add_column(col, overflow="fold")
    for r in info["runs"]:
        phases = " ".join(f"{k} {v:.2f}s" for k, v in r["phases"].items())
        runs.add_row(str(r["id"]), r["dataset"], escape(r["run_id"]), _status(r["status"]),
                     _when(r["ended_at"]),
                     "-" if r["seconds"] is None else f"{r['seconds']:.2f} s", f"{r['rows']:,}", phases)
    err.print(runs)


def _kb(n: int) -> str:
    return f"{n / 1024:,.0f} kB"


@db_group.command("optimize")
@_database_url_option
@click.option("--dataset", "datasets", multiple=True, help="Only this dataset (repeatable; default: all).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@click.pass_context
@_handle_errors
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

    report = optimize(_database_url(ctx, database_url), datasets=list(datasets) or None)
    if as_json:
        _echo_json(report)
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


@main.command("bench-reads")
@click.option("--template", type=click.Path(file_okay=False, path_type=Path),
              default=Path("../shared/data/mids"), show_default=True, help="The mids export to load.")
@click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path(".etl/bench-reads"), show_default=True)
@click.option("--reloads", type=int, default=4, show_default=True, help="Full reloads during the reads.")
@click.option("--lru-procs", type=int, default=2, show_default=True, help="Reader processes with an LRU.")
@click.option("--redis-procs", type=int, default=1, show_default=True, help="Reader processes without LRU.")
@click.option("--db-procs", type=int, default=1, show_default=True, help="Uncached reader processes.")
@click.option("--threads", type=int, default=2, show_default=True, help="Reader threads per process.")
@click.option("--rate", type=float, default=0, show_default=True,
              help="Reads per second per thread, paced (0: as fast as possible, a closed loop).")
@_cache_options
@click.option("--json", "as_json", is_flag=True, help="Print results as JSON on stdout.")
@click.pass_context
@_handle_errors
def bench_reads_cmd(ctx: click.Context, template: Path, work_dir: Path, reloads: int, lru_procs: int,
                    redis_procs: int, db_procs: int, threads: int, rate: float, database_url: str | None,
                    redis_url: str | None, as_json: bool) -> None:
    """Read benchmark: concurrent reader processes (LRU, Redis, uncached groups) on a hot key set
    while `etl load` reloads mids in full again and again; p50/p99 latency per tier, errors and
    stale reads.

    The mids data of the database is replaced (by the template export and a copy of it without
    one powerset, loaded in turn). Exits 1 on any error or stale read.

    \b
    Examples:
      etl bench-reads --redis-url redis://127.0.0.1:6379/0
      etl bench-reads --reloads 6 --lru-procs 3 --json --database-url postgresql://postgres@127.0.0.1/bench
    """
    import shutil

    from etl.bench.reads import PROBE_SET, run_benchmark
    from etl.stage import stage
    from etl.transform import transform
    from etl.validate import require_passed, validate

    if not (template / "I12.json").is_file():
        from etl.errors import ConfigError

        raise ConfigError(f"no mids export at {template}", hint="give --template DIR (a MidsReborn export)")
    settings = _settings(ctx).with_overrides(staging_dir=work_dir / "staging")
    small = work_dir / "export-small"
    if not small.exists():
        shutil.copytree(template, small)
        for victim in (small / "db").rglob(f"*{PROBE_SET}.json"):
            victim.unlink()
    runs = {}
    for variant, source in (("full", template), ("small", small)):
        mids = get_dataset("mids")
        staged = stage(mids, [source], settings=settings)
        run = staged.run
        if "tables" not in run.manifest:
            checked = validate(run, mids)
            require_passed(checked)
            run = transform(checked.run, mids).run
        runs[variant] = run
    result = run_benchmark(_database_url(ctx, database_url), redis_url=_redis_url(ctx, redis_url), runs=runs,
                           reloads=reloads, lru_procs=lru_procs, redis_procs=redis_procs,
                           db_procs=db_procs, threads=threads, rate=rate,
                           progress=lambda text: err.print(text))
    if as_json:
        _echo_json(result)
    else:
        table = Table(title=f"{result['reads']:,} reads in {result['seconds']} s "
                            f"({result['reads_per_s']:,}/s), "
                            f"{result['reloads']} reloads", title_justify="left")
        for col in ("answered by", "reads", "p50", "p99", "max", "p99 between reloads"):
            table.add_column(col, justify="left" if col == "answered by" else "right")
        quiet = result["tiers_between_reloads"]
        for tier, t in result["tiers"].items():
            q = quiet.get(tier, {})
            table.add_row(tier, f"{t['reads']:,}", f"{t['p50_ms']:.3f} ms", f"{t['p99_ms']:.3f} ms",
                          f"{t['max_ms']:.1f} ms", f"{q['p99_ms']:.3f} ms" if "p99_ms" in q else "-")
        err.print(table)
        groups = Table(title="per reader group (lru: LRU+Redis; redis: no LRU; db: no cache at all)",
                       title_justify="left")
        for col in ("group", "reads", "p50", "p99", "max", "p99 between reloads"):
            groups.add_column(col, justify="left" if col == "group" else "right")
        for group, g in result["groups"].items():
            t, q = g["all"], g["between_reloads"]
            groups.add_row(group, f"{t['reads']:,}", f"{t['p50_ms']:.3f} ms", f"{t['p99_ms']:.3f} ms",
                           f"{t['max_ms']:.1f} ms", f"{q['p99_ms']:.3f} ms" if "p99_ms" in q else "-")
        err.print(groups)
        err.print(f"errors {result['errors']}, stale reads {result['stale_reads']}, wrong content "
                  f"{result['wrong_content']}; reloads took {result['reload_seconds']} s")
    if result["errors"] or result["stale_reads"] or result["wrong_content"]:
        sys.exit(1)


# ------------------------------------------------------------------------------ reconcile


@main.command("reconcile")
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--database-url", help="Rebuild from the rows this database holds (the dataset's "
              "live schema, matched to the staged lineage by primary key) instead of the staged "
              "tables.")
@click.option("--schema", help="With --database-url: the schema to read (default: the live one).")
@click.option("--json", "as_json", is_flag=True, help="Print the reconciliation as JSON on stdout.")
@_handle_errors
def reconcile_cmd(run_dir: Path, database_url: str | None, schema: str | None, as_json: bool) -> None:
    """Rebuild every source record from the rows it became and compare it with the export.

    Each record of a level with a home table is its row's typed columns plus its `extra` JSON
    (every key no column types); child records are rows of their own, found by their lineage.
    Exit 0 when every record matches (rejected records are counted apart), 1 otherwise.

    \b
    Examples:
      etl reconcile staging/mids/mids-1a2b3c4d5e6f --json
      etl reconcile staging/mids/mids-1a2b3c4d5e6f --database-url postgresql://me@db/games
    """
    from etl.load.reconcile import reconcile

    run = open_run(run_dir)
    with _progress() as progress:
        result = reconcile(run, run.dataset(), database_url=database_url, schema=schema,
                           progress=progress)
    if as_json:
        _echo_json(result.to_dict())
    else:
        table = Table(title=f"reconciliation of {run.id}: {result.records:,} records, "
                            f"{result.keys_compared:,} keys compared", title_justify="left")
        for col in ("level", "records", "matched", "rejected", "mismatched", "missing"):
            table.add_column(col, justify="left" if col == "level" else "right")
        for level, c in result.levels.items():
            table.add_row(level, *(f"{c[k]:,}" for k in ("records", "matched", "rejected",
                                                          "mismatched", "missing")))
        err.print(table)
        for m in result.mismatches:
            err.print(escape(f"{m['file']} record {m['record']} {m['path'] or ''} "
                             f"{m['key'] or ''}: {m['difference']}"), highlight=False)
    if not result.ok:
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
