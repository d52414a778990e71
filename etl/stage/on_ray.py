"""The stage on a Ray cluster (``engine = "ray"``): the same rows in the same chunks as the local
engine, with the reading, parsing and writing done by tasks.

Two rounds of tasks, both writing under the run's temporary folder in the staging root, which
every node must see: a folder at the same path on each, or a URI (``file://`` of a shared mount,
``s3://``...; :mod:`etl.staging_fs`). The tasks are given the folder as a URI and open it
themselves, through pyarrow's filesystem when it is not local:

1. **Groups.** Each source's files are cut, in order, into groups of about ``group_bytes``. A
   task reads its group exactly as the local engine reads a source (hashing and checking each
   file, one-object files whole, the rest through DuckDB's streaming reader), unpacks the
   levels, and writes them as Arrow IPC pieces under ``.pieces/g<group>/``. It returns what it
   read (the files, with their hashes; the quarantined ones) and its pieces' row counts.
2. **Chunks.** The driver then knows every level's rows in the local engine's order (a source's
   one-object files read whole first, then large one-object files, then streamed files; each in
   file order) and cuts it into chunks of ``chunk_rows`` rows; a task writes each chunk file
   (``raw/<level>/part-NNNNN.parquet``, as named locally) and returns its manifest entry.

The driver merges the manifest as the local engine does, so the run id, every chunk's rows and
the tables' checksums are the local engine's. A task whose worker process dies is run again by
Ray (``max_retries``): a group task starts by clearing its own folder, a chunk task writes to a
temporary name and renames, so a retry leaves nothing doubled; the pieces are removed at the end.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from etl.config import Settings
from etl.dataset import Dataset
from etl.infra.cluster import (
    FAULT_ENV,
    MAX_RETRIES,
    cluster_figures,
    fault_point,
    gather,
    kill_once,
    ray_session,
)
from etl.run import PARQUET_COMPRESSION, level_schema, sha256_file
from etl.stage.dupkeys import EXAMPLES as DUP_EXAMPLES
from etl.stage.dupkeys import last_wins
from etl.stage.extra import ExtraPlan
from etl.stage.inputs import InputFile
from etl.stage.sql import source_plan
from etl.staging_fs import RemotePath, StagePath, as_uri, remove_tree, resolve

log = logging.getLogger(__name__)

__all__ = ["FAULT_ENV", "PIECES", "stage_on_ray"]

#: The pieces group tasks write, inside the run's temporary folder; removed once chunks are written.
PIECES = ".pieces"
#: Fault points (``ETL_FAULT_RAY_KILL``, see :data:`etl.infra.cluster.FAULT_ENV`): ``group``, a
#: group task after writing its first batch; ``chunk``, a chunk task halfway through its chunk;
#: ``driver``, the driver when the first group is done.

Job = tuple[Path, str, str, int]
Progress = Callable[[str, int, int], None]

#: Where a batch's rows go in a source's order: files read whole in the first pass, one-object
#: files too large for it, then streamed files (arrays, NDJSON, gzip): as the local engine reads.
_KEPT, _WHOLE, _STREAMED = 0, 1, 2


@dataclass(slots=True)
class _Group:
    """What one group task read and wrote."""

    source: str
    group: int
    nbytes: int
    inspected: list[InputFile] = field(default_factory=list)
    quarantined: list[dict[str, Any]] = field(default_factory=list)
    #: (part, level) → (piece file, rows), pieces with rows only.
    pieces: dict[tuple[int, str], tuple[str, int]] = field(default_factory=dict)
    #: (file, record) of each record that held a key twice (rewritten: the last value wins).
    dups: list[tuple[str, int]] = field(default_factory=list)


def stage_on_ray(
    dataset: Dataset,
    jobs: Sequence[Job],
    tmp: Path,
    *,
    settings: Settings,
    max_record_bytes: int,
    batch_bytes: int,
    memory: int,
    progress: Progress | None,
    shared: StagePath | None = None,
) -> tuple[list[InputFile], list[dict[str, Any]], dict[str, list[dict[str, Any]]], dict[str, Any],
           dict[str, Any]]:
    """Stage ``jobs`` into ``tmp`` on Ray: (inspected files, quarantined files, chunks per level,
    the figures of the run on Ray: cluster, tasks, seconds per round, the records that held a
    key twice as the manifest's ``duplicate_keys``). ``shared``: the folder the tasks write in
    when it is not ``tmp`` (a remote staging root's; the chunks are left there)."""
    work: StagePath = shared if shared is not None else tmp.resolve()
    work_uri = as_uri(work)
    fault = fault_point()
    joining = time.perf_counter()
    with ray_session(settings) as ray:
        joined = time.perf_counter()
        nodes, cpus = cluster_figures(ray)
        # Each group task has the memory limit to itself, shared as a local stage of one worker
        # shares it (a quarter for the reader); Ray places the tasks by it (its `memory` resource).
        options = {"reader_memory": f"{max(96 << 20, memory // 4) >> 20}MB",
                   "worker_memory": f"{max(64 << 20, memory * 3 // 4) >> 20}MB",
                   "batch_bytes": batch_bytes, "max_record_bytes": max_record_bytes}
        group_task = ray.remote(_stage_group).options(max_retries=MAX_RETRIES, num_cpus=1, memory=memory)
        chunk_task = ray.remote(_write_chunk).options(max_retries=MAX_RETRIES, num_cpus=1)
        dataset_ref = ray.put(dataset)
        total = sum(j[3] for j in jobs)
        pending = []
        group_no = 0
        for src in dataset.sources:
            src_jobs = [(p.resolve(), rel, s, size) for p, rel, s, size in jobs if s == src.name]
            for group in _groups(src_jobs, _group_bytes(src_jobs, batch_bytes, cpus)):
                pending.append(group_task.remote(dataset_ref, src.name, group, work_uri, group_no,
                                                 options, fault))
                group_no += 1
        log.info("staging %d files in %d groups on Ray (%d CPUs)", len(jobs), group_no, cpus)
        started = time.perf_counter()
        done_bytes = 0
        groups: list[_Group] = []
        for result in gather(ray, pending, again="stage again"):
            kill_once(fault, "driver")
            groups.append(result)
            done_bytes += result.nbytes
            if progress:
                progress("stage", done_bytes, total)
        groups.sort(key=lambda g: g.group)
        originals = {p.resolve(): p for p, *_ in jobs}
        inspected = [replace(f, path=originals.get(f.path, f.path)) for g in groups for f in g.inspected]
        quarantined = [{**q, "path": str(originals.get(Path(q["path"]), q["path"]))}
                       for g in groups for q in g.quarantined]
        read = time.perf_counter()
        plans = _chunk_plans(dataset, groups, settings.chunk_rows)
        schemas = {name: level_schema(lvl, dataset.levels).to_arrow() for name, lvl in dataset.levels.items()}
        chunk_refs = {level: [chunk_task.remote(work_uri, level, k, slices, settings.chunk_rows,
                                                schemas[level], fault)
                              for k, slices in enumerate(chunks)]
                      for level, chunks in plans.items()}
        flat = [ref for refs in chunk_refs.values() for ref in refs]
        written = dict(zip(flat, gather(ray, flat, again="stage again", ordered=True), strict=True))
        figures = {"nodes": nodes, "cpus": cpus, "join_seconds": round(joined - joining, 3),
                   "groups": group_no, "group_seconds": round(read - started, 3),
                   "chunks": len(flat), "chunk_seconds": round(time.perf_counter() - read, 3)}
        log.info("on Ray (%d nodes, %d CPUs): %d group tasks %.2fs, %d chunk tasks %.2fs", nodes, cpus,
                 group_no, figures["group_seconds"], len(flat), figures["chunk_seconds"])
    remove_tree(work / PIECES)
    chunks = {level: [written[ref] for ref in chunk_refs.get(level, [])] for level in dataset.levels}
    dups = [(g.source, f, r) for g in groups for f, r in g.dups]
    duplicated = {"records": len(dups), "examples": [{"source": src, "file": f, "record": r}
                                                     for src, f, r in dups[:DUP_EXAMPLES]]}
    return inspected, quarantined, chunks, figures, duplicated


def _group_bytes(jobs: Sequence[Job], batch_bytes: int, cpus: int) -> int:
    """Groups of at least a batch, and enough of them to keep every CPU busy (about four each)."""
    total = sum(j[3] for j in jobs)
    return max(batch_bytes, -(-total // (4 * cpus)))


def _groups(jobs: Sequence[Job], group_bytes: int) -> list[list[Job]]:
    """``jobs`` cut in order into groups of about ``group_bytes`` (a file is never split)."""
    out: list[list[Job]] = []
    current: list[Job] = []
    size = 0
    for job in jobs:
        current.append(job)
        size += job[3]
        if size >= group_bytes:
            out.append(current)
            current, size = [], 0
    if current:
        out.append(current)
    return out


def _chunk_plans(dataset: Dataset, groups: Sequence[_Group],
                 chunk_rows: int) -> dict[str, list[list[tuple[str, int, int]]]]:
    """Per level, its chunks as (piece, first row, rows) slices: the level's rows in the local
    engine's order (source by source; within one, by part, then group), ``chunk_rows`` a chunk."""
    chunk_rows = max(1, chunk_rows)
    plans: dict[str, list[list[tuple[str, int, int]]]] = {}
    for level in dataset.levels:
        pieces = sorted(((dataset.sources.index(next(s for s in dataset.sources if s.name == g.source)),
                          part, g.group, path, rows)
                         for g in groups for (part, name), (path, rows) in g.pieces.items()
                         if name == level), key=lambda p: p[:3])
        chunks: list[list[tuple[str, int, int]]] = []
        current: list[tuple[str, int, int]] = []
        room = chunk_rows
        for *_, path, rows in pieces:
            start = 0
            while start < rows:
                take = min(room, rows - start)
                current.append((path, start, take))
                start += take
                room -= take
                if room == 0:
                    chunks.append(current)
                    current, room = [], chunk_rows
        if current:
            chunks.append(current)
        if chunks:
            plans[level] = chunks
    return plans


# ------------------------------------------------------------------------------ the tasks


def _stage_group(dataset: Dataset, source_name: str, jobs: list[Job], tmp_text: str, group: int,
                 options: Mapping[str, Any], fault: str | None) -> _Group:
    """A Ray task: read one group of a source's files and write its levels as pieces."""
    from etl.stage.stager import LazyReader, _LevelWorker, _source_batches

    tmp = resolve(tmp_text)
    # DuckDB spills to a local folder: the run's own when it is local, else a temporary one.
    spill = tmp if isinstance(tmp, Path) else Path(tempfile.mkdtemp(prefix="etl-ray-"))
    src = next(s for s in dataset.sources if s.name == source_name)
    out = tmp / PIECES / f"g{group:05d}"
    remove_tree(out)  # what an attempt killed before this one left
    # Never the run's folder itself: a task outliving a killed driver must not bring back the
    # temporary folder the next stage removed (it fails here instead).
    (tmp / PIECES).mkdir(exist_ok=True)
    out.mkdir()
    result = _Group(source_name, group, sum(j[3] for j in jobs))
    schemas = {lvl.name: level_schema(lvl, dataset.levels).to_arrow() for lvl in src.levels}
    writers: dict[tuple[int, str], pa.RecordBatchFileWriter] = {}
    sinks: list[Any] = []  # the remote pieces' output streams, closed after their writers
    rows: dict[tuple[int, str], int] = {}
    batch_bytes = int(options["batch_bytes"])
    max_record_bytes = int(options["max_record_bytes"])
    keep = min(batch_bytes, max_record_bytes)
    reader = LazyReader({
        "memory_limit": options["reader_memory"], "threads": 1, "preserve_insertion_order": True,
        "temp_directory": str(spill / f".duckdb_tmp_g{group}_reader")})
    worker = _LevelWorker(src, source_plan(src.levels),
                          ExtraPlan(src.levels, {t.name: t for t in dataset.tables}),
                          memory=options["worker_memory"], temp=spill / f".duckdb_tmp_g{group}",
                          files=result.inspected)
    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="etl-scan") as scan_pool:
            batches = _source_batches(
                reader, jobs, scan_pool, batch_bytes=batch_bytes, max_record_bytes=max_record_bytes,
                inspected=result.inspected,
                quarantine=result.quarantined if src.on_bad_file == "quarantine" else None)
            shapes: dict[str, InputFile] = {}
            for n, (records, _) in enumerate(batches):
                shapes.update((f.relpath, f) for f in result.inspected)
                part = _part(shapes[records.column("_file")[0].as_py()], keep) if records.num_rows else 0
                records, dups = last_wins(records)  # a key held twice: the last value, as locally
                result.dups += dups
                for name, table in worker.run(records).items():
                    if not table.num_rows:
                        continue
                    key = (part, name)
                    if key not in writers:
                        path = out / f"{part}-{name}.arrow"
                        sink = path.open_output() if isinstance(path, RemotePath) else str(path)
                        writers[key] = pa.ipc.new_file(sink, schemas[name])
                        if not isinstance(sink, str):
                            sinks.append(sink)
                        result.pieces[key] = (str(path), 0)
                        rows[key] = 0
                    if table.schema != schemas[name]:
                        table = table.cast(schemas[name])
                    writers[key].write_table(table)
                    rows[key] += table.num_rows
                if n == 0:
                    kill_once(fault, "group")
    finally:
        for w in writers.values():
            w.close()
        for sink in sinks:
            sink.close()
        worker.close()
        reader.close()
        if spill is tmp:
            for leftover in spill.glob(f".duckdb_tmp_g{group}*"):
                shutil.rmtree(leftover, ignore_errors=True)
        else:
            shutil.rmtree(spill, ignore_errors=True)
    result.pieces = {key: (path, rows[key]) for key, (path, _) in result.pieces.items()}
    return result


def _part(info: InputFile, keep: int) -> int:
    """Which pass of the local engine reads ``info`` (see :func:`etl.stage.stager._source_batches`)."""
    if info.shape != "object":
        return _STREAMED
    return _KEPT if info.size <= keep else _WHOLE


def _write_chunk(tmp_text: str, level: str, index: int, slices: list[tuple[str, int, int]],
                 chunk_rows: int, schema: pa.Schema, fault: str | None) -> dict[str, Any]:
    """A Ray task: write one chunk of a level from its slices of pieces; its manifest entry."""
    tmp = resolve(tmp_text)
    folder = tmp / "raw" / level
    (tmp / "raw").mkdir(exist_ok=True)  # not the run's folder (see _stage_group)
    folder.mkdir(exist_ok=True)
    final = folder / f"part-{index:05d}.parquet"
    partial = folder / f".part-{index:05d}.parquet.tmp"
    rows = 0
    with pq.ParquetWriter(partial.path if isinstance(partial, RemotePath) else partial, schema,
                          filesystem=partial.fs if isinstance(partial, RemotePath) else None,
                          compression=PARQUET_COMPRESSION, write_statistics=True) as writer:
        for n, (piece, start, length) in enumerate(slices):
            place = resolve(piece)
            opened = place.open_input() if isinstance(place, RemotePath) else pa.memory_map(str(place))
            with opened as source:
                table = pa.ipc.open_file(source).read_all().slice(start, length)
                writer.write_table(table, row_group_size=chunk_rows)
            rows += length
            if n == len(slices) // 2:
                kill_once(fault, "chunk")
    if isinstance(tmp, RemotePath):  # a rename where the filesystem has one, else copy and delete
        assert isinstance(partial, RemotePath) and isinstance(final, RemotePath)
        tmp.fs.move(partial.path, final.path)
        rel = final.relative_to(tmp).as_posix()
    else:
        assert isinstance(partial, Path) and isinstance(final, Path)
        os.replace(partial, final)
        rel = final.relative_to(tmp).as_posix()
    return {"path": rel, "rows": rows,
            "bytes": final.stat().st_size, "sha256": sha256_file(final)}
