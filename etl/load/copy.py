"""The copy phase: the build schema created, then each table's staged rows sent by ADBC's binary
COPY, tables concurrently, each in one transaction with its ledger step.

Every COPY runs in a forked worker process (see :meth:`etl.load.state.Load.in_worker`), one per
thread: a driver crash there is retried like a lost connection. A refused COPY is a permanent
error that names the source record (:func:`etl.load.diagnostics.copy_error`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import orjson
import pyarrow as pa

from etl.dataset import Table
from etl.errors import ConfigError
from etl.infra import pg
from etl.infra.pg import quote_ident
from etl.infra.schema import create_tables_sql
from etl.load import plan
from etl.load._utils import lit
from etl.load.diagnostics import copy_error
from etl.load.tables import table_reader
from etl.run import Run
from etl.staging_fs import RemotePath

if TYPE_CHECKING:
    from etl.load.state import Load


def copy_all(load: Load, order: list[str]) -> None:
    """The ``load`` phase: step ``create``, then a ``copy:<table>`` step per table, in ``order``
    (with the ray engine, as tasks on a Ray cluster: :mod:`etl.load.on_ray`)."""
    if load.engine == "ray":
        from etl.load.on_ray import copy_on_ray

        if isinstance(load.run.path, RemotePath):
            raise ConfigError(f"--engine ray loads a run on a path every node sees; {load.run.path} "
                              "is on an object store", hint="load it with --engine local (the "
                              "driver streams its chunks from the store)")

        plan.step(load, "create", lambda conn: _create(load, conn))
        copy_on_ray(load, order)
        return
    with load.pool("etl-load") as pool:
        # Each thread forks its worker process, which opens its ADBC connection while
        # the build schema is created (the barrier puts one worker on each thread).
        barrier = threading.Barrier(load.workers)

        def warm() -> None:
            barrier.wait()
            load.in_worker(_connect)

        warming = [pool.submit(warm) for _ in range(load.workers)]
        plan.step(load, "create", lambda conn: _create(load, conn))
        for fut in warming:
            fut.result()
        started = time.perf_counter()
        list(pool.map(lambda name: _copy_table(load, name), order))
        # The COPY statements alone (what the benchmark's server-side ceiling measures),
        # apart from creating the build schema and opening the connections.
        load.phase_extra["copy_seconds"] = round(time.perf_counter() - started, 4)
    load.close_workers()
    load.phase_extra["worker_peak_rss"] = load.worker_peak_rss


def _create(load: Load, conn: Any) -> None:
    conn.execute(f"DROP SCHEMA IF EXISTS {quote_ident(load.build)} CASCADE")
    conn.execute(f"CREATE SCHEMA {quote_ident(load.build)}")
    for stmt in create_tables_sql(load.dataset, load.build, unlogged=load.mode == "unsafe-fast"):
        conn.execute(stmt)


def _connect(load: Load) -> None:
    """In a worker: open the ADBC connection ahead of the first call."""
    load.adbc()


def _copy_table(load: Load, name: str) -> None:
    step = f"copy:{name}"
    if step in load.steps:
        return
    rows = load.retry(f"copy of {name}", lambda: load.in_worker(_copy_once, name))
    load.steps[step] = {"rows": rows}


def chunk_step(name: str, index: int) -> str:
    """The ledger step of one chunk of table ``name`` copied on its own (the ray engine's COPY
    tasks, :mod:`etl.load.on_ray`): ``copy:<table>#<chunk>``."""
    return f"copy:{name}#{index:05d}"


def step_sql(ledger_id: int, step: str, detail: dict[str, Any], *, returning: bool = False) -> str:
    """The ledger row of ``step`` (done), inserted in the transaction of its work; ``returning``:
    the statement returns a row only when it inserted one (none when the step is already there)."""
    return (f"INSERT INTO etl.load_steps (run, step, detail) VALUES ({ledger_id}, {lit(step)}, "
            f"{lit(orjson.dumps(detail).decode())}::jsonb) ON CONFLICT DO NOTHING"
            + (" RETURNING 1" if returning else ""))


def forget_chunk_steps_sql(ledger_id: int, name: str) -> str:
    """Deletes the chunk steps of table ``name`` (see :func:`chunk_step`): its ``copy:<table>``
    step, committed in the same transaction, stands for them all."""
    prefix = f"copy:{name}#"
    return (f"DELETE FROM etl.load_steps WHERE run = {ledger_id} "
            f"AND left(step, {len(prefix)}) = {lit(prefix)}")


def send_rows(cur: Any, run: Run, table: Table, entry: dict[str, Any], *, build: str,
              tag: tuple[str, str] | None, schema: pa.Schema,
              through: Callable[[pa.RecordBatchReader], pa.RecordBatchReader] | None = None) -> int:
    """One binary COPY (``adbc_ingest``, appending) of ``entry``'s chunks of ``table`` into the
    build schema ``build`` on the ADBC cursor ``cur``, in its transaction (not committed); the
    rows sent. ``through`` wraps the stream (progress, a fault point). A refused row is a
    permanent error naming its source record (:func:`etl.load.diagnostics.copy_error`)."""
    reader, expected = table_reader(run, table, entry, for_copy=True, tag=tag, schema=schema)
    try:
        cur.adbc_ingest(table.name, through(reader) if through else reader, mode="append",
                        db_schema_name=build)
    except Exception as exc:
        if pg.is_transient(exc):
            raise
        raise copy_error(exc, run, table.name, entry) from exc
    return expected


def _copy_once(load: Load, name: str) -> int:
    """In a worker: one try at table ``name``'s COPY, committed with its ledger step."""
    step = f"copy:{name}"
    conn = load.adbc()
    try:
        cur = conn.cursor()
        target = f"{quote_ident(load.build)}.{quote_ident(name)}"
        # TRUNCATE in the same transaction as the COPY: nothing to undo on a retry, and
        # with wal_level=minimal PostgreSQL can skip writing the rows to WAL.
        cur.execute(f"TRUNCATE {target}")
        load.faults.drop(step, conn)
        load.faults.pause(step)
        expected = send_rows(cur, load.run, load.tables[name], load.entries[name], build=load.build,
                             tag=load.tag_of(name), schema=load.arrow_schemas[name],
                             through=lambda reader: _counted(load, reader))
        cur.execute(step_sql(load.ledger_id, step, {"rows": expected}))
        # Chunks an interrupted load on Ray copied one by one: this whole copy replaces them.
        cur.execute(forget_chunk_steps_sql(load.ledger_id, name))
        load.faults.kill(step)
        conn.commit()
        cur.close()
    except BaseException:
        load.drop_adbc()
        raise
    return expected


def _counted(load: Load, reader: pa.RecordBatchReader) -> pa.RecordBatchReader:
    """``reader``, reporting each batch's rows as it goes out (when progress is wanted)."""
    report = load.on_rows
    if report is None:
        return reader

    def batches() -> Iterator[pa.RecordBatch]:
        for batch in reader:
            report(batch.num_rows)
            yield batch

    return pa.RecordBatchReader.from_batches(reader.schema, batches())
