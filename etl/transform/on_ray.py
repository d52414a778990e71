"""The transform on a Ray cluster (``engine = "ray"``): a table a task.

The driver (the process running :func:`etl.transform.transform`) checks the run, makes the
folder the tables go to under the run (``.tables.tmp-ray-<token>``, a new one each transform:
a task outliving a killed driver cannot write into the next transform's folder), and sends one
task per target table. Each task builds its table exactly as the local engine does
(:func:`etl.transform.transformer.plans` for the table's plan over the run's accepted rows,
:func:`etl.transform.transformer.build_table` to collect, check the keys, sort and write its
chunks and compute the checksum) and returns the table's manifest entry. The driver then renames
the folder to ``tables`` and writes the manifest, as locally: the same files, rows and table
checksums as the local engine (the tasks read the run and write through the staging root, which
every node must see at the same path).

A task whose worker process dies is run again by Ray; it first clears its table's folder, so a
retry leaves no chunk doubled or left over. An error a task raises (a key violation) is raised
as itself and stops the transform.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from etl.config import Settings
from etl.dataset import Dataset
from etl.infra.cluster import MAX_RETRIES, cluster_figures, fault_point, gather, kill_once, ray_session
from etl.run import Run

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]

#: Fault points (``ETL_FAULT_RAY_KILL``, see :data:`etl.infra.cluster.FAULT_ENV`): ``table``, a
#: table task once it has written its first piece; ``transform-driver``, the driver when the
#: first table is done.
POINTS = ("table", "transform-driver")


def transform_on_ray(run: Run, dataset: Dataset, tmp: Path, *, chunk_rows: int, settings: Settings,
                     progress: Progress | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The dataset's tables built into ``tmp`` by tasks on Ray: (their manifest entries, in the
    dataset's table order; the figures of the run on Ray)."""
    fault = fault_point()
    tmp.mkdir()
    joining = time.perf_counter()
    with ray_session(settings) as ray:
        joined = time.perf_counter()
        nodes, cpus = cluster_figures(ray)
        task = ray.remote(_table_task).options(max_retries=MAX_RETRIES, num_cpus=1)
        run_ref, dataset_ref = ray.put(run), ray.put(dataset)
        names = [t.name for t in dataset.tables]
        refs = [task.remote(run_ref, dataset_ref, name, str(tmp), chunk_rows, fault) for name in names]
        log.info("transforming %d tables on Ray (%d nodes, %d CPUs)", len(names), nodes, cpus)
        started = time.perf_counter()
        entries: dict[str, Any] = {}
        for name, entry in gather(ray, refs, again=f"run `etl transform {run.path}` again"):
            kill_once(fault, "transform-driver")
            entries[name] = entry
            if progress:
                progress("transform", len(entries), len(names))
        figures = {"nodes": nodes, "cpus": cpus, "join_seconds": round(joined - joining, 3),
                   "tasks": len(refs), "task_seconds": round(time.perf_counter() - started, 3)}
        log.info("on Ray (%d nodes, %d CPUs): %d table tasks %.2fs", nodes, cpus, len(refs),
                 figures["task_seconds"])
    return {name: entries[name] for name in names}, figures


def _table_task(run: Run, dataset: Dataset, name: str, tmp_text: str, chunk_rows: int,
                fault: str | None) -> tuple[str, dict[str, Any]]:
    """A Ray task: table ``name`` built and written under ``tmp_text``; (name, manifest entry)."""
    from etl.transform.transformer import build_table, plans

    tmp = Path(tmp_text)
    if not tmp.is_dir():  # the driver is gone and its folder removed: write nothing
        raise FileNotFoundError(f"the transform's folder {tmp} is gone")
    for mine in (tmp / name, tmp / f".extra-{name}"):  # what an attempt killed before this one left
        shutil.rmtree(mine, ignore_errors=True)
    table = next(t for t in dataset.tables if t.name == name)
    plan, chunk_schema = plans(run, dataset)[name]
    entry = build_table(run, dataset, table, plan, chunk_schema, tmp, chunk_rows,
                         written=lambda: kill_once(fault, "table"))
    return name, entry
