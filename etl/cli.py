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
from etl.metrics import Phase
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


_stage_options = [
    click.option("--memory-limit",
                 help="DuckDB memory limit while staging, e.g. 256MB (env ETL_MEMORY_LIMIT)."),
    click.option("--chunk-rows", type=int, help="At most this many rows per Parquet chunk."),
    click.option("--threads", type=int, help="Worker threads (default: one per core)."),
    click.option("--max-record-bytes", type=int, default=64 << 20, show_default=True,
                 help="Refuse a single JSON record larger than this."),
    click.option("--force", is_flag=True, help="Stage again even if this content was staged before."),
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
              max_record_bytes: int, **flags: Any) -> tuple[Run, Phase, bool]:
    from etl.stage import stage

    settings = _settings(ctx, **flags)
    with _progress() as progress:
        result = stage(get_dataset(dataset), list(sources), settings=settings, force=force,
                       max_record_bytes=max_record_bytes, progress=progress)
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


def _print_levels(run: Run) -> None:
    table = Table(title=f"staged {run.id}", title_justify="left")
    table.add_column("level")
    table.add_column("rows", justify="right")
    table.add_column("chunks", justify="right")
    for name, entry in run.manifest["levels"].items():
        table.add_row(name, f"{entry['rows']:,}", str(len(entry["chunks"])))
    err.print(table)


# ------------------------------------------------------------------------------ validate


def print_report(report: dict[str, Any]) -> None:
    table = Table(title=f"validation of {report['run_id']}: {report['status'].upper()}",
                  title_justify="left")
    for col in ("rule", "severity", "failed", "example"):
        table.add_column(col, justify="right" if col == "failed" else "left", overflow="fold")
    for rule in report["rules"]:
        if not rule["failed"]:
            continue
        ex = rule["examples"][0] if rule["examples"] else {}
        where = f"{ex.get('file')} #{ex.get('record')}" + (f" {ex['path']}" if ex.get("path") else "")
        color = "red" if rule["severity"] == "error" else "yellow"
        table.add_row(rule["name"], f"[{color}]{rule['severity']}[/]", f"{rule['failed']:,}",
                      escape(f"{where} {ex.get('values', '')}"))
    passed = sum(1 for r in report["rules"] if not r["failed"])
    table.caption = f"{passed} of {len(report['rules'])} rules pass on every row"
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


@main.command("validate")
@click.argument("target")
@click.argument("sources", nargs=-1)
@click.option("--max-reject-ratio", type=float, default=0.0, show_default=True,
              help="Fraction of a level's rows that error rules may reject before the run fails.")
@click.option("--report", "report_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write report.json here (for CI).")
@stage_options
@click.pass_context
@_handle_errors
def validate_cmd(ctx: click.Context, target: str, sources: tuple[str, ...], max_reject_ratio: float,
                 report_file: Path | None, **opts: Any) -> None:
    """Check a staged run (or stage the export first) against the dataset's rules.

    TARGET is a run directory, or a dataset name followed by the export's SOURCES. Writes
    report.json and rejects/<level>.parquet in the run. Exit 0: passed; 1: error rules
    rejected more than --max-reject-ratio of some level; 2: the input cannot be read.

    \b
    Examples:
      etl validate staging/mids/mids-1a2b3c4d5e6f
      etl validate mids ../shared/data/mids --report out/report.json
    """
    from etl.validate import validate

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
        result = validate(run, max_reject_ratio=max_reject_ratio, report_file=report_file,
                          progress=progress)
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
        result = transform(run, progress=progress)
    table = Table(title=f"tables of {run.id}", title_justify="left")
    table.add_column("table")
    table.add_column("rows", justify="right")
    for name, rows in result.rows.items():
        table.add_row(name, f"{rows:,}")
    err.print(table)
    print_phases([result.phase])
    click.echo(run.path)


# ------------------------------------------------------------------------------ generate, demo, bench


@main.command("generate")
@click.argument("dataset", type=click.Choice(["mids"]))
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--powersets", type=int, help="Number of powerset files.")
@click.option("--entries", type=int, help="Or: about this many entries (powersets + powers + effects).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--template", type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="A real export to amplify (e.g. ../shared/data/mids); synthetic when absent.")
@_handle_errors
def generate_cmd(dataset: str, out: Path, powersets: int | None, entries: int | None, seed: int,
                 template: Path | None) -> None:
    """Write an export in the real format, of any size, deterministic by seed.

    \b
    Examples:
      etl generate mids /tmp/mids-demo --powersets 50
      etl generate mids /tmp/mids-360k --entries 360000 --template ../shared/data/mids
    """
    from etl.gen.mids import generate_mids, powersets_for_entries

    count = powersets or powersets_for_entries(entries or 2_000)
    made = generate_mids(out, powersets=count, seed=seed, template_dir=template)
    err.print(f"wrote {made.files:,} files, {made.bytes / 1e6:,.1f} MB: {made.powersets:,} powersets, "
              f"{made.powers:,} powers, {made.effects:,} effects ({made.entries:,} entries)")
    click.echo(out)


@main.command("demo")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path(".etl/demo-export"),
              show_default=True, help="Where to write the generated export.")
@click.option("--powersets", type=int, default=200, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
@click.pass_context
@_handle_errors
def demo_cmd(ctx: click.Context, out: Path, powersets: int, as_json: bool) -> None:
    """Generate a small mids export (the real format) and run the pipeline on it.

    Needs nothing but this repository: the export comes from the project's own generator.

    \b
    Example:
      etl demo
    """
    from etl.gen.mids import generate_mids
    from etl.pipeline import run_pipeline

    made = generate_mids(out, powersets=powersets, seed=0)
    err.print(f"generated a mids export: {made.files:,} files, {made.bytes / 1e6:,.1f} MB in {out}")
    with _progress() as progress:
        result = run_pipeline(get_dataset("mids"), [str(out)], settings=_settings(ctx), progress=progress)
    if as_json:
        click.echo(json.dumps(result.summary(), indent=2))
        return
    print_report(result.report)
    print_phases(result.phases)
    click.echo(result.run.path)


@main.command("bench")
@click.option("--entries", type=int, multiple=True, help="Export sizes to measure (repeatable). "
              "Default: the real export's size (78k) and the original tool's scale (360k).")
@click.option("--template", type=click.Path(file_okay=False, path_type=Path),
              default=Path("../shared/data/mids"), show_default=True,
              help="Real export to amplify; falls back to the synthetic generator if missing.")
@click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path(".etl/bench"), show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print results as JSON on stdout.")
@_handle_errors
def bench_cmd(entries: tuple[int, ...], template: Path, work_dir: Path, as_json: bool) -> None:
    """Measure stage, validate and transform on generated exports of realistic sizes.

    Each phase runs in its own process, as `etl stage/validate/transform` would, and reports
    wall time, rows, rows/s and that process's peak RSS.

    \b
    Example:
      etl bench --entries 78000 --entries 360000
    """
    from etl.bench import run_bench

    sizes = list(entries) or [78_000, 360_000]
    results = run_bench(sizes, template=template if template.is_dir() else None, work_dir=work_dir,
                        log=lambda msg: err.print(msg))
    if as_json:
        click.echo(json.dumps(results, indent=2))
        return
    for res in results:
        print_phases([Phase(p["name"], p["seconds"], p["rows"], p["peak_rss"]) for p in res["phases"]],
                     title=f"{res['entries']:,} entries, {res['files']:,} files, "
                           f"{res['bytes'] / 1e6:,.0f} MB")
        err.print(f"three phases: {res['total_seconds']:.2f} s in-process "
                  f"({res['total_wall_seconds']:.2f} s with interpreter start); max peak RSS "
                  f"{_mb(res['max_peak_rss'])}")


if __name__ == "__main__":  # pragma: no cover
    main()
