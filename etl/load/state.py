"""One load's state, and the resources it owns: the worker processes that run every ADBC call.

The steps (:mod:`.plan`, :mod:`.copy`, :mod:`.keys`, :mod:`.verify`, :mod:`.swap`,
:mod:`.merge`) are functions of a :class:`Load`. A step that speaks ADBC runs its part in this
thread's worker process (:mod:`etl.load.forked`) with :meth:`Load.in_worker`: the child inherits
the :class:`Load` and runs the function on it; results, progress and exceptions come back.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, TypeVar

import pyarrow as pa

from etl import interrupt
from etl.config import Settings
from etl.dataset import Dataset
from etl.infra import pg
from etl.infra.errors import LockLost
from etl.load import forked
from etl.load.faults import Faults
from etl.load.fence import CacheFence
from etl.metrics import Phase, peak_rss_bytes
from etl.run import Run

log = logging.getLogger(__name__)

Mode = Literal["full", "unsafe-fast", "rebuild", "merge"]
Progress = Callable[[str, int, int], None]
T = TypeVar("T")


def build_lock_name(live: str) -> str:
    """The advisory lock every working connection of a load of ``live`` holds shared."""
    return f"build:{live}"


def end_build_sessions(url: str, live: str) -> int:
    """Terminate the server sessions working on a load of ``live`` in the database at ``url``
    (each holds its build lock shared; never one holding it alone), but this one's; how many.
    Advisory locks are the server's, not a database's: the sessions of a load of the same name
    in another database on the server are not touched."""
    key = pg.lock_key(build_lock_name(live))
    with pg.connect(url) as admin:
        return len(admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' "
            "AND mode = 'ShareLock' AND classid = %s AND objid = %s AND objsubid = 1 "
            "AND pid <> pg_backend_pid() "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            ((key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF)).fetchall())


def session_sql(mode: str = "full") -> list[str]:
    """What every connection of a load sets first."""
    sets = ["SET maintenance_work_mem = '256MB'", "SET lock_timeout = '60s'",
            # PostgreSQL 14+: a statement whose client is gone (a killed load) is cancelled within
            # seconds instead of running on, holding its locks, for minutes.
            "SELECT set_config('client_connection_check_interval', '2s', false) "
            "WHERE current_setting('server_version_num')::int >= 140000"]
    if mode == "unsafe-fast":
        sets.append("SET synchronous_commit = off")
    return sets


class Load:
    """One load of one run: what every step reads (the run, its tables, the build schema, the
    ledger row and its finished steps) and what it owns (worker processes, their connections,
    the read cache's fence)."""

    def __init__(self, run: Run, dataset: Dataset, url: str, *, mode: Mode, workers: int, retries: int,
                 retry_delay: float, progress: Progress | None, tag: str | None = None,
                 reconcile_sample: float = 0.0, redis_url: str | None = None,
                 settings: Settings | None = None) -> None:
        self.run = run
        #: Where the COPY runs (``settings.engine``): this process's forked workers, or tasks
        #: on the Ray cluster ``settings.ray_address`` names (see :mod:`etl.load.on_ray`).
        self.settings = settings or Settings()
        self.engine = self.settings.engine
        self.reconcile_sample = reconcile_sample
        self.dataset = dataset
        self.url = url
        self.mode = mode
        self.workers = max(1, workers)
        self.retries = retries
        self.retry_delay = retry_delay
        self.progress = progress
        #: ``etl load --tag``: the value of the dataset's tag columns in every loaded row.
        self.tag = tag
        self.live = self.dataset.name
        self.tables = {t.name: t for t in self.dataset.tables}
        self.entries: dict[str, Any] = run.manifest["tables"]
        # The ledger row (see etl.load.plan): its id, the build schema, its finished steps.
        self.ledger_id = 0
        self.build = ""
        #: The connection holding the dataset's load lock (set while the lock is held).
        self.lock_conn: Any = None
        self.steps: dict[str, Any] = {}
        self.phases: list[Phase] = []
        self.phase_extra: dict[str, Any] = {}  # details of the phase being timed
        #: The read cache (etl.infra.cache): where the swap publishes the new generation.
        self.fence = CacheFence(url, self.live, redis_url)
        self.faults = Faults(url)  # test hooks (etl.load.faults)
        # The worker processes that run every ADBC call (see etl.load.forked), one per thread.
        self._progress_lock = threading.Lock()
        self._stopping = threading.Event()  # set by abort_work: no step starts or retries
        self._copied_rows = 0
        self._local = threading.local()
        self._adbc_conns: list[Any] = []  # in a worker process: its ADBC connections
        self._workers: list[forked.Worker] = []
        self.worker_peak_rss = 0
        #: Rows copied so far, reported (in the worker) as each batch goes out.
        self.on_rows: Callable[[int], None] | None = self.add_rows if progress else None
        pg.preload_adbc()  # before any worker is forked
        #: Each table's Arrow schema, made here: a forked worker must not call Polars.
        self.arrow_schemas = {t.name: t.polars_schema.to_arrow() for t in self.dataset.tables}

    def tag_of(self, name: str) -> tuple[str, str] | None:
        """(column, value) when table ``name`` has a tag column and a tag was given."""
        column = self.dataset.tag_columns.get(name)
        return (column, self.tag) if column and self.tag is not None else None

    def retry(self, what: str, fn: Callable[[], T]) -> T:
        def attempt() -> T:
            self.check_stopping()  # asked to stop: no new attempt (a killed worker is not retried)
            try:
                return fn()
            except Exception:
                self.check_stopping()  # the failure is the interruption's doing (abort_work)
                raise

        result: T = pg.retry(attempt, what=what, attempts=self.retries, first_delay=self.retry_delay,
                             next_step=f"check the database, then run `etl load {self.run.path}` "
                                       "again: finished steps are kept and the load resumes")
        return result

    def session_sql(self) -> list[str]:
        return session_sql(self.mode)

    def working_sql(self) -> str:
        """What a connection doing this load's work runs first: it holds the dataset's build lock
        shared for its life, so another load never drops a build schema this one works in
        (:func:`etl.load.swap.cleanup_stale` drops only with the build lock alone)."""
        return f"SELECT pg_advisory_lock_shared({pg.lock_key(build_lock_name(self.live))})"

    def check_lock(self) -> None:
        """Stop (:class:`LockLost`) unless this load still holds its dataset's load lock: its lock
        connection's session may have ended, and another load may have taken the lock since."""
        if self.lock_conn is not None and not pg.holds_lock(self.lock_conn, f"load:{self.live}"):
            raise LockLost(
                f"the load of {self.live} lost its lock (its lock connection to the server ended); "
                "another load may hold it now, so this one stops before its next step",
                dataset=self.live, run=self.run.id,
                hint=f"run `etl load {self.run.path}` again: it waits for no one, resumes its "
                     "finished steps, or says which load holds the lock")

    def timed(self, name: str, rows: int, fn: Callable[[], None]) -> None:
        """Run ``fn`` as phase ``name`` (its time, rows and peak memory go in the ledger)."""
        start = time.perf_counter()
        self.phase_extra = {}
        fn()
        self.phases.append(Phase(name, time.perf_counter() - start, rows, peak_rss_bytes(),
                                 extra=self.phase_extra))

    def add_rows(self, rows: int) -> None:
        """Progress: ``rows`` more rows copied."""
        total = sum(int(e["rows"]) for e in self.entries.values())
        with self._progress_lock:
            self._copied_rows += rows
            done = self._copied_rows
        if self.progress:
            self.progress("load", done, total)

    @contextlib.contextmanager
    def pool(self, prefix: str) -> Iterator[ThreadPoolExecutor]:
        """Threads for steps that run concurrently. Interrupted (Ctrl-C, SIGTERM), the load does
        not wait for their steps to end: :meth:`abort_work` stops them at once, and each step's
        transaction rolls back, left to resume."""
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix=prefix) as pool:
            try:
                yield pool
            except KeyboardInterrupt:
                self.abort_work()
                raise

    def check_stopping(self) -> None:
        """Raise :class:`~etl.interrupt.Interrupted` once the load is being stopped: by a signal
        (the CLI's handler) or by Ctrl-C anywhere else (a notebook), see :meth:`abort_work`."""
        if self._stopping.is_set():
            raise interrupt.Interrupted()
        interrupt.check()

    def abort_work(self) -> None:
        """Stop the load's work where it is: its worker processes killed, and every server
        session working on its build (each holds the build lock shared, see :meth:`working_sql`)
        terminated, so no statement of it runs on; the threads waiting on them then end (an
        interrupted load tries nothing again, see :meth:`retry`)."""
        self._stopping.set()
        with self._progress_lock:
            workers = [w for w in self._workers if not w.closed]
        for worker in workers:
            with contextlib.suppress(OSError):
                os.kill(worker.pid, signal.SIGKILL)  # the thread waiting on it reaps it
        try:
            ended = end_build_sessions(self.url, self.live)
            log.info("stopped %d worker(s) and %d server session(s) of the load of %s",
                     len(workers), ended, self.live)
        except Exception:  # the database may be what is gone; the sessions then end anyway
            log.warning("could not end the load's server sessions", exc_info=True)

    # -- the ADBC connection (in a worker process) ---------------------------------------------

    def adbc(self) -> Any:
        """In a worker process: its ADBC connection, opened once (opening one reads the server's
        type catalog, which costs tens of milliseconds) and reused for every table it copies."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = pg.connect_adbc(self.url)
            cur = conn.cursor()
            for stmt in [*self.session_sql(), self.working_sql()]:
                cur.execute(stmt)
            cur.close()
            conn.commit()
            self._local.conn = conn
            with self._progress_lock:
                self._adbc_conns.append(conn)
        return conn

    def drop_adbc(self) -> None:
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
        self.close_workers()
        for conn in list(self._adbc_conns):
            try:
                conn.close()
            except Exception:
                log.debug("closing a connection failed", exc_info=True)
        self._adbc_conns.clear()

    # -- worker processes (etl.load.forked) ----------------------------------------------------

    def in_worker(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(self, *args)`` in this thread's worker process (``fn`` a module-level function)."""
        result: T = self._worker().call("run_here", fn, *args, on_message=self._message)
        return result

    def stream_in_worker(self, fn: Callable[..., Iterator[pa.RecordBatch]], *args: Any
                         ) -> Iterator[pa.RecordBatch]:
        """The record batches ``fn(self, *args)`` yields in this thread's worker process."""
        return self._worker().stream("run_here", fn, *args)

    def run_here(self, fn: Callable[..., T], *args: Any) -> T:
        """In a worker: what :meth:`in_worker` asked for."""
        return fn(self, *args)

    def close_workers(self) -> None:
        """Stop the worker processes (each phase forks its own: they hold connections)."""
        with self._progress_lock:
            workers, self._workers = self._workers, []
        for worker in workers:
            worker.close()
            self.worker_peak_rss = max(self.worker_peak_rss, worker.peak_rss)

    def _worker(self) -> forked.Worker:
        """This thread's worker process: forked on first use, and again after one died."""
        worker: forked.Worker | None = getattr(self._local, "worker", None)
        if worker is None or worker.closed:
            worker = forked.Worker(self, Load._become_worker)
            self._local.worker = worker
            with self._progress_lock:
                self._workers.append(worker)
        return worker

    @staticmethod
    def _become_worker(load: Load, send: Callable[[str, Any], None]) -> None:
        """In a freshly forked worker: its own locks and connections, and its reports (rows
        copied, fault points used) sent to the loading process."""
        load._local = threading.local()
        load._progress_lock = threading.Lock()
        load._stopping = threading.Event()
        load._adbc_conns = []
        load._workers = []
        load.progress = None
        if load.on_rows is not None:
            load.on_rows = lambda n: send("rows", n)
        load.faults.report_to(lambda point: send("dropped", point))

    def _message(self, kind: str, value: Any) -> None:
        """A worker's report during a call."""
        if kind == "rows":
            self.add_rows(int(value))
        elif kind == "dropped":
            self.faults.dropped.add(str(value))
