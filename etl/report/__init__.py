"""A staged run's report: one self-contained HTML page (``etl report RUN``; ``etl run`` writes it).

The page shows the row flow per level (source files → staged → rejected → in tables → loaded),
time and peak memory per phase, the failing rules with example rows (source file and record),
and a profile of every column (null share, distinct count, min/max, a histogram as inline SVG).
It needs no network to be read: CSS, script and charts are inline.

Everything comes from the run directory (manifest, ``report.json``, the Parquet chunks), plus,
when a database is given, the run ledger's figures of the run's latest load.

>>> from etl import open_run
>>> from etl.report import write_report
>>> write_report(open_run("staging/mids/mids-1a2b3c4d5e6f"))   # doctest: +SKIP
PosixPath('staging/mids/mids-1a2b3c4d5e6f/report.html')
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from etl.errors import EtlError, mask_secrets
from etl.report.html import render_html
from etl.report.profile import profile_all
from etl.run import Run
from etl.staging_fs import RemotePath, StagePath
from etl.version import __version__

log = logging.getLogger(__name__)

#: The report's file name in the run directory.
REPORT_HTML = "report.html"

__all__ = ["REPORT_HTML", "build_report", "load_figures", "render_html", "write_report"]


def write_report(run: Run, *, out: str | Path | None = None, load: Mapping[str, Any] | None = None,
                 database_url: str | None = None, memory_limit: str = "256MB",
                 threads: int | None = None) -> StagePath:
    """Write the run's report page to ``out`` (default: ``report.html`` in the run directory)
    through a temporary file and a rename; returns its path.

    ``load``: the figures of a load just made (see :func:`load_figures`); else, given a
    ``database_url``, the run ledger's latest load of the run; else the page says the run was
    not loaded (as far as it knows)."""
    target = Path(out) if out is not None else run.path / REPORT_HTML
    data = build_report(run, load=load, database_url=database_url, memory_limit=memory_limit,
                        threads=threads)
    page = render_html(data)
    if isinstance(target, RemotePath):  # one object, written whole
        target.write_bytes(page.encode("utf-8", "replace"))
        log.info("report of %s written to %s", run.id, target)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(page.encode("utf-8", "replace"))
            os.fchmod(f.fileno(), 0o644)  # a page to share: readable like any written file
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    log.info("report of %s written to %s", run.id, target)
    return target


def build_report(run: Run, *, load: Mapping[str, Any] | None = None, database_url: str | None = None,
                 memory_limit: str = "256MB", threads: int | None = None) -> dict[str, Any]:
    """The report's content as plain data (what :func:`render_html` draws)."""
    started = time.perf_counter()
    m = run.manifest
    levels_of_table, parents = _dataset_shape(run)
    load_note = None
    if load is None and database_url:
        load, load_note = _ledger_load(database_url, run.id)
    elif load is None and (m.get("validation") or {}).get("status") == "failed":
        load_note = "validation failed, so nothing was loaded"
    elif load is None:
        load_note = "no database given (they come from its run ledger: --database-url)"

    report = run.report() or {}
    tables = m.get("tables") or {}
    if tables:
        targets = [(name, [run.path / c["path"] for c in e["chunks"]], e["schema"])
                   for name, e in tables.items()]
    else:
        targets = [(name, [run.path / c["path"] for c in e["chunks"]], e["schema"])
                   for name, e in (m.get("levels") or {}).items()]
    profiles = profile_all(targets, memory_limit=memory_limit, threads=threads)
    data: dict[str, Any] = {
        "generated_by": f"etl {__version__}",
        "generated_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "run": _run_summary(run, load),
        "flow": _flow(run, levels_of_table, parents, load),
        "tables": _tables(run, levels_of_table, load),
        "phases": _phases(m, load),
        "validation": _validation(m, report),
        "rules": [r for r in report.get("rules", []) if r.get("failed")],
        "cleaning": [c for c in report.get("cleaning", []) if c.get("changed")],
        "quarantined": list(m.get("quarantined") or []),
        "duplicate_keys": dict(m.get("duplicate_keys") or {"records": 0, "examples": []}),
        "load": dict(load) if load is not None else None,
        "load_note": load_note,
        "profiles": {"of": "tables" if tables else "levels", "targets": profiles},
    }
    data["seconds"] = round(time.perf_counter() - started, 3)
    return data


def load_figures(result: Any) -> dict[str, Any]:
    """The figures of a load just made (an :class:`etl.load.LoadResult`) for :func:`write_report`."""
    return {"source": "this run", "ledger_id": result.ledger_id, "status": "skipped" if result.skipped
            else "succeeded", "mode": result.mode, "schema": result.schema,
            "database": mask_secrets(result.url), "rows": dict(result.rows),
            "phases": [p.to_dict() for p in result.phases]}


def _ledger_load(database_url: str, run_id: str) -> tuple[dict[str, Any] | None, str | None]:
    """The run ledger's latest load of ``run_id``, or why there is none."""
    from etl.infra import ledger, pg

    try:
        with pg.connect(database_url, connect_timeout=3) as conn:
            row = ledger.get_run(conn, run_id)
    except EtlError as exc:
        return None, f"the run ledger at {mask_secrets(database_url)} could not be read: {exc.message}"
    if row["run_id"] != run_id:
        return None, f"the run ledger at {mask_secrets(database_url)} has no load of {run_id}"
    return {"source": "run ledger", "ledger_id": row["id"], "status": row["status"], "mode": row["mode"],
            "database": mask_secrets(database_url), "rows": dict(row["rows"] or {}),
            "phases": list(row["phases"] or []), "peak_rss": row["peak_rss"],
            "started_at": str(row["started_at"]) if row["started_at"] else None,
            "ended_at": str(row["ended_at"]) if row["ended_at"] else None, "error": row["error"]}, None


def _dataset_shape(run: Run) -> tuple[dict[str, str], dict[str, str | None]]:
    """Each level's home table and parent, from the run's dataset; the manifest alone (no tables)
    when the dataset cannot be had (a plugin not installed here)."""
    from etl.datasets import dataset_of

    parents = {name: e.get("parent") for name, e in (run.manifest.get("levels") or {}).items()}
    try:
        ds = dataset_of(run)
    except EtlError as exc:
        log.info("report of %s without its dataset: %s", run.id, exc.message)
        return {}, parents
    return {name: lvl.table for name, lvl in ds.levels.items() if lvl.table is not None}, parents


def _run_summary(run: Run, load: Mapping[str, Any] | None) -> dict[str, Any]:
    m = run.manifest
    sources = m.get("sources") or []
    state = "transformed" if m.get("tables") else "validated" if m.get("validation") else "staged"
    if load is not None and load.get("status") == "succeeded":
        state = "loaded"
    return {"id": run.id, "dataset": run.dataset_name, "dataset_version": m.get("dataset_version"),
            "toolkit_version": m.get("toolkit_version"), "created_at": m.get("created_at"),
            "path": str(run.path), "state": state, "files": len(sources),
            "bytes": sum(int(s.get("size") or 0) for s in sources)}


def _flow(run: Run, levels_of_table: Mapping[str, str], parents: Mapping[str, str | None],
          load: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    m = run.manifest
    files: dict[str, int] = {}
    size: dict[str, int] = {}
    for s in m.get("sources") or []:
        files[s.get("source", "")] = files.get(s.get("source", ""), 0) + 1
        size[s.get("source", "")] = size.get(s.get("source", ""), 0) + int(s.get("size") or 0)
    rejected = (m.get("validation") or {}).get("rejected") or {}
    tables = m.get("tables") or {}
    loaded = (load or {}).get("rows") or {}
    out = []
    for name, entry in (m.get("levels") or {}).items():
        source = entry.get("source", "")
        table = levels_of_table.get(name)
        rej = rejected.get(name) if m.get("validation") else None
        out.append({
            "level": name, "parent": parents.get(name), "source": source, "files": files.get(source, 0),
            "bytes": size.get(source, 0), "staged": int(entry.get("rows", 0)), "rejected": rej,
            "accepted": None if rej is None else int(entry.get("rows", 0)) - int(rej),
            "table": table, "table_rows": (tables.get(table) or {}).get("rows") if table else None,
            "loaded": loaded.get(table) if table else None,
            "shared_with": sorted(n for n, t in levels_of_table.items() if t == table and n != name)
            if table else [],
        })
    return out


def _tables(run: Run, levels_of_table: Mapping[str, str],
            load: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    loaded = (load or {}).get("rows") or {}
    return [{"table": name, "rows": int(e.get("rows", 0)), "loaded": loaded.get(name),
             "levels": sorted(n for n, t in levels_of_table.items() if t == name)}
            for name, e in (run.manifest.get("tables") or {}).items()]


def _phases(manifest: Mapping[str, Any], load: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    def phase(p: Mapping[str, Any], of: str) -> dict[str, Any]:
        return {"name": p.get("name"), "seconds": float(p.get("seconds") or 0),
                "rows": int(p.get("rows") or 0), "peak_rss": int(p.get("peak_rss") or 0), "of": of}

    out = [phase(p, "run") for p in (manifest.get("phases") or {}).values()]
    seen = {p["name"] for p in out}
    out += [phase(p, "load") for p in (load or {}).get("phases") or [] if p.get("name") not in seen]
    return out


def _validation(manifest: Mapping[str, Any], report: Mapping[str, Any]) -> dict[str, Any] | None:
    v = manifest.get("validation")
    if not v and not report:
        return None
    v = v or {}
    return {"status": report.get("status") or v.get("status"),
            "failed_levels": report.get("failed_levels") or v.get("failed_levels") or [],
            "max_reject_ratio": report.get("max_reject_ratio", v.get("max_reject_ratio")),
            "rules": len(report.get("rules") or [])}
