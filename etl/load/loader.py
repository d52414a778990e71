"""Load: a transformed run's tables → PostgreSQL, atomically, resumably, verified.

A full load never touches the live schema (named after the dataset) until the very end:

1. ``create``: a build schema ``<dataset>__b<ledger id>`` beside it, with bare tables.
2. ``copy:<table>``: each table streamed from its Parquet chunks through ADBC's binary COPY
   (``adbc_ingest``), tables concurrently, each in one transaction with its ledger step. Every
   ADBC call runs in a forked worker process (:mod:`etl.load.forked`), one per thread: a driver
   crash there is retried like a lost connection.
3. ``keys:<table>``, ``fkeys``, ``validate:<fk>``: primary and unique keys, ANALYZE and each
   table read back for its checksum (tables concurrently), then foreign keys added NOT VALID
   and validated (tables concurrently).
4. ``sql``: the dataset's SQL under ``sql/<dataset>/`` (secondary indexes, materialized views).
5. ``verify``: every table's row count and content checksum (read back in step 3) must equal
   the staged ones.
6. ``swap``: one short transaction renames the live schema away and the build schema into its
   place, and marks the run succeeded in the ledger. The old schema is dropped afterwards.

Each step commits together with its row in ``etl.load_steps``, so a killed load resumes where it
stopped: running the same command again skips the finished steps and redoes the rest. Readers
see the old data until the swap commits and the new data after it, never a mix.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson
import polars as pl
import psycopg
import pyarrow as pa

from etl.config import load_settings
from etl.dataset import Dataset, Table
from etl.errors import ConfigError, EtlError, RunStateError
from etl.infra import cache, ledger, pg
from etl.infra.pg import DatabaseError, quote_ident
from etl.infra.schema import constraints_sql, create_tables_sql, fkey_name
from etl.load import forked
from etl.load._utils import compared as _compared
from etl.load._utils import lit as _lit
from etl.load._utils import schema_exists as _schema_exists
from etl.load._utils import sql_files
from etl.load.diagnostics import copy_error as _copy_error
from etl.load.errors import VerificationFailed
from etl.load.faults import Faults
from etl.load.tables import frames as _frames
from etl.load.tables import table_reader as _table_reader
from etl.metrics import Phase, peak_rss_bytes, timed
from etl.run import Run, frames_checksum

log = logging.getLogger(__name__)

Mode = Literal["full", "unsafe-fast", "rebuild", "merge"]
Progress = Callable[[str, int, int], None]


#: The share of source files the verify step reconciles (see :func:`load`).
RECONCILE_SAMPLE = 1 / 32
#: The key of the verify step's reconciliation in its ledger detail.
RECONCILED = "_reconciled"


@dataclass
class LoadResult:
    run: Run
    url: str
    ledger_id: int | None
    schema: str
    mode: Mode
    rows: dict[str, int] = field(default_factory=dict)
    checksums: dict[str, str] = field(default_factory=dict)
    phases: list[Phase] = field(default_factory=list)
    resumed_from: list[str] = field(default_factory=list)
    skipped: bool = False
    #: Merge mode: per table, rows ``inserted``, ``updated``, ``unchanged`` (and ``deleted``).
    merged: dict[str, dict[str, int]] = field(default_factory=dict)
    tag: str | None = None
    #: The verify step's reconciliation of a sample of the source files (see :mod:`etl.load.reconcile`).
    reconciled: dict[str, Any] | None = None

    @property
    def changed(self) -> bool:
        """Merge mode: whether anything was inserted, updated or deleted."""
        return any(c.get("inserted", 0) or c.get("updated", 0) or c.get("deleted", 0)
                   for c in self.merged.values())


# ------------------------------------------------------------------------------ helpers


def manifest_digest(run: Run, tag: str | None = None) -> str:
    """What identifies the loaded content: the run id and its tables' entries (rows, chunk
    hashes, checksums), not the manifest's timings; and the import tag, when one is given."""
    data: dict[str, Any] = {"run_id": run.id, "tables": run.manifest.get("tables")}
    if tag is not None:
        data["tag"] = tag
    return hashlib.sha256(orjson.dumps(data, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _query_batches(conn: Any, query: str) -> Iterator[pa.RecordBatch]:
    """``query``'s rows through an ADBC connection, as Arrow batches."""
    cur = conn.cursor()
    cur.execute(query)
    yield from cur.fetch_record_batch()
    cur.close()


class _ReadBack:
    """What a forked worker of :func:`table_checksums` serves: queries read through ADBC."""

    def __init__(self, url: str) -> None:
        self.url = url

    def rows(self, query: str) -> Iterator[pa.RecordBatch]:
        conn = pg.connect_adbc(self.url, autocommit=True)
        try:
            yield from _query_batches(conn, query)
        finally:
            conn.close()


# ------------------------------------------------------------------------------ the load


class _Loader:
    """One load of one run: owns the lock connection and the ledger row."""

    def __init__(self, run: Run, url: str, *, mode: Mode, workers: int, retries: int,
                 retry_delay: float, progress: Progress | None, tag: str | None = None,
                 reconcile_sample: float = 0.0) -> None:
        self.run = run
        self.reconcile_sample = reconcile_sample
        self.dataset = run.dataset()
        self.url = url
        self.mode = mode
        self.workers = max(1, workers)
        self.retries = retries
        self.retry_delay = retry_delay
        self.progress = progress
        self.live = self.dataset.name
        self.tables = {t.name: t for t in self.dataset.tables}
        self.entries: dict[str, Any] = run.manifest["tables"]
        self.steps: dict[str, Any] = {}
        self.ledger_id = 0
        self.build = ""
        self.phases: list[Phase] = []
        self._progress_lock = threading.Lock()
        self._copied_rows = 0
        self._local = threading.local()
        self._adbc_conns: list[Any] = []  # in a worker process: its ADBC connections
        # The worker processes that run every ADBC call (see etl.load.forked), one per thread.
        self._workers: list[forked.Worker] = []
        self._worker_peak_rss = 0
        #: Rows copied so far, reported (in the worker) as each batch goes out.
        self._on_rows: Callable[[int], None] | None = self._add_rows if progress else None
        pg.preload_adbc()  # before any worker is forked
        # Each table's Arrow schema, made here: a forked worker must not call Polars.
        self._arrow_schemas = {t.name: t.polars_schema.to_arrow() for t in self.dataset.tables}
        self.faults = Faults(url)  # test hooks (etl.load.faults)
        # read cache (etl.infra.cache): where the swap publishes the new generation
        self.redis_url: str | None = None
        self.generation = 0
        self.cache_ns = ""
        self._fence: cache.Fence | None = None
        self._phase_extra: dict[str, Any] = {}  # details of the phase being timed
        #: ``etl load --tag``: the value of the dataset's tag columns in every loaded row.
        self.tag = tag

    def _tag_of(self, name: str) -> tuple[str, str] | None:
        """(column, value) when table ``name`` has a tag column and a tag was given."""
        column = self.dataset.tag_columns.get(name)
        return (column, self.tag) if column and self.tag is not None else None

    # -- plumbing -------------------------------------------------------------------------

    def _retry(self, what: str, fn: Callable[[], Any]) -> Any:
        return pg.retry(fn, what=what, attempts=self.retries, first_delay=self.retry_delay,
                        next_step=f"check the database, then run `etl load {self.run.path}` again: "
                                  "finished steps are kept and the load resumes")

    def _session_sql(self) -> list[str]:
        sets = ["SET maintenance_work_mem = '256MB'", "SET lock_timeout = '60s'"]
        if self.mode == "unsafe-fast":
            sets.append("SET synchronous_commit = off")
        return sets

    def _adbc(self) -> Any:
        """In a worker process: its ADBC connection, opened once (opening one reads the server's
        type catalog, which costs tens of milliseconds) and reused for every table it copies."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = pg.connect_adbc(self.url)
            cur = conn.cursor()
            for stmt in self._session_sql():
                cur.execute(stmt)
            cur.close()
            conn.commit()
            self._local.conn = conn
            with self._progress_lock:
                self._adbc_conns.append(conn)
        return conn

    def _drop_adbc(self) -> None:
        """Forget this thread's connection after an error (it may be broken)."""
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # already broken; closing is best effort
                log.debug("closing a broken connection failed", exc_info=True)
            with self._progress_lock:
                if conn in self._adbc_conns:
                    self._adbc_conns.remove(conn)

    def close(self) -> None:
        self._close_workers()
        for conn in list(self._adbc_conns):
            try:
                conn.close()
            except Exception:
                log.debug("closing a connection failed", exc_info=True)
        self._adbc_conns.clear()

    # -- worker processes (etl.load.forked) ----------------------------------------------------

    def _worker(self) -> forked.Worker:
        """This thread's worker process: forked on first use, and again after one died."""
        worker: forked.Worker | None = getattr(self._local, "worker", None)
        if worker is None or worker.closed:
            worker = forked.Worker(self, _Loader._become_worker)
            self._local.worker = worker
            with self._progress_lock:
                self._workers.append(worker)
        return worker

    @staticmethod
    def _become_worker(loader: _Loader, send: Callable[[str, Any], None]) -> None:
        """In a freshly forked worker: its own locks and connections, and its reports (rows
        copied, fault points used) sent to the loading process."""
        loader._local = threading.local()
        loader._progress_lock = threading.Lock()
        loader._adbc_conns = []
        loader._workers = []
        loader.progress = None
        if loader._on_rows is not None:
            loader._on_rows = lambda n: send("rows", n)
        loader.faults.report_to(lambda point: send("dropped", point))

    def _message(self, kind: str, value: Any) -> None:
        """A worker's report during a call."""
        if kind == "rows":
            self._add_rows(int(value))
        elif kind == "dropped":
            self.faults.dropped.add(str(value))

    def _in_worker(self, op: str, *args: Any) -> Any:
        return self._worker().call(op, *args, on_message=self._message)

    def _close_workers(self) -> None:
        """Stop the worker processes (each phase forks its own: they hold connections)."""
        with self._progress_lock:
            workers, self._workers = self._workers, []
        for worker in workers:
            worker.close()
            self._worker_peak_rss = max(self._worker_peak_rss, worker.peak_rss)

    def _ready(self) -> None:
        """In a worker: open the ADBC connection ahead of the first call."""
        self._adbc()

    def _step(self, name: str, fn: Callable[[Any], Any]) -> None:
        """Run ``fn(conn)`` and record step ``name`` in one transaction (skipped if done)."""
        if name in self.steps:
            return

        def attempt() -> None:
            with pg.connect(self.url, autocommit=False) as conn:
                for stmt in self._session_sql():
                    conn.execute(stmt)
                self.faults.drop(name, conn)
                detail = fn(conn)
                ledger.step_done(conn, self.ledger_id, name, detail)
                self.faults.kill(name)
                conn.commit()
            self.steps[name] = detail

        self._retry(f"step {name}", attempt)

    def _timed(self, name: str, rows: int, fn: Callable[[], None]) -> None:
        start = time.perf_counter()
        self._phase_extra = {}
        fn()
        self.phases.append(Phase(name, time.perf_counter() - start, rows, peak_rss_bytes(),
                                 extra=self._phase_extra))

    # -- steps ----------------------------------------------------------------------------

    def _create(self, conn: Any) -> None:
        conn.execute(f"DROP SCHEMA IF EXISTS {quote_ident(self.build)} CASCADE")
        conn.execute(f"CREATE SCHEMA {quote_ident(self.build)}")
        for stmt in create_tables_sql(self.dataset, self.build, unlogged=self.mode == "unsafe-fast"):
            conn.execute(stmt)

    def _copy_table(self, name: str) -> None:
        step = f"copy:{name}"
        if step in self.steps:
            return
        rows: int = self._retry(f"copy of {name}", lambda: self._in_worker("_copy_once", name))
        self.steps[step] = {"rows": rows}

    def _copy_once(self, name: str) -> int:
        """In a worker: one try at table ``name``'s COPY, committed with its ledger step."""
        step = f"copy:{name}"
        table = self.tables[name]
        reader, expected = _table_reader(self.run, table, self.entries[name], for_copy=True,
                                         tag=self._tag_of(name),
                                         schema=self._arrow_schemas[name])
        conn = self._adbc()
        try:
            cur = conn.cursor()
            target = f"{quote_ident(self.build)}.{quote_ident(name)}"
            # TRUNCATE in the same transaction as the COPY: nothing to undo on a retry, and
            # with wal_level=minimal PostgreSQL can skip writing the rows to WAL.
            cur.execute(f"TRUNCATE {target}")
            self.faults.drop(step, conn)
            try:
                cur.adbc_ingest(name, self._counted(reader), mode="append",
                                db_schema_name=self.build)
            except Exception as exc:
                if pg.is_connection_error(exc):
                    raise
                raise _copy_error(exc, self.run, name, self.entries[name]) from exc
            detail = orjson.dumps({"rows": expected}).decode()
            cur.execute(f"INSERT INTO etl.load_steps (run, step, detail) VALUES "
                        f"({self.ledger_id}, {_lit(step)}, {_lit(detail)}::jsonb) "
                        "ON CONFLICT DO NOTHING")
            self.faults.kill(step)
            conn.commit()
            cur.close()
        except BaseException:
            self._drop_adbc()
            raise
        return expected

    def _add_rows(self, rows: int) -> None:
        """Progress: ``rows`` more rows copied."""
        total = sum(int(e["rows"]) for e in self.entries.values())
        with self._progress_lock:
            self._copied_rows += rows
            done = self._copied_rows
        if self.progress:
            self.progress("load", done, total)

    def _counted(self, reader: pa.RecordBatchReader) -> pa.RecordBatchReader:
        report = self._on_rows
        if report is None:
            return reader

        def batches() -> Iterator[pa.RecordBatch]:
            for batch in reader:
                report(batch.num_rows)
                yield batch

        return pa.RecordBatchReader.from_batches(reader.schema, batches())

    def _keys(self, name: str) -> None:
        """Primary and unique keys of one table, its statistics (ANALYZE) and its content read
        back for verification, in one step: tables run concurrently, so the slow parts (ANALYZE
        of wide text tables, the read-back) overlap."""
        stmts = [s for s in constraints_sql(self.dataset, self.build)
                 if f".{quote_ident(name)} ADD CONSTRAINT" in s and "FOREIGN KEY" not in s]
        stmts.append(f"ANALYZE {quote_ident(self.build)}.{quote_ident(name)}")

        def run(conn: Any) -> dict[str, Any]:
            # Read the committed table back for verification first (on this worker's ADBC
            # connection, whose transaction ends before ALTER TABLE below takes its lock).
            rows, checksum = self._verify_table(name)
            for stmt in stmts:
                conn.execute(stmt)
            return {"rows": rows, "checksum": checksum}

        self._step(f"keys:{name}", run)

    def _fkeys(self, conn: Any) -> None:
        """Every foreign key, added NOT VALID (no scan, so no long lock on the referenced
        tables); ``validate:<name>`` steps then check them, concurrently."""
        for stmt in constraints_sql(self.dataset, self.build):
            if "FOREIGN KEY" in stmt:
                conn.execute(stmt + " NOT VALID")

    def _foreign_keys(self) -> list[tuple[str, str]]:
        return [(t.name, fkey_name(t, fk)) for t in self.dataset.tables for fk in t.foreign_keys]

    def _validate_fk(self, item: tuple[str, str]) -> None:
        table, name = item
        # VALIDATE takes SHARE UPDATE EXCLUSIVE on the referencing table only (and ROW SHARE on
        # the referenced one), so foreign keys of different tables check in parallel.
        def run(conn: Any) -> None:
            conn.execute(f"ALTER TABLE {quote_ident(self.build)}.{quote_ident(table)} "
                         f"VALIDATE CONSTRAINT {quote_ident(name)}")

        self._step(f"validate:{name}", run)

    def _validate_fks(self, group: list[tuple[str, str]]) -> None:
        for fk in group:
            self._validate_fk(fk)

    def _post_sql(self, conn: Any) -> dict[str, Any]:
        conn.execute(f"SET LOCAL search_path = {quote_ident(self.build)}, public")
        done = []
        for path in sql_files(self.dataset):
            try:
                conn.execute(path.read_text())
            except Exception as exc:
                if pg.is_connection_error(exc):
                    raise
                raise EtlError(f"{self.dataset.name}/{path.name} failed: {exc}".strip(),
                               dataset=self.dataset.name, file=path,
                               hint="fix the SQL file, then run the load again (it resumes)") from exc
            done.append(path.name)
        return {"files": done}

    def _verify_table(self, name: str) -> tuple[int, str]:
        table = self.tables[name]
        cols = ", ".join(quote_ident(c.name) for c in table.columns)

        def attempt() -> tuple[int, str]:
            batches = self._worker().stream(
                "_read_back", f"SELECT {cols} FROM {quote_ident(self.build)}.{quote_ident(name)}")
            checksum = frames_checksum(_frames(batches, table, self.entries[name].get("json_dtypes")))
            rows = int(checksum.rsplit("-", 1)[1]) if "-" in checksum else 0
            return rows, checksum

        result: tuple[int, str] = self._retry(f"verification of {name}", attempt)
        return result

    def _read_back(self, query: str) -> Iterator[pa.RecordBatch]:
        """In a worker: ``query``'s rows as Arrow batches (checked by the loading process)."""
        conn = self._adbc()
        try:
            yield from _query_batches(conn, query)
            conn.rollback()
        except BaseException:
            self._drop_adbc()
            raise

    def _staged_checksum(self, name: str) -> str:
        """The staged table's checksum, recomputed when it was made by another Polars version
        (the row hash is Polars' own and may change between versions)."""
        entry = self.entries[name]
        tag = self._tag_of(name)
        if entry.get("checksum_polars") == pl.__version__ and tag is None:
            return str(entry["checksum"])
        reader, _ = _table_reader(self.run, self.tables[name], entry, tag=tag)
        return frames_checksum(_frames(reader, self.tables[name], entry.get("json_dtypes")))

    def _verify(self, conn: Any) -> dict[str, Any]:
        results: dict[str, tuple[int, str]] = {}
        for name in self.tables:
            detail = self.steps.get(f"keys:{name}") or {}
            if "checksum" in detail:
                results[name] = (int(detail["rows"]), str(detail["checksum"]))
            else:
                results[name] = self._verify_table(name)
        problems = []
        for name, (rows, checksum) in results.items():
            want_rows = int(self.entries[name]["rows"])
            want = self._staged_checksum(name)
            if rows != want_rows:
                problems.append(f"{name}: {rows:,} rows in the database, {want_rows:,} staged")
            elif checksum != want:
                problems.append(f"{name}: content checksum {checksum} differs from the staged {want}")
        if problems:
            raise VerificationFailed(
                "the loaded tables differ from the staged ones; nothing was swapped in: "
                + "; ".join(problems), dataset=self.dataset.name, run=self.run.id,
                hint=f"inspect schema {self.build} (the next load drops it); report it with the "
                     "run directory")
        out: dict[str, Any] = {name: {"rows": r, "checksum": c} for name, (r, c) in results.items()}
        out[RECONCILED] = self._reconcile()
        return out

    def _reconcile(self) -> dict[str, Any]:
        """The loaded rows equal the staged tables (checked above); here the staged tables are
        proven to rebuild the export: a sample of its files (chosen by content hash), every
        record of them rebuilt and compared (see :mod:`etl.load.reconcile`). ``etl reconcile RUN``
        does all files."""
        from etl.load.reconcile import reconcile, sample_files

        homed = {lvl.table for lvl in self.dataset.levels.values() if lvl.table}
        if self.reconcile_sample <= 0 or not homed:
            return {"skipped": "off"}
        if any(not self.entries.get(t, {}).get("lineage_chunks") and int(self.entries.get(t, {})
               .get("rows", 0)) for t in homed):
            return {"skipped": "the run's tables carry no lineage (transformed by an older version)"}
        missing = [s["path"] for s in sample_files(self.run, self.reconcile_sample)
                   if not Path(s["path"]).is_file()]
        if missing:
            log.warning("reconciliation skipped: %d source file(s) are not where they were staged "
                        "(e.g. %s)", len(missing), missing[0])
            return {"skipped": f"{len(missing)} source file(s) not found, e.g. {missing[0]}"}
        found = reconcile(self.run, self.dataset, sample=self.reconcile_sample)
        summary = {k: v for k, v in found.to_dict().items() if k not in ("levels", "run")}
        if not found.ok:
            first = found.mismatches[0] if found.mismatches else {}
            raise VerificationFailed(
                f"{found.mismatched + found.missing:,} of {found.records:,} source records in "
                f"{found.files:,} file(s) are not rebuilt by the staged rows; nothing was swapped "
                f"in (first: {first.get('file')} record {first.get('record')} "
                f"{first.get('path') or ''} {first.get('key') or ''}: {first.get('difference')})",
                dataset=self.dataset.name, run=self.run.id,
                hint=f"run `etl reconcile {self.run.path}` for the full list; report it with the "
                     "run directory")
        return summary

    def _lock_live(self, conn: Any) -> None:
        """Lock the live schema's tables and views before the renames. Name lookups do not follow
        a transaction's snapshot, so without it a reader's transaction could read one relation
        from the old schema and the next from the new one; with it, a reader's transaction ends
        before the swap or reads only after it. Each statement of a try waits at most 200 ms
        (the try stays below deadlock_timeout, so a reader holding one table and waiting for the
        next is never the one aborted), then the try lets the waiting readers through and the
        lock is tried again."""
        rels = conn.execute(
            "SELECT c.oid::regclass::text, c.relkind FROM pg_class c JOIN pg_namespace n "
            "ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relkind IN ('r', 'p', 'm', 'v', 'f') "
            "ORDER BY c.relname", (self.live,)).fetchall()
        tables = [name for name, kind in rels if kind != "m"]
        stmts = [f"LOCK TABLE {', '.join(tables)} IN ACCESS EXCLUSIVE MODE"] if tables else []
        # LOCK TABLE refuses materialized views; ALTER ... OWNER takes the same lock (and the
        # old schema is dropped after the swap anyway).
        stmts += [f"ALTER MATERIALIZED VIEW {name} OWNER TO CURRENT_USER" for name, kind in rels
                  if kind == "m"]
        deadline = time.monotonic() + 30
        while stmts:
            try:
                with conn.transaction():  # a savepoint: a try that timed out is undone alone
                    conn.execute("SET LOCAL statement_timeout = '200ms'")
                    for stmt in stmts:
                        conn.execute(stmt)
                    conn.execute("SET LOCAL statement_timeout TO DEFAULT")
                return
            except psycopg.errors.QueryCanceled:
                if time.monotonic() > deadline:
                    raise pg.LockBusy(
                        f"readers kept the tables of schema {self.live} busy for 30 s; the new data "
                        f"waits in schema {self.build}", dataset=self.live, run=self.run.id,
                        hint=f"run `etl load {self.run.path}` again: it resumes at the swap") from None

    def _fence_up(self) -> cache.Fence:
        """The read cache's fence (see :mod:`etl.infra.cache`): up from the post-load SQL on, so the
        wait for readers' leases to run out overlaps it, and the swap rarely waits at all."""
        if self._fence is None:
            with pg.connect(self.url) as conn:
                self.cache_ns = cache.namespace(conn)
            self._fence = cache.Fence(self.redis_url, self.cache_ns, self.live)
        self._fence.up()
        return self._fence

    def _fence_down(self, generation: int | None = None) -> None:
        if self._fence is not None:
            self._fence.down(generation)
            self._fence.close()
            self._fence = None

    def _swap(self, conn: Any) -> None:
        old = f"{self.live}__old{self.ledger_id}"
        fence = self._fence_up()
        fence.wait()  # before any lock: readers are never blocked by it
        conn.execute("SET LOCAL lock_timeout = '30s'")
        if _schema_exists(conn, self.live):
            self._lock_live(conn)
            conn.execute(f"ALTER SCHEMA {quote_ident(self.live)} RENAME TO {quote_ident(old)}")
        conn.execute(f"ALTER SCHEMA {quote_ident(self.build)} RENAME TO {quote_ident(self.live)}")
        ledger.finish_run(conn, self.ledger_id, status="succeeded", phases=self.phases,
                          rows={n: int(e["rows"]) for n, e in self.entries.items()},
                          peak_rss=peak_rss_bytes())
        # -- read cache (etl.infra.cache): the generation moves in this same transaction, and Redis
        # learns it before the commit (again after it, in _publish_generation).
        self.generation = cache.bump_generation(conn, self.live, run_id=self.run.id,
                                                ledger_id=self.ledger_id)
        fence.before_commit(self.generation)

    def _publish_generation(self) -> None:
        """After the swap committed: the new generation to Redis again (the pre-commit write
        may have expired if the commit was slow), and the fence down."""
        self._fence_down(self.generation or None)

    # -- driver ---------------------------------------------------------------------------

    def _cleanup_stale(self, conn: Any) -> None:
        """Drop build and old schemas that earlier, interrupted loads left (we hold the lock)."""
        rows = conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE %s OR nspname LIKE %s",
            (f"{self.live}\\_\\_b%", f"{self.live}\\_\\_old%")).fetchall()
        for (name,) in rows:
            if name != self.build:
                log.info("dropping %s, left by an interrupted load", name)
                conn.execute(f"DROP SCHEMA IF EXISTS {quote_ident(name)} CASCADE")

    def execute(self, *, force: bool) -> LoadResult:
        digest = manifest_digest(self.run, self.tag)
        result = LoadResult(self.run, self.url, None, self.live, self.mode)
        with pg.connect(self.url) as lock_conn:
            lock_conn.execute("SET application_name = 'etl load'")
            with pg.advisory_lock(lock_conn, f"load:{self.live}", what=f"load of {self.live}"):
                last = ledger.last_success(lock_conn, self.live)
                if (not force and last is not None and last["run_id"] == self.run.id
                        and last.get("manifest_sha256") == digest and last["mode"] == self.mode
                        and _schema_exists(lock_conn, self.live)):
                    log.info("run %s is already loaded into %s (ledger #%s)", self.run.id,
                             self.live, last["id"])
                    result.ledger_id = int(last["id"])
                    result.rows = dict(last.get("rows") or {})
                    result.skipped = True
                    # A load killed between its swap and dropping the old schema leaves it behind.
                    self._drop_old(lock_conn)
                    return result
                resume = ledger.resume_candidate(lock_conn, dataset=self.live, run_id=self.run.id,
                                                 mode=self.mode)
                if resume is not None:
                    row = lock_conn.execute("SELECT manifest_sha256 FROM etl.runs WHERE id = %s",
                                            (resume,)).fetchone()
                    if row is None or row[0] != digest:
                        # The run was transformed again since: its copies are stale.
                        log.info("not resuming load #%d: the run's tables changed since", resume)
                        resume = None
                if resume is not None:
                    self.ledger_id = resume
                    ledger.mark_running(lock_conn, resume)
                    self.steps = dict(ledger.steps_done(lock_conn, resume))
                else:
                    self.ledger_id = ledger.start_run(lock_conn, dataset=self.live, run_id=self.run.id,
                                                      manifest_sha256=digest, mode=self.mode)
                self.build = f"{self.live}__b{self.ledger_id}"
                if self.steps and not _schema_exists(lock_conn, self.build):
                    log.warning("build schema %s is gone; starting this load over", self.build)
                    lock_conn.execute("DELETE FROM etl.load_steps WHERE run = %s", (self.ledger_id,))
                    self.steps = {}
                result.ledger_id = self.ledger_id
                result.schema = self.live
                result.resumed_from = list(self.steps)
                if self.steps:
                    log.info("resuming load #%d of %s: %d step(s) already done", self.ledger_id,
                             self.run.id, len(self.steps))
                try:
                    self._cleanup_stale(lock_conn)
                    self._run_steps()
                except BaseException as exc:
                    self._fail(exc)
                    raise
                finally:
                    self.close()
                self._drop_old(lock_conn)
        result.rows = {n: int(e["rows"]) for n, e in self.entries.items()}
        verified = self.steps.get("verify") or {}
        result.checksums = {n: v["checksum"] for n, v in verified.items() if n != RECONCILED}
        result.reconciled = verified.get(RECONCILED)
        result.phases = self.phases
        return result

    def _run_steps(self) -> None:
        total_rows = sum(int(e["rows"]) for e in self.entries.values())
        # Largest tables first, so the concurrent copies end together.
        order = sorted(self.tables, key=lambda n: -int(self.entries[n]["rows"]))

        def copy_all() -> None:
            with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="etl-load") as pool:
                # Each thread forks its worker process, which opens its ADBC connection while
                # the build schema is created (the barrier puts one worker on each thread).
                barrier = threading.Barrier(self.workers)

                def warm() -> None:
                    barrier.wait()
                    self._in_worker("_ready")

                warming = [pool.submit(warm) for _ in range(self.workers)]
                self._step("create", self._create)
                for fut in warming:
                    fut.result()
                started = time.perf_counter()
                list(pool.map(self._copy_table, order))
                # The COPY statements alone (what the benchmark's server-side ceiling measures),
                # apart from creating the build schema and opening the connections.
                self._phase_extra["copy_seconds"] = round(time.perf_counter() - started, 4)
            self._close_workers()
            self._phase_extra["worker_peak_rss"] = self._worker_peak_rss

        def keys_all() -> None:
            with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="etl-keys") as pool:
                list(pool.map(self._keys, order))
                self._step("fkeys", self._fkeys)
                # Biggest referencing tables first; one table's keys share a lock, so group them.
                fks = sorted(self._foreign_keys(), key=lambda f: -int(self.entries[f[0]]["rows"]))
                by_table: dict[str, list[tuple[str, str]]] = {}
                for fk in fks:
                    by_table.setdefault(fk[0], []).append(fk)
                list(pool.map(self._validate_fks, by_table.values()))
            self._close_workers()

        def post_load() -> None:
            if "swap" not in self.steps:
                self._fence_up()  # readers' leases run out while indexes and views build
            self._step("sql", self._post_sql)

        self._timed("load", total_rows, copy_all)
        self._timed("keys", total_rows, keys_all)
        self._timed("post-load", total_rows, post_load)
        self._timed("verify", total_rows, lambda: self._step("verify", self._verify))
        self._timed("swap", 0, lambda: self._step("swap", self._swap))
        self._publish_generation()

    def _fail(self, exc: BaseException) -> None:
        self._fence_down()  # no new generation: readers may take leases again
        if not self.ledger_id:
            return
        try:
            with pg.connect(self.url) as conn:
                ledger.finish_run(conn, self.ledger_id, status="failed", phases=self.phases,
                                  rows={}, peak_rss=peak_rss_bytes(), error=str(exc)[:2000])
                if isinstance(exc, VerificationFailed):
                    # The build schema holds wrong rows: the next load must build it again
                    # (dropping it), not resume the steps that made it.
                    conn.execute("DELETE FROM etl.load_steps WHERE run = %s", (self.ledger_id,))
        except Exception:  # the database may be what failed; the error itself is what matters
            log.warning("could not record the failure in the ledger", exc_info=True)

    # -- merge mode -----------------------------------------------------------------------
    #
    # A clearly separate path: no build schema, no swap. In one transaction on one ADBC
    # connection, each table's staged rows are COPYed into a temporary table (ON COMMIT DROP),
    # then upserted into the live table, parents before children:
    #
    #   INSERT … SELECT … FROM temp ON CONFLICT (primary key) DO UPDATE SET …
    #   WHERE (live row) IS DISTINCT FROM (EXCLUDED row)  RETURNING (xmax = 0)
    #
    # so only new rows are inserted and only rows whose values differ are updated (and
    # counted: inserted / updated / unchanged). With ``delete_missing`` rows absent from the
    # import are deleted, children first — only rows carrying the import's tag(s) in tables
    # with a tag column, and in other tables only rows no live row references. Every staged
    # row is then checked to be in the live table as staged (EXCEPT), or nothing commits.
    # If the live schema does not exist (the migrations normally create it), the merge
    # creates it, with its keys and the dataset's SQL, in the same transaction. The ledger
    # row (mode ``merge``, counts in its phases) is finished and the read cache's generation
    # bumped, when anything changed, right after the commit.

    def _merge_order(self) -> list[str]:
        """Tables with the tables they reference first."""
        order: list[str] = []

        def visit(name: str, trail: tuple[str, ...] = ()) -> None:
            if name in order or name in trail:
                return
            for fk in self.tables[name].foreign_keys:
                if fk.table != name:
                    visit(fk.table, (*trail, name))
            order.append(name)

        for t in self.dataset.tables:
            visit(t.name)
        return order

    def _merge_table(self, cur: Any, name: str, *, delete_missing: bool) -> dict[str, int]:
        table = self.tables[name]
        live = f"{quote_ident(self.live)}.{quote_ident(name)}"
        temp = quote_ident(f"_merge_{name}")
        cols = [c.name for c in table.columns]
        col_list = ", ".join(quote_ident(c) for c in cols)
        pk = list(table.primary_key)
        rest = [c for c in cols if c not in pk]
        cur.execute(f"CREATE TEMP TABLE {temp} (LIKE {live} INCLUDING DEFAULTS) ON COMMIT DROP")
        reader, staged = _table_reader(self.run, table, self.entries[name], for_copy=True,
                                       tag=self._tag_of(name), schema=self._arrow_schemas[name])
        try:
            cur.adbc_ingest(f"_merge_{name}", reader, mode="append", temporary=True)
        except Exception as exc:
            if pg.is_connection_error(exc):
                raise
            raise _copy_error(exc, self.run, name, self.entries[name]) from exc
        if rest:
            sets = ", ".join(f"{quote_ident(c)} = EXCLUDED.{quote_ident(c)}" for c in rest)
            mine = ", ".join(_compared(table, c, "t.") for c in rest)
            theirs = ", ".join(_compared(table, c, "EXCLUDED.") for c in rest)
            conflict = (f"DO UPDATE SET {sets} WHERE ROW({mine}) IS DISTINCT FROM ROW({theirs})")
        else:
            conflict = "DO NOTHING"
        cur.execute(
            f"WITH up AS (INSERT INTO {live} AS t ({col_list}) SELECT {col_list} FROM {temp} "
            f"ON CONFLICT ({', '.join(quote_ident(c) for c in pk)}) {conflict} "
            "RETURNING (xmax = 0) AS inserted) "
            "SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM up")
        inserted, updated = (int(v) for v in cur.fetchone())
        counts = {"staged": staged, "inserted": inserted, "updated": updated,
                  "unchanged": staged - inserted - updated}
        if delete_missing:
            counts["deleted"] = 0
        return counts

    def _delete_missing(self, cur: Any, name: str) -> int:
        table = self.tables[name]
        live = f"{quote_ident(self.live)}.{quote_ident(name)}"
        temp = quote_ident(f"_merge_{name}")
        match = " AND ".join(f"m.{quote_ident(c)} = t.{quote_ident(c)}" for c in table.primary_key)
        where = [f"NOT EXISTS (SELECT 1 FROM {temp} m WHERE {match})"]
        tag_col = self.dataset.tag_columns.get(name)
        if tag_col:
            where.append(f"t.{quote_ident(tag_col)} IN (SELECT DISTINCT {quote_ident(tag_col)} "
                         f"FROM {temp})")
        for child in self.dataset.tables:
            for fk in child.foreign_keys:
                if fk.table != name:
                    continue
                on = " AND ".join(f"c.{quote_ident(a)} = t.{quote_ident(b)}"
                                  for a, b in zip(fk.columns, fk.ref_columns, strict=True))
                where.append(f"NOT EXISTS (SELECT 1 FROM {quote_ident(self.live)}."
                             f"{quote_ident(child.name)} c WHERE {on})")
        cur.execute(f"WITH gone AS (DELETE FROM {live} AS t WHERE {' AND '.join(where)} "
                    "RETURNING 1) SELECT count(*) FROM gone")
        return int(cur.fetchone()[0])

    def _merge_check(self, cur: Any, name: str) -> None:
        """Every staged row must now be in the live table exactly as staged."""
        table = self.tables[name]
        cols = ", ".join(_compared(table, c.name) for c in table.columns)
        cur.execute(f"SELECT count(*) FROM (SELECT {cols} FROM {quote_ident(f'_merge_{name}')} "
                    f"EXCEPT SELECT {cols} FROM {quote_ident(self.live)}.{quote_ident(name)}) x")
        missing = int(cur.fetchone()[0])
        if missing:
            raise VerificationFailed(
                f"merge of {name}: {missing} staged row(s) are not in the live table as staged; "
                "nothing was committed", dataset=self.live, run=self.run.id,
                hint="a row may share its primary key with another staged row; check the "
                     "dataset's unique rules, then merge again")

    def _merge_once(self, delete_missing: bool) -> dict[str, dict[str, int]]:
        """In a worker: the whole merge, in one transaction."""
        conn = self._adbc()
        try:
            cur = conn.cursor()
            cur.execute("SELECT 1 FROM pg_namespace WHERE nspname = " + _lit(self.live))
            if cur.fetchone() is None:
                log.info("schema %s does not exist; the merge creates it", self.live)
                cur.execute(f"CREATE SCHEMA {quote_ident(self.live)}")
                for stmt in [*create_tables_sql(self.dataset, self.live),
                             *constraints_sql(self.dataset, self.live)]:
                    cur.execute(stmt)
                if sql_files(self.dataset):
                    cur.execute(f"SET LOCAL search_path = {quote_ident(self.live)}, public")
                    for path in sql_files(self.dataset):
                        cur.execute(path.read_text())
                    cur.execute("SET LOCAL search_path TO DEFAULT")
            order = self._merge_order()
            counts = {}
            for name in order:
                self.faults.drop(f"merge:{name}", conn)
                counts[name] = self._merge_table(cur, name, delete_missing=delete_missing)
            if delete_missing:
                for name in reversed(order):
                    counts[name]["deleted"] = self._delete_missing(cur, name)
            for name in order:
                self._merge_check(cur, name)
            self.faults.kill("merge")
            conn.commit()
            cur.close()
        except BaseException:
            self._drop_adbc()
            raise
        return counts

    def execute_merge(self, *, delete_missing: bool) -> LoadResult:
        digest = manifest_digest(self.run, self.tag)
        result = LoadResult(self.run, self.url, None, self.live, self.mode, tag=self.tag)
        with pg.connect(self.url) as lock_conn:
            lock_conn.execute("SET application_name = 'etl load'")
            with pg.advisory_lock(lock_conn, f"load:{self.live}", what=f"load of {self.live}"):
                self.ledger_id = ledger.start_run(lock_conn, dataset=self.live, run_id=self.run.id,
                                                  manifest_sha256=digest, mode=self.mode)
                result.ledger_id = self.ledger_id
                try:
                    start = time.perf_counter()
                    counts: dict[str, dict[str, int]] = self._retry(
                        "merge", lambda: self._in_worker("_merge_once", delete_missing))
                    rows = sum(c["staged"] for c in counts.values())
                    self.phases.append(Phase("merge", time.perf_counter() - start, rows,
                                             peak_rss_bytes(), extra={"tables": counts}))
                    result.merged = counts
                    with pg.connect(self.url, autocommit=False) as conn:
                        ledger.finish_run(conn, self.ledger_id, status="succeeded",
                                          phases=self.phases,
                                          rows={n: c["staged"] for n, c in counts.items()},
                                          peak_rss=peak_rss_bytes())
                        if result.changed:
                            self._fence_up().wait()
                            self.generation = cache.bump_generation(
                                conn, self.live, run_id=self.run.id, ledger_id=self.ledger_id)
                            assert self._fence is not None
                            self._fence.before_commit(self.generation)
                        conn.commit()
                    self._publish_generation()
                except BaseException as exc:
                    self._fail(exc)
                    raise
                finally:
                    self.close()
        result.rows = {n: c["staged"] for n, c in result.merged.items()}
        result.phases = self.phases
        return result

    def _drop_old(self, conn: Any) -> None:
        try:
            self._cleanup_stale(conn)
        except Exception:
            log.warning("could not drop the previous schema yet; the next load will", exc_info=True)


def load(
    run: Run,
    *,
    database_url: str | None = None,
    mode: Mode = "full",
    force: bool = False,
    workers: int = 2,
    retries: int = 4,
    retry_delay: float = 0.5,
    progress: Progress | None = None,
    redis_url: str | None = None,
    tag: str | None = None,
    delete_missing: bool = False,
    warm: int = 0,
    reconcile_sample: float = RECONCILE_SAMPLE,
) -> LoadResult:
    """Load a transformed run into PostgreSQL (see the module docstring for the steps).

    ``database_url=None`` uses the embedded server. ``redis_url`` (default: ``ETL_REDIS_URL``) is
    the read cache's Redis, told the new generation at the swap (see :mod:`etl.infra.cache`). The
    ledger is created or upgraded first if needed. A run already loaded (same content, same
    mode) is skipped unless ``force``.
    Raises :class:`~etl.infra.pg.LockBusy` if another load of the dataset runs,
    :class:`VerificationFailed` if the database differs from the staged tables, and
    :class:`~etl.infra.pg.DatabaseError` when the connection keeps dropping.

    ``mode="merge"`` upserts into the live tables instead (see :meth:`_Loader.execute_merge`):
    the result's ``merged`` counts rows inserted, updated, unchanged (and, with
    ``delete_missing``, deleted). ``tag`` sets the dataset's tag columns (e.g. the licenses
    import's ``datasets.tag``) in every row, in any mode.

    ``warm > 0``: after a load that changed the data, preload that many of the read cache's
    hottest keys into Redis for the new generation (a ``warm`` phase; needs ``redis_url``).

    ``reconcile_sample``: the share of source files whose records the verify step rebuilds from
    the staged rows and compares with the export (chosen by content hash; small sources whole;
    0 turns it off, 1 reads every file). See :mod:`etl.load.reconcile`.
    """
    if "tables" not in run.manifest:
        raise RunStateError(f"run {run.id} has no transformed tables", run=run.id,
                            hint=f"run `etl transform {run.path}` first")
    url = pg.resolve_url(database_url)
    ensure_ledger(url)
    if tag is not None and not run.dataset().tag_columns:
        raise ConfigError(f"dataset {run.dataset_name} has no tag column; --tag does not apply",
                          hint="leave out --tag")
    if delete_missing and mode != "merge":
        raise ConfigError("--delete-missing applies to --mode merge only",
                          hint="a full load replaces every row anyway")
    loader = _Loader(run, url, mode=mode, workers=workers, retries=retries, retry_delay=retry_delay,
                     progress=progress, tag=tag, reconcile_sample=reconcile_sample)
    loader.redis_url = redis_url or load_settings().redis_url
    if mode == "merge":
        result = loader.execute_merge(delete_missing=delete_missing)
        log.info("merged %s into %s: %s", run.id, result.schema, ", ".join(
            f"{n} +{c['inserted']} ~{c['updated']} ={c['unchanged']}"
            + (f" -{c['deleted']}" if "deleted" in c else "") for n, c in result.merged.items()))
    else:
        result = loader.execute(force=force)
        if not result.skipped:
            log.info("loaded %s into %s (%d rows, ledger #%s)", run.id, result.schema,
                     sum(result.rows.values()), result.ledger_id)
    if warm > 0 and not result.skipped and (mode != "merge" or result.changed):
        result.phases.append(_warm(url, loader.redis_url, loader.live, warm))
    return result


def _warm(url: str, redis_url: str | None, dataset: str, top: int) -> Phase:
    """The ``warm`` phase: the ``top`` hottest keys read into Redis for the new generation. A
    failure here is logged, never raised: the load itself has succeeded."""
    from etl.query import warm

    with timed("warm") as phase:
        if not redis_url:
            log.warning("--warm needs the read cache's Redis (ETL_REDIS_URL): nothing warmed")
            return phase
        try:
            with cache.Cache(url, redis_url=redis_url, lru_items=0, leases=False) as c:
                done = warm(c, dataset, top=top)
            phase.rows = int(done["keys"])
            phase.extra = {"generation": done["generation"], "tiers": done["tiers"]}
        except Exception as exc:
            log.warning("warming the read cache of %s failed: %s", dataset, exc)
            phase.extra = {"error": str(exc)[:500]}
    return phase


def ensure_ledger(url: str) -> None:
    """Create or upgrade the ledger (and live schemas) when the database is behind."""
    if ledger.current(url) not in ledger.heads():
        applied = ledger.upgrade(url)
        log.info("applied migrations %s", ", ".join(applied))


def live_tables(url: str, dataset: Dataset) -> dict[str, int]:
    """Row counts of the dataset's live tables (for summaries and tests)."""
    out: dict[str, int] = {}
    with pg.connect(url) as conn:
        for t in dataset.tables:
            row = conn.execute(
                f"SELECT count(*) FROM {quote_ident(dataset.name)}.{quote_ident(t.name)}").fetchone()
            out[t.name] = int(row[0]) if row else 0
    return out


def table_checksums(url: str, dataset: Dataset, *, schema: str | None = None,
                    run: Run | None = None) -> dict[str, str]:
    """Content checksums of the dataset's tables as they are in the database (jsonb columns
    compared in the types recorded by ``run``'s transform, when given)."""
    entries = (run.manifest.get("tables") or {}) if run is not None else {}
    names: Sequence[Table] = dataset.tables
    out = {}
    pg.preload_adbc()
    worker = forked.Worker(_ReadBack(url), lambda target, send: None)
    try:
        for table in names:
            cols = ", ".join(quote_ident(c.name) for c in table.columns)
            batches = worker.stream(
                "rows", f"SELECT {cols} FROM {quote_ident(schema or dataset.name)}.{quote_ident(table.name)}")
            out[table.name] = frames_checksum(_frames(batches, table,
                                                      entries.get(table.name, {}).get("json_dtypes")))
    finally:
        worker.close()
    return out


__all__ = ["DatabaseError", "LoadResult", "Mode", "VerificationFailed", "load", "sql_files"]
