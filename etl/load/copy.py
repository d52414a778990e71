"""The copy phase: the build schema created, then each table's staged rows sent by ADBC's binary
COPY, tables concurrently, each in one transaction with its ledger step.

Every COPY runs in a forked worker process (see :meth:`etl.load.state.Load.in_worker`), one per
thread: a driver crash there is retried like a lost connection. A refused COPY is a permanent
error that names the source record (:func:`etl.load.diagnostics.copy_error`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import orjson
import pyarrow as pa

from etl.infra import pg
from etl.infra.pg import quote_ident
from etl.infra.schema import create_tables_sql
from etl.load import plan
from etl.load._utils import lit
from etl.load.diagnostics import copy_error
from etl.load.tables import table_reader

if TYPE_CHECKING:
    from etl.load.state import Load


def copy_all(load: Load, order: list[str]) -> None:
    """The ``load`` phase: step ``create``, then a ``copy:<table>`` step per table, in ``order``."""
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


def _copy_once(load: Load, name: str) -> int:
    """In a worker: one try at table ``name``'s COPY, committed with its ledger step."""
    step = f"copy:{name}"
    table = load.tables[name]
    reader, expected = table_reader(load.run, table, load.entries[name], for_copy=True,
                                    tag=load.tag_of(name), schema=load.arrow_schemas[name])
    conn = load.adbc()
    try:
        cur = conn.cursor()
        target = f"{quote_ident(load.build)}.{quote_ident(name)}"
        # TRUNCATE in the same transaction as the COPY: nothing to undo on a retry, and
        # with wal_level=minimal PostgreSQL can skip writing the rows to WAL.
        cur.execute(f"TRUNCATE {target}")
        load.faults.drop(step, conn)
        load.faults.pause(step)
        try:
            cur.adbc_ingest(name, _counted(load, reader), mode="append", db_schema_name=load.build)
        except Exception as exc:
            if pg.is_transient(exc):
                raise
            raise copy_error(exc, load.run, name, load.entries[name]) from exc
        detail = orjson.dumps({"rows": expected}).decode()
        cur.execute(f"INSERT INTO etl.load_steps (run, step, detail) VALUES "
                    f"({load.ledger_id}, {lit(step)}, {lit(detail)}::jsonb) "
                    "ON CONFLICT DO NOTHING")
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
