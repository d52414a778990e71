"""The swap: the build schema into the live one's place in one short transaction, and the read
cache's fence around it (the new generation published to Redis); then the old schema dropped.

Readers see the old data until the swap commits and the new data after it, never a mix.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import psycopg

from etl.infra import ledger, pg
from etl.infra.pg import quote_ident
from etl.load._utils import schema_exists
from etl.load.state import build_lock_name
from etl.metrics import peak_rss_bytes

if TYPE_CHECKING:
    from etl.load.state import Load

log = logging.getLogger(__name__)
#: How long cleanup_stale waits for other loads' working connections to let go of the build lock.
BUILD_LOCK_WAIT = "10s"


def swap(load: Load, conn: Any) -> None:
    """The ``swap`` step: the live schema renamed away, the build schema into its place, the
    ledger row finished and the generation moved, in one transaction."""
    old = f"{load.live}__old{load.ledger_id}"
    fence = load.fence.up()
    fence.wait()  # before any lock: readers are never blocked by it
    conn.execute("SET LOCAL lock_timeout = '30s'")
    if schema_exists(conn, load.live):
        _lock_live(load, conn)
        conn.execute(f"ALTER SCHEMA {quote_ident(load.live)} RENAME TO {quote_ident(old)}")
    conn.execute(f"ALTER SCHEMA {quote_ident(load.build)} RENAME TO {quote_ident(load.live)}")
    ledger.finish_run(conn, load.ledger_id, status="succeeded", phases=load.phases,
                      rows={n: int(e["rows"]) for n, e in load.entries.items()},
                      peak_rss=peak_rss_bytes())
    load.fence.advance(conn, run_id=load.run.id, ledger_id=load.ledger_id)


def _lock_live(load: Load, conn: Any) -> None:
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
        "ORDER BY c.relname", (load.live,)).fetchall()
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
                    f"readers kept the tables of schema {load.live} busy for 30 s; the new data "
                    f"waits in schema {load.build}", dataset=load.live, run=load.run.id,
                    hint=f"run `etl load {load.run.path}` again: it resumes at the swap") from None


def cleanup_stale(load: Load, conn: Any) -> None:
    """Drop build and old schemas that earlier, interrupted loads left (we hold the lock). Only
    with the dataset's build lock alone: a connection of another load still working (one whose
    lock connection ended, so this load could take the lock) holds it shared, and its build
    schema is left to a later load."""
    rows = conn.execute(
        "SELECT nspname FROM pg_namespace WHERE nspname LIKE %s OR nspname LIKE %s",
        (f"{load.live}\\_\\_b%", f"{load.live}\\_\\_old%")).fetchall()
    stale = [name for (name,) in rows if name != load.build]
    if not stale:
        return
    key = pg.lock_key(build_lock_name(load.live))
    # A worker's session ends a moment after its process: wait a little for its shared hold.
    conn.execute(f"SET lock_timeout = '{BUILD_LOCK_WAIT}'")
    try:
        conn.execute("SELECT pg_advisory_lock(%s)", (key,))
    except psycopg.errors.LockNotAvailable:
        log.warning("%s: another load's connections still work in a build schema; leaving %s",
                    load.live, ", ".join(stale))
        return
    finally:
        conn.execute("RESET lock_timeout")
    try:
        for name in stale:
            log.info("dropping %s, left by an interrupted load", name)
            conn.execute(f"DROP SCHEMA IF EXISTS {quote_ident(name)} CASCADE")
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (key,))


def drop_old(load: Load, conn: Any) -> None:
    """After the swap (or a skipped load): the previous schema dropped, if it can be now."""
    try:
        cleanup_stale(load, conn)
    except Exception:
        log.warning("could not drop the previous schema yet; the next load will", exc_info=True)
