"""The load's COPY on a Ray cluster (``engine = "ray"``): one task per staged chunk.

The driver (the loading process) creates the build schema ``<dataset>__b<id>`` as the local
engine does (step ``create``), then sends a task for every chunk of every table not copied yet.
Each task opens its own ADBC connection (holding the dataset's build lock shared, as every
connection doing a load's work does, so an interrupted load can end its sessions and no other
load drops the schema under it), and copies its chunk in one transaction that also inserts the
chunk's ledger step ``copy:<table>#<chunk>`` (:func:`etl.load.copy.chunk_step`):

* The step is inserted **first**: its primary key (run, step) is the chunk's lock. An attempt
  that finds the step there (committed by an earlier attempt whose worker died after the
  commit) copies nothing; one that meets another attempt's uncommitted step waits for it to end
  (a killed worker's transaction is rolled back when the server finds its client gone), then
  sees whether it committed. So a chunk's rows are in the build table exactly once, whatever
  Ray retries and whenever a worker dies.
* A table of one chunk is truncated first in the same transaction, as the local engine does
  (with ``wal_level=minimal`` its rows then skip the WAL); chunks of a larger table are
  appended, each in its own transaction (the build tables are created by then, in ``create``).
* The rows go through the local engine's own COPY (:func:`etl.load.copy.send_rows`: the same
  stream from the Parquet chunk, the same jsonb wire form, the same error naming the source
  record for a refused row).

When every chunk of a table is in, the driver records the table's ``copy:<table>`` step (the
chunk steps' rows must add up to the staged rows) and deletes its chunk steps, in one
transaction. Keys, indexes, views, verify, reconcile and the swap then run on the driver as
for the local engine: the ledger, resume and atomic swap are the same. A driver killed mid-COPY
leaves committed chunks and their steps; the next load of the run resumes and copies the rest.

A task whose worker process dies is run again by Ray (:data:`etl.infra.cluster.MAX_RETRIES`);
a lost connection is retried inside the task with backoff (:func:`etl.infra.pg.retry`); a
refused row is raised as itself and stops the load.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from etl.dataset import Table
from etl.errors import EtlError
from etl.infra import pg
from etl.infra.cluster import MAX_RETRIES, cluster_figures, fault_point, gather, kill_once, ray_session
from etl.infra.pg import quote_ident
from etl.load import plan
from etl.load.copy import chunk_step, forget_chunk_steps_sql, send_rows, step_sql
from etl.load.diagnostics import copy_error
from etl.run import Manifest, Run, open_run

if TYPE_CHECKING:
    from etl.load.state import Load

log = logging.getLogger(__name__)

#: Fault points (``ETL_FAULT_RAY_KILL``, see :data:`etl.infra.cluster.FAULT_ENV`): ``copy``, a
#: COPY task once every row of its chunk has gone out, before the COPY ends (mid-COPY: the
#: server rolls it back), ``copy/<table>`` the same in a chunk of that table; ``copied``, a
#: COPY task just after its commit (the retry must find the chunk done); ``copy-driver``, the
#: driver when the first COPY task has finished.
POINTS = ("copy", "copy/<table>", "copied", "copy-driver")


@dataclass(frozen=True, slots=True)
class CopyJob:
    """What a COPY task needs (picklable: a :class:`~etl.load.state.Load` owns threads,
    processes and connections, so it stays on the driver)."""

    #: The run, its manifest cut to what a COPY reads (its id, dataset, this table's entry): the
    #: whole manifest lists every source file, and each task would unpickle it.
    run: Run
    url: str
    session: tuple[str, ...]
    build: str
    ledger_id: int
    table: Table
    schema: pa.Schema
    tag: tuple[str, str] | None
    retries: int
    retry_delay: float
    next_step: str
    #: The table's chunks: a table of one chunk is truncated in its COPY's transaction.
    chunks: int


def copy_on_ray(load: Load, order: list[str]) -> None:
    """The COPY of the tables in ``order`` (largest first) as tasks, a task per chunk, each
    table's ``copy:<table>`` step recorded by the driver when its chunks are in."""
    fault = fault_point()
    todo = {name: [k for k in range(len(load.entries[name].get("chunks", [])))
                   if chunk_step(name, k) not in load.steps]
            for name in order if f"copy:{name}" not in load.steps}
    joining = time.perf_counter()
    with ray_session(load.settings) as ray:
        joined = time.perf_counter()
        nodes, cpus = cluster_figures(ray)
        load.check_lock()
        task = ray.remote(_copy_chunk_task).options(max_retries=MAX_RETRIES, num_cpus=1)
        refs: dict[Any, tuple[str, int]] = {}
        for name, chunks in todo.items():
            job = CopyJob(_slim_run(load.run, name), load.url, (*load.session_sql(), load.working_sql()),
                          load.build, load.ledger_id, load.tables[name], load.arrow_schemas[name],
                          load.tag_of(name), load.retries, load.retry_delay,
                          f"check the database, then run `etl load {load.run.path}` again: finished "
                          "steps are kept and the load resumes",
                          len(load.entries[name].get("chunks", [])))
            job_ref = ray.put(job)
            for k in chunks:
                refs[task.remote(job_ref, k, fault)] = (name, k)
        log.info("copying %d chunk(s) of %d table(s) on Ray (%d nodes, %d CPUs)", len(refs), len(todo),
                 nodes, cpus)
        left = {name: len(chunks) for name, chunks in todo.items()}
        for name in [n for n, c in left.items() if c == 0]:  # a table with no rows, or all resumed
            _table_done(load, name)
        started = time.perf_counter()
        copied = skipped = 0
        spent = {"connect": 0.0, "copy": 0.0}
        for name, k, rows, did, seconds in gather(ray, list(refs),
                                                  again=f"run `etl load {load.run.path}` again"):
            kill_once(fault, "copy-driver")
            for part, value in seconds.items():
                spent[part] += value
            load.steps[chunk_step(name, k)] = {"rows": rows}
            copied += did
            skipped += not did
            if load.on_rows is not None:
                load.add_rows(rows)
            left[name] -= 1
            if left[name] == 0:
                _table_done(load, name)
        load.check_stopping()
        load.phase_extra["copy_seconds"] = round(time.perf_counter() - started, 4)
        load.phase_extra["ray"] = {"nodes": nodes, "cpus": cpus, "join_seconds": round(joined - joining, 3),
                                   "tasks": len(refs), "chunks_copied": copied,
                                   "chunks_found_done": skipped,
                                   # Summed over the tasks: opening their connections, their COPYs.
                                   "task_connect_seconds": round(spent["connect"], 3),
                                   "task_copy_seconds": round(spent["copy"], 3)}
        log.info("on Ray (%d nodes, %d CPUs): %d COPY tasks %.2fs", nodes, cpus, len(refs),
                 load.phase_extra["copy_seconds"])


def _table_done(load: Load, name: str) -> None:
    """Record table ``name``'s ``copy:<table>`` step once its chunks are in: their steps must
    add up to its staged rows; they are deleted in the same transaction."""
    expected = int(load.entries[name]["rows"])
    chunks = len(load.entries[name].get("chunks", []))

    def record(conn: Any) -> dict[str, Any]:
        prefix = f"copy:{name}#"
        row = conn.execute("SELECT count(*), coalesce(sum((detail->>'rows')::bigint), 0) "
                           "FROM etl.load_steps WHERE run = %s AND left(step, %s) = %s",
                           (load.ledger_id, len(prefix), prefix)).fetchone()
        if (int(row[0]), int(row[1])) != (chunks, expected):
            raise EtlError(f"the COPY of table {name} on Ray recorded {row[0]} of {chunks} chunk(s), "
                           f"{row[1]:,} of {expected:,} rows", dataset=load.live, run=load.run.id,
                           hint=f"run `etl load {load.run.path}` again: the missing chunks are copied")
        conn.execute(forget_chunk_steps_sql(load.ledger_id, name))
        return {"rows": expected, "chunks": chunks, "engine": "ray"}

    plan.step(load, f"copy:{name}", record)
    for k in range(chunks):
        load.steps.pop(chunk_step(name, k), None)


# ------------------------------------------------------------------------------ the task


def _slim_run(run: Run, name: str) -> Run:
    """``run`` with only what a COPY of table ``name`` reads in its manifest."""
    keep = {k: run.manifest[k] for k in ("run_id", "dataset", "dataset_version") if k in run.manifest}
    return Run(run.path, Manifest({**keep, "tables": {name: run.manifest["tables"][name]}}))


def _copy_chunk_task(job: CopyJob, index: int, fault: str | None
                     ) -> tuple[str, int, int, bool, dict[str, float]]:
    """A Ray task: chunk ``index`` of ``job.table`` copied into the build schema, with its ledger
    step, in one transaction; (table, chunk, rows, whether this attempt copied it, the seconds
    it spent opening its connection and copying)."""
    name, run = job.table.name, job.run
    entry = _chunk_entry(run.manifest["tables"][name], index)
    conn: Any = None
    seconds = {"connect": 0.0, "copy": 0.0}

    def attempt() -> tuple[int, bool]:
        nonlocal conn
        if conn is None:
            start = time.perf_counter()
            conn = pg.connect_adbc(job.url)
            cur = conn.cursor()
            for stmt in job.session:
                cur.execute(stmt)
            cur.close()
            conn.commit()
            seconds["connect"] += time.perf_counter() - start
        start = time.perf_counter()
        try:
            return _copy_chunk(conn, job, run, entry, index, fault)
        except BaseException:
            try:
                conn.close()
            except Exception:  # already broken; closing is best effort
                log.debug("closing a broken connection failed", exc_info=True)
            conn = None
            raise
        finally:
            seconds["copy"] += time.perf_counter() - start

    try:
        rows, did = pg.retry(attempt, what=f"copy of {name} chunk {index}", attempts=job.retries,
                             first_delay=job.retry_delay, next_step=job.next_step)
    finally:
        if conn is not None:
            conn.close()
    kill_once(fault, "copied")
    return name, index, rows, did, seconds


def _copy_chunk(conn: Any, job: CopyJob, run: Run, entry: dict[str, Any], index: int,
                fault: str | None) -> tuple[int, bool]:
    rows = int(entry["rows"])
    cur = conn.cursor()
    try:
        # The step first: its key is the chunk's lock (see the module's docstring).
        cur.execute(step_sql(job.ledger_id, chunk_step(job.table.name, index), {"rows": rows},
                             returning=True))
        if cur.fetchone() is None:
            conn.rollback()
            log.info("chunk %d of %s is already copied", index, job.table.name)
            return rows, False
        if job.chunks == 1:
            # The table's only writer (its step holds the lock): TRUNCATE in the COPY's transaction,
            # as the local engine does, so that with wal_level=minimal the rows skip the WAL.
            cur.execute(f"TRUNCATE {quote_ident(job.build)}.{quote_ident(job.table.name)}")
        try:
            sent = send_rows(cur, run, job.table, entry, build=job.build, tag=job.tag, schema=job.schema,
                             through=lambda reader: _fault_after_rows(reader, fault, job.table.name))
        except EtlError as exc:
            if exc.__cause__ is None or "sources" in run.manifest:
                raise
            # A refused row: its error names the source file by the path the run's manifest
            # lists, which the task's cut manifest leaves out; read the whole one, this once.
            raise copy_error(exc.__cause__, open_run(run.path), job.table.name, entry) from exc.__cause__
        conn.commit()
    finally:
        cur.close()
    return sent, True


def _chunk_entry(entry: dict[str, Any], index: int) -> dict[str, Any]:
    """Table ``entry`` narrowed to its chunk ``index`` (and the lineage chunk beside it, which
    holds the same rows when the table has lineage)."""
    chunk = entry["chunks"][index]
    lineage = entry.get("lineage_chunks") or []
    return {**entry, "rows": int(chunk["rows"]), "chunks": [chunk],
            "lineage_chunks": [lineage[index]] if len(lineage) == len(entry["chunks"]) else []}


def _fault_after_rows(reader: pa.RecordBatchReader, fault: str | None, name: str) -> pa.RecordBatchReader:
    """``reader``, with the ``copy`` and ``copy/<table>`` fault points once its last batch has
    gone out."""
    if not fault:
        return reader

    def batches() -> Iterator[pa.RecordBatch]:
        yield from reader
        kill_once(fault, "copy")  # every row sent; the COPY has not ended
        kill_once(fault, f"copy/{name}")

    return pa.RecordBatchReader.from_batches(reader.schema, batches())
