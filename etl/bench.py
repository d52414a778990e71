"""The benchmark behind ``etl bench``: generated exports, one process per phase, real figures."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from etl.gen.mids import generate_mids, powersets_for_entries

_PHASE_SCRIPT = """
import json, sys, time
t0 = time.perf_counter()
from etl import Settings, get_dataset, open_run
from etl.metrics import prefer_jemalloc
prefer_jemalloc()
phase, arg, staging = sys.argv[1], sys.argv[2], sys.argv[3]
dataset = sys.argv[5] if len(sys.argv) > 5 else "mids"
settings = Settings(staging_dir=staging)
if phase == "stage":
    from etl.stage import stage
    r = stage(get_dataset(dataset), [arg], settings=settings, force=True)
    out = {"run": str(r.run.path), **r.phase.to_dict()}
elif phase in ("load", "load-unsafe", "merge"):
    from etl.load import load
    mode = {"load-unsafe": "unsafe-fast", "merge": "merge"}.get(phase, "full")
    r = load(open_run(arg), database_url=sys.argv[4], force=True, mode=mode)
    parts = [p.to_dict() for p in r.phases]
    out = {"name": "merge" if mode == "merge" else "load+post-load", "merged": r.merged,
           "seconds": sum(p["seconds"] for p in parts),
           "rows": sum(r.rows.values()), "peak_rss": max(p["peak_rss"] for p in parts),
           "parts": parts}
elif phase == "validate":
    from etl.validate import validate
    r = validate(open_run(arg))
    out = {"status": r.report["status"], **r.phase.to_dict()}
else:
    from etl.transform import transform
    r = transform(open_run(arg))
    out = {"tables": r.rows, **r.phase.to_dict()}
out["process_seconds"] = time.perf_counter() - t0
print(json.dumps(out))
"""


def _run_phase(phase: str, arg: str, staging: Path, url: str = "", dataset: str = "mids") -> dict[str, Any]:
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", _PHASE_SCRIPT, phase, arg, str(staging), url,
                             dataset],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, errs = proc.communicate()
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"bench phase {phase} failed:\n{errs}")
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    result["wall_seconds"] = wall
    return result


def copy_ceiling(url: str, dataset_name: str = "mids") -> dict[str, Any]:
    """The ceiling the load is measured against: server-side ``COPY … FROM file (FORMAT binary)``
    of the live tables' rows, into bare tables created in the same transaction (as the loader's
    COPY does after its TRUNCATE), no client involved."""
    from etl.datasets import get_dataset
    from etl.pg import connect, quote_ident
    from etl.schema import create_tables_sql

    dataset = get_dataset(dataset_name)
    folder = Path(tempfile.mkdtemp(prefix="etl-ceiling-"))
    os.chmod(folder, 0o777)  # the server process writes and reads these files
    scratch = f"{dataset.name}__ceiling"
    try:
        with connect(url) as conn:
            for t in dataset.tables:
                path = folder / f"{t.name}.bin"
                conn.execute(f"COPY {quote_ident(dataset.name)}.{quote_ident(t.name)} TO "
                             f"'{path}' (FORMAT binary)")
            conn.execute(f"DROP SCHEMA IF EXISTS {quote_ident(scratch)} CASCADE")
            conn.execute(f"CREATE SCHEMA {quote_ident(scratch)}")
            size = sum(p.stat().st_size for p in folder.iterdir())
            start = time.perf_counter()
            with conn.transaction():
                for stmt in create_tables_sql(dataset, scratch):
                    conn.execute(stmt)
                for t in dataset.tables:
                    conn.execute(f"COPY {quote_ident(scratch)}.{quote_ident(t.name)} FROM "
                                 f"'{folder / (t.name + '.bin')}' (FORMAT binary)")
            seconds = time.perf_counter() - start
            conn.execute(f"DROP SCHEMA {quote_ident(scratch)} CASCADE")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {"seconds": seconds, "bytes": size}


def _generate(dataset: str, export: Path, size: int, seed: int,
              template: Path | None) -> dict[str, Any]:
    """Write the bench export of ``size`` for ``dataset``; what the marker file records."""
    if dataset == "aodb":
        from etl.errors import ConfigError
        from etl.gen.aodb import generate_aodb

        if template is None:
            raise ConfigError("the aodb bench amplifies a real sample and needs --template",
                              hint="pass --template ../shared/data/aodb")
        made = generate_aodb(export, items=size, template=template, seed=seed)
        return {"files": made.files, "bytes": made.bytes, "entries": made.items}
    if dataset == "licenses":
        from etl.gen.licenses import generate_licenses

        tree = generate_licenses(export, results=size, seed=seed)
        return {"files": tree.files, "bytes": tree.bytes, "entries": tree.results,
                "images": tree.images}
    if dataset != "mids":
        from etl.errors import ConfigError

        raise ConfigError(f"no bench generator for dataset {dataset!r}",
                          hint="use mids, aodb or licenses")
    made_mids = generate_mids(export, powersets=powersets_for_entries(size), seed=seed,
                              template_dir=template)
    return {"files": made_mids.files, "bytes": made_mids.bytes, "entries": made_mids.entries}


def run_bench(
    sizes: list[int],
    *,
    template: Path | None,
    work_dir: Path,
    log: Callable[[str], None] = lambda msg: None,
    seed: int = 1,
    database_url: str | None = None,
    load: bool = True,
    dataset: str = "mids",
) -> list[dict[str, Any]]:
    """Generate an export per size (kept between runs), then time each phase in its own process:
    stage, validate, transform and (with ``load``) the load through indexes, the materialized
    view, verification and the swap, plus the server-side COPY ceiling.

    ``dataset``: ``mids`` (sizes are entries: powersets + powers + effects) or ``aodb`` (sizes
    are items, amplified from ``template``, which it needs)."""
    url = ""
    if load:
        from etl.pg import resolve_url

        url = resolve_url(database_url)
    results = []
    for entries in sizes:
        kind = "real" if template else "synthetic"
        export = work_dir / f"{dataset}-{entries}-{kind}-s{seed}"
        marker = export / ".complete.json"
        if not marker.exists():
            shutil.rmtree(export, ignore_errors=True)
            log(f"generating a {entries:,}-{'item' if dataset == 'aodb' else 'entry'} export "
                f"in {export} …")
            marker.write_text(json.dumps(_generate(dataset, export, entries, seed, template)))
        info = json.loads(marker.read_text())
        staging = work_dir / "staging"
        log(f"measuring {info['entries']:,} entries ({info['files']:,} files, "
            f"{info['bytes'] / 1e6:,.0f} MB) …")
        staged = _run_phase("stage", str(export), staging, dataset=dataset)
        checked = _run_phase("validate", staged["run"], staging, dataset=dataset)
        built = _run_phase("transform", staged["run"], staging, dataset=dataset)
        phases = [staged, checked, built]
        ceiling = None
        unsafe: dict[str, Any] = {}
        reimport: list[dict[str, Any]] = []
        if load and dataset == "licenses":
            # First import (a full load), then a re-import of the same tree (a merge that
            # changes nothing), each phase in its own process as the CLI would run it.
            phases.append(_run_phase("load", staged["run"], staging, url, dataset))
            again = _run_phase("stage", str(export), staging, dataset=dataset)
            reimport = [again, _run_phase("validate", again["run"], staging, dataset=dataset),
                        _run_phase("transform", again["run"], staging, dataset=dataset),
                        _run_phase("merge", again["run"], staging, url, dataset)]
        elif load:
            loaded = _run_phase("load", staged["run"], staging, url)
            phases.append(loaded)
            ceiling = copy_ceiling(url, dataset)
            unsafe = _run_phase("load-unsafe", staged["run"], staging, url)
            # Leave the bench database with logged tables, as a normal load would.
            _run_phase("load", staged["run"], staging, url)
        results.append({
            "dataset": dataset,
            "entries": info["entries"], "files": info["files"], "bytes": info["bytes"],
            "phases": phases,
            "total_seconds": sum(p["seconds"] for p in phases),
            "total_wall_seconds": sum(p["wall_seconds"] for p in phases),
            "max_peak_rss": max(p["peak_rss"] for p in phases),
            "validation": checked["status"],
            "tables": built["tables"],
            "load_parts": phases[3]["parts"] if load else [],
            "unsafe_fast_parts": unsafe.get("parts", []),
            "reimport": reimport,
            "reimport_seconds": sum(p["seconds"] for p in reimport),
            "reimport_wall_seconds": sum(p["wall_seconds"] for p in reimport),
            "images": info.get("images"),
            "copy_ceiling": ceiling,
            "database": "embedded" if load and not database_url else ("given" if load else None),
            "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        })
    return results
