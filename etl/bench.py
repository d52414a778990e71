"""The benchmark behind ``etl bench``: generated exports, one process per phase, real figures."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
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
settings = Settings(staging_dir=staging)
if phase == "stage":
    from etl.stage import stage
    r = stage(get_dataset("mids"), [arg], settings=settings, force=True)
    out = {"run": str(r.run.path), **r.phase.to_dict()}
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


def _run_phase(phase: str, arg: str, staging: Path) -> dict[str, Any]:
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", _PHASE_SCRIPT, phase, arg, str(staging)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, errs = proc.communicate()
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"bench phase {phase} failed:\n{errs}")
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    result["wall_seconds"] = wall
    return result


def run_bench(
    sizes: list[int],
    *,
    template: Path | None,
    work_dir: Path,
    log: Callable[[str], None] = lambda msg: None,
    seed: int = 1,
) -> list[dict[str, Any]]:
    """Generate an export per size (kept between runs), then time the three phases."""
    results = []
    for entries in sizes:
        export = work_dir / f"mids-{entries}-{'real' if template else 'synthetic'}-s{seed}"
        marker = export / ".complete.json"
        if not marker.exists():
            shutil.rmtree(export, ignore_errors=True)
            log(f"generating a {entries:,}-entry export in {export} …")
            made = generate_mids(export, powersets=powersets_for_entries(entries), seed=seed,
                                 template_dir=template)
            marker.write_text(json.dumps({"files": made.files, "bytes": made.bytes,
                                          "entries": made.entries}))
        info = json.loads(marker.read_text())
        staging = work_dir / "staging"
        log(f"measuring {info['entries']:,} entries ({info['files']:,} files, "
            f"{info['bytes'] / 1e6:,.0f} MB) …")
        staged = _run_phase("stage", str(export), staging)
        checked = _run_phase("validate", staged["run"], staging)
        built = _run_phase("transform", staged["run"], staging)
        phases = [staged, checked, built]
        results.append({
            "entries": info["entries"], "files": info["files"], "bytes": info["bytes"],
            "phases": phases,
            "total_seconds": sum(p["seconds"] for p in phases),
            "total_wall_seconds": sum(p["wall_seconds"] for p in phases),
            "max_peak_rss": max(p["peak_rss"] for p in phases),
            "validation": checked["status"],
            "tables": built["tables"],
            "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        })
    return results
