"""The load's bookkeeping: its result, its lock, and its ledger row with the steps done.

Each step commits together with its row in ``etl.load_steps`` (:func:`step`), so a killed load
resumes where it stopped: running the same command again skips the finished steps and redoes
the rest (:func:`begin`). A run already loaded with the same content and mode is skipped
(:func:`already_loaded`).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from etl import interrupt
from etl.dataset import Dataset
from etl.infra import ledger, pg
from etl.infra.live import ensure_live_schemas
from etl.load._utils import schema_exists
from etl.load.errors import VerificationFailed
from etl.load.state import Mode
from etl.metrics import Phase, peak_rss_bytes
from etl.run import Run

if TYPE_CHECKING:
    from etl.load.state import Load

log = logging.getLogger(__name__)


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


def manifest_digest(run: Run, tag: str | None = None) -> str:
    """What identifies the loaded content: the run id and its tables' entries (rows, chunk
    hashes, checksums), not the manifest's timings; and the import tag, when one is given."""
    data: dict[str, Any] = {"run_id": run.id, "tables": run.manifest.get("tables")}
    if tag is not None:
        data["tag"] = tag
    return hashlib.sha256(orjson.dumps(data, option=orjson.OPT_SORT_KEYS)).hexdigest()


#: How long the check before a load waits for the server to answer (a wrong host, a firewall
#: that drops packets); a refused connection fails at once.
CONNECT_TIMEOUT = 5


def check_database(database_url: str | None) -> str:
    """Before any work: the database answers, and its ledger is at a revision this toolkit knows
    (a ledger behind the head, or none yet, is brought up by the load itself, so a run that
    validation stops leaves the database untouched). Returns the URL (``None``: the embedded
    server, started if needed).

    ``etl run`` calls it before staging, so a wrong URL fails in a moment, not after the export
    is staged, validated and transformed.

    Raises:
        DatabaseUnavailable: the server cannot be reached (the hint says what to check).
        DatabaseError: the ledger was migrated by a newer version of the toolkit.
    """
    url = pg.resolve_url(database_url)
    with pg.connect(url, connect_timeout=CONNECT_TIMEOUT):
        pass
    ledger.check_known(url)
    return url


def ensure_ledger(url: str, dataset: Dataset | None = None) -> None:
    """Create or upgrade the ledger when the database is behind, and create ``dataset``'s live
    schema (empty, from its tables) when it has none, so readers find its tables from the start."""
    if ledger.current(url) not in ledger.heads():
        applied = ledger.upgrade(url)
        log.info("applied migrations %s", ", ".join(applied))
    if dataset is not None:
        ensure_live_schemas(url, [dataset])


@contextmanager
def locked(load: Load) -> Iterator[Any]:
    """The dataset's load lock, held for the whole load on a connection of its own (yielded)."""
    with pg.connect(load.url) as lock_conn:
        lock_conn.execute("SET application_name = 'etl load'")
        with pg.advisory_lock(lock_conn, f"load:{load.live}", what=f"load of {load.live}"):
            load.lock_conn = lock_conn
            try:
                yield lock_conn
            finally:
                load.lock_conn = None


def already_loaded(load: Load, lock_conn: Any, digest: str, *, force: bool) -> dict[str, Any] | None:
    """The ledger's row of the last load, if it loaded this very content in this mode and its
    schema is live (so this load has nothing to do); ``None`` with ``force``."""
    last = ledger.last_success(lock_conn, load.live)
    if (not force and last is not None and last["run_id"] == load.run.id
            and last.get("manifest_sha256") == digest and last["mode"] == load.mode
            and schema_exists(lock_conn, load.live)):
        log.info("run %s is already loaded into %s (ledger #%s)", load.run.id, load.live, last["id"])
        return last
    return None


def begin(load: Load, lock_conn: Any, digest: str) -> None:
    """The load's ledger row: an interrupted load of the same content resumed (its finished
    steps kept, unless its build schema is gone), or a new row started. Sets the load's
    ``ledger_id``, ``build`` schema and ``steps``."""
    resume = ledger.resume_candidate(lock_conn, dataset=load.live, run_id=load.run.id,
                                     mode=load.mode)
    if resume is not None:
        row = lock_conn.execute("SELECT manifest_sha256 FROM etl.runs WHERE id = %s",
                                (resume,)).fetchone()
        if row is None or row[0] != digest:
            # The run was transformed again since: its copies are stale.
            log.info("not resuming load #%d: the run's tables changed since", resume)
            resume = None
    if resume is not None:
        load.ledger_id = resume
        ledger.mark_running(lock_conn, resume)
        load.steps = dict(ledger.steps_done(lock_conn, resume))
    else:
        load.ledger_id = ledger.start_run(lock_conn, dataset=load.live, run_id=load.run.id,
                                          manifest_sha256=digest, mode=load.mode)
        ledger.record_drift(lock_conn, load.ledger_id, load.run.manifest)
    ledger.close_abandoned(lock_conn, dataset=load.live, keep=load.ledger_id)
    load.build = f"{load.live}__b{load.ledger_id}"
    if load.steps and not schema_exists(lock_conn, load.build):
        log.warning("build schema %s is gone; starting this load over", load.build)
        lock_conn.execute("DELETE FROM etl.load_steps WHERE run = %s", (load.ledger_id,))
        load.steps = {}
    if load.steps:
        log.info("resuming load #%d of %s: %d step(s) already done", load.ledger_id,
                 load.run.id, len(load.steps))


def step(load: Load, name: str, fn: Callable[[Any], Any]) -> None:
    """Run ``fn(conn)`` and record step ``name`` in one transaction (skipped if done)."""
    if name in load.steps:
        return
    if load.lock_conn is not None:
        load.faults.drop(f"lock:{name}", load.lock_conn)  # test hook: the lock's session ends
    load.check_lock()

    def attempt() -> None:
        with pg.connect(load.url, autocommit=False) as conn:
            for stmt in [*load.session_sql(), load.working_sql()]:
                conn.execute(stmt)
            load.faults.drop(name, conn)
            load.faults.pause(name)
            detail = fn(conn)
            ledger.step_done(conn, load.ledger_id, name, detail)
            load.faults.kill(name)
            conn.commit()
        load.steps[name] = detail

    load.retry(f"step {name}", attempt)


def fail(load: Load, exc: BaseException) -> None:
    """The load failed with ``exc``: the fence down, the failure in the ledger; stopped by a
    signal (:class:`etl.interrupt.Interrupted`), it is recorded ``interrupted``, with its
    finished steps kept for the next run to resume."""
    stopped = interrupt.as_interrupted(exc)
    if stopped is not None:
        load.abort_work()  # what the main thread waited on: its worker, its statement
    load.fence.down()  # no new generation: readers may take leases again
    if not load.ledger_id:
        return
    if "swap" in load.steps:  # the swap committed the load as succeeded: what failed came after
        log.warning("the load succeeded (swapped in); then: %s", exc)
        return
    status = "failed" if stopped is None else "interrupted"
    error = str(exc) if stopped is None else (
        f"{stopped}: finished steps are kept; run `etl load {load.run.path}` (or the same command "
        "again) to resume")
    try:
        with pg.connect(load.url) as conn:
            ledger.finish_run(conn, load.ledger_id, status=status, phases=load.phases,
                              rows={}, peak_rss=peak_rss_bytes(), error=error[:2000])
            if isinstance(exc, VerificationFailed):
                # The build schema holds wrong rows: the next load must build it again
                # (dropping it), not resume the steps that made it.
                conn.execute("DELETE FROM etl.load_steps WHERE run = %s", (load.ledger_id,))
    except Exception:  # the database may be what failed; the error itself is what matters
        log.warning("could not record the failure in the ledger", exc_info=True)
