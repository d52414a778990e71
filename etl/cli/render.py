"""What the CLI shows: the console, error handling, progress, tables and JSON output.

Human output (progress, tables, errors) goes to stderr; what a script wants (a run directory, a
JSON summary) goes to stdout. Only the CLI prints.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from etl.config import Settings
from etl.metrics import Phase
from etl.run import Run

# Piped or captured output gets wide lines, so rule names and paths are never folded.
err = Console(stderr=True, width=None if sys.stderr.isatty() else 200)
F = TypeVar("F", bound=Callable[..., Any])


def handle_errors(fn: F) -> F:
    """Run a command: an error (or Ctrl-C, SIGTERM) becomes its message on stderr, with
    ``--json`` also the error document on stdout, and the exit code (see
    :mod:`etl.cli.failures`). Click's own exceptions (usage, exit) pass through to the root
    group, which does the same for them."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from etl.cli.failures import fail

        as_json = bool(kwargs.get("as_json"))
        try:
            return fn(*args, **kwargs)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except (Exception, KeyboardInterrupt) as exc:
            fail(exc, as_json=as_json)

    return wrapper  # type: ignore[return-value]


@contextmanager
def progress_bar(enabled: bool = True) -> Iterator[Callable[[str, int, int], None]]:
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


def mb(n: int) -> str:
    return f"{n / 1e6:,.0f} MB"


def kb(n: int) -> str:
    return f"{n / 1024:,.0f} kB"


def print_phases(phases: list[Phase], title: str = "summary") -> None:
    table = Table(title=title, title_justify="left")
    for col in ("phase", "time", "rows", "rows/s", "peak RSS"):
        table.add_column(col, justify="left" if col == "phase" else "right")
    for p in phases:
        table.add_row(p.name, f"{p.seconds:.2f} s", f"{p.rows:,}", f"{p.rows_per_s:,.0f}", mb(p.peak_rss))
    err.print(table)


def jsonable(value: Any) -> Any:
    from datetime import datetime, timedelta

    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return round(value.total_seconds(), 3)
    return value


#: Keys whose value is a list of phases: in every JSON document one shape (:func:`phase_doc`).
PHASE_LISTS = frozenset({"phases", "load_parts", "unsafe_fast_parts", "reimport"})
_PHASE_KEYS = ("name", "seconds", "rows", "rows_per_s", "peak_mb", "peak_rss")


def phase_doc(phase: Phase | Mapping[str, Any]) -> dict[str, Any]:
    """One phase as every ``--json`` shows it: ``{"name", "seconds", "rows", "rows_per_s",
    "peak_mb"}``, and ``"extra"`` (its details) when it has any."""
    p = phase.to_dict() if isinstance(phase, Phase) else dict(phase)
    seconds = float(p.get("seconds") or 0)
    rows = int(p.get("rows") or 0)
    peak = p.get("peak_rss")
    out: dict[str, Any] = {
        "name": p.get("name"), "seconds": round(seconds, 4), "rows": rows,
        "rows_per_s": round(rows / seconds, 1) if seconds > 0 else 0.0,
        "peak_mb": round(int(peak) / 1e6, 1) if peak is not None else p.get("peak_mb"),
    }
    extra = dict(p.get("extra") or {})
    extra.update({k: v for k, v in p.items() if k not in _PHASE_KEYS and k != "extra"})
    if extra:
        out["extra"] = extra
    return out


def _phases(value: Any) -> Any:
    if isinstance(value, Mapping) and all(isinstance(v, int | float) for v in value.values()):
        return [phase_doc({"name": k, "seconds": v}) for k, v in value.items()]  # name → seconds
    if isinstance(value, Mapping):  # name → phase
        return [phase_doc({"name": k, **v}) for k, v in value.items()]
    if isinstance(value, list):
        return [phase_doc(p) if isinstance(p, Phase | Mapping) else p for p in value]
    return value


def json_document(data: Any) -> Any:
    """``data`` made JSON-ready: datetimes as ISO text, durations as seconds, every list of
    phases in the one shape (:func:`phase_doc`)."""
    if isinstance(data, Phase):
        return phase_doc(data)
    if isinstance(data, Mapping):
        return {k: json_document(_phases(v) if k in PHASE_LISTS else v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [json_document(v) for v in data]
    return jsonable(data)


def echo_json(data: Any) -> None:
    """The one JSON document a ``--json`` command prints on stdout."""
    click.echo(json.dumps(json_document(data), indent=2, default=str))


STATUS_COLOR = {"succeeded": "green", "failed": "red", "running": "yellow", "interrupted": "yellow",
                "abandoned": "red"}


def status_cell(status: str) -> str:
    return f"[{STATUS_COLOR.get(status, 'white')}]{escape(status)}[/]"


def when(value: Any) -> str:
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S") if value is not None else ""


def duration(run: dict[str, Any]) -> str:
    d = run.get("duration")
    return f"{d.total_seconds():,.1f} s" if d is not None else "—"


def total_rows(run: dict[str, Any]) -> str:
    rows = run.get("rows") or {}
    return f"{sum(int(v) for v in rows.values()):,}" if rows else ""


def short(text: str | None, width: int = 60) -> str:
    if not text:
        return ""
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= width else line[: width - 1] + "…"


def print_quarantined(bad: list[dict[str, Any]]) -> None:
    if not bad:
        return
    err.print(f"[yellow]quarantined {len(bad)} file(s)[/] that are not valid JSON (left out; "
              "--strict makes this fatal):")
    for q in bad[:20]:
        err.print(f"  {escape(q['relpath'])}: {escape(q['reason'])}", soft_wrap=True)
    if len(bad) > 20:
        err.print(f"  … and {len(bad) - 20} more (see the manifest's \"quarantined\")")


def print_duplicate_keys(manifest: Mapping[str, Any]) -> None:
    """How many records held a key twice (the last value was kept), and the first of them."""
    found = manifest.get("duplicate_keys") or {}
    if not found.get("records"):
        return
    first = found["examples"][0]
    err.print(f"[yellow]{found['records']:,} record(s) hold a key twice[/]: the last value of each "
              f"is kept, as JSON libraries read it (first: {escape(first['file'])} record "
              f"{first['record']}; the manifest's \"duplicate_keys\" lists more)", soft_wrap=True)


def print_drift(manifest: Mapping[str, Any]) -> None:
    """What the stage found that the run's spec does not declare, and what each source's policy
    did with it."""
    found = manifest.get("drift") or []
    if not found:
        return
    table = Table(title=f"drift: {len(found)} key(s) or type(s) the spec does not declare",
                  title_justify="left")
    for col in ("level", "key", "declared", "seen", "rows", "first seen", "policy"):
        table.add_column(col, justify="right" if col == "rows" else "left")
    did = {"keep": "kept in extra", "evolve": "evolved", "freeze": "stopped"}
    for d in found:
        table.add_row(escape(d["level"]), escape(d["key"]), d["declared"] or "(new)",
                      "/".join(d["seen"]) or "null", f"{d['rows']:,}",
                      escape(f"{d['file']} record {d['record']}"), did.get(d["policy"], d["policy"]))
    err.print(table)
    policies = {d["policy"] for d in found}
    if "keep" in policies:
        err.print("[yellow]kept whole in each row's extra[/]: to type them, run "
                  "`etl init --update NAME SOURCE...` or set drift = \"evolve\" for the source")
    if "evolve" in policies:
        err.print("the run's spec was evolved (new columns, wider types; its copy is the run's "
                  "spec.toml): `etl init --update NAME SOURCE...` brings your spec file along")


def staged_doc(run: Run, phases: list[Phase], *, skipped: bool) -> dict[str, Any]:
    """What `etl stage --json` prints: the run, its levels, what was quarantined or drifted."""
    m = run.manifest
    return {"run": str(run.path), "run_id": run.id, "dataset": run.dataset_name, "skipped": skipped,
            "levels": {name: {"rows": e["rows"], "chunks": len(e["chunks"])}
                       for name, e in m["levels"].items()},
            "quarantined": m.get("quarantined") or [], "drift": m.get("drift") or [],
            "phases": phases}


def validated_doc(result: Any, phases: list[Phase]) -> dict[str, Any]:
    """What `etl validate --json` prints: the report's figures and failing rules; when the run
    did not pass, also the error document's ``error`` (as `etl run --json` has it then)."""
    from etl.cli.failures import error_document
    from etl.validate import failing_rules, require_passed
    from etl.validate.errors import ValidationFailed

    run, report = result.run, result.report
    doc: dict[str, Any] = {}
    try:
        require_passed(result)
    except ValidationFailed as exc:
        doc["error"] = error_document(exc)["error"]
    return {**doc, "run": str(run.path), "run_id": run.id, "dataset": run.dataset_name,
            "status": report["status"], "passed": result.passed, "report": str(run.path / "report.json"),
            "max_reject_ratio": report["max_reject_ratio"], "failed_levels": report["failed_levels"],
            "levels": report["levels"], "failed_rules": failing_rules(report),
            "cleaning": report["cleaning"], "overrides": report.get("overrides", []), "phases": phases}


def print_levels(run: Run) -> None:
    table = Table(title=f"staged {run.id}", title_justify="left")
    table.add_column("level")
    table.add_column("rows", justify="right")
    table.add_column("chunks", justify="right")
    for name, entry in run.manifest["levels"].items():
        table.add_row(name, f"{entry['rows']:,}", str(len(entry["chunks"])))
    err.print(table)


def severity_cell(rule: dict[str, Any]) -> str:
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
        table.add_row(escape(rule["name"]), severity_cell(rule), f"{rule['failed']:,}",
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


def print_rules(dataset: Any, settings: Settings) -> None:
    """Every rule of ``dataset`` with the severity it runs with here (`--list-rules`)."""
    from etl.validate.rules import resolve_rules

    table = Table(title=f"rules of {dataset.name}", title_justify="left")
    for col in ("rule", "kind", "severity", "description"):
        table.add_column(col, overflow="fold")
    for res in resolve_rules(dataset, settings.rules):
        entry = res.to_dict(None, [])
        table.add_row(escape(res.rule.name), res.rule.kind, severity_cell(entry),
                      escape(entry["description"]))
    err.print(table)


def connect_hint(url: str, settings: Settings) -> None:
    from etl.errors import mask_secrets

    if not settings.database_url:
        err.print(f"loaded into the project's embedded PostgreSQL; connect with: "
                  f"[bold]psql {escape(url)}[/]  (stop it with `etl db stop`)", soft_wrap=True)
    else:
        err.print(f"database: {escape(mask_secrets(url))}", soft_wrap=True)


def print_load(result: Any) -> None:
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
    on_ray = next((p.extra["ray"] for p in result.phases if p.name == "load" and "ray" in p.extra), None)
    if on_ray:
        err.print(f"copied on Ray: {on_ray['nodes']} node(s), {on_ray['cpus']} CPUs; {on_ray['tasks']} "
                  f"COPY tasks ({on_ray['chunks_found_done']} found done by a retry)")


def print_pipeline(result: Any, settings: Settings, *, as_json: bool) -> None:
    """The end of `etl run` and `etl demo`: JSON, or report, load, phases, how to connect."""
    if as_json:
        echo_json(result.summary())
        return
    print_report(result.report)
    if result.load is not None:
        print_load(result.load)
    print_phases(result.phases, title=f"{result.run.id}: {sum(p.seconds for p in result.phases):.2f} s")
    if result.load is not None:
        connect_hint(result.load.url, settings)
    if result.report_html is not None:  # last before the run directory, which scripts read
        err.print(f"report: {escape(str(result.report_html))}", highlight=False)
    click.echo(result.run.path)


@contextmanager
def validation_shown(*, as_json: bool) -> Iterator[None]:
    """When validation stops a command (`etl run`, `etl demo`, `etl rebuild`), show why as
    `etl validate` does: the failing-rules table (with --json, the error document on stdout
    carries the failing rules: :func:`etl.cli.failures.error_document`); then exit 1 with the
    error."""
    from etl.validate.errors import ValidationFailed

    try:
        yield
    except ValidationFailed as exc:
        if exc.report is not None and not as_json:
            print_report(exc.report)
        raise
