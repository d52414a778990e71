"""Merge mode (``etl load --mode merge``): the staged rows upserted into the live tables.

A clearly separate path: no build schema, no swap. In one transaction on one ADBC connection,
each table's staged rows are COPYed into a temporary table (ON COMMIT DROP), then upserted into
the live table, parents before children::

    INSERT … SELECT … FROM temp ON CONFLICT (primary key) DO UPDATE SET …
    WHERE (live row) IS DISTINCT FROM (EXCLUDED row)  RETURNING (xmax = 0)

so only new rows are inserted and only rows whose values differ are updated (and counted:
inserted / updated / unchanged). With ``delete_missing`` rows absent from the import are
deleted, children first — only rows carrying the import's tag(s) in tables with a tag column,
and in other tables only rows no live row references. Every staged row is then checked to be in
the live table as staged (EXCEPT), or nothing commits. If the live schema does not exist
(``etl db upgrade`` and the load's start normally create it from the dataset's tables), the
merge creates it, with its keys and the dataset's SQL, in the same transaction. The ledger row
(mode ``merge``, counts in its phases) is finished and the read cache's generation bumped, when
anything changed, right after the commit.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import TYPE_CHECKING, Any

from etl.infra import ledger, pg
from etl.infra.pg import quote_ident
from etl.infra.schema import constraints_sql, create_tables_sql, fkey_index_sql, uncovered_foreign_keys
from etl.load import plan
from etl.load._utils import compared, lit, sql_files
from etl.load.diagnostics import copy_error
from etl.load.errors import VerificationFailed
from etl.load.plan import LoadResult, manifest_digest
from etl.load.tables import table_reader
from etl.metrics import Phase, peak_rss_bytes

if TYPE_CHECKING:
    from etl.load.state import Load

log = logging.getLogger(__name__)


def merge(load: Load, *, delete_missing: bool) -> LoadResult:
    """The whole merge (in a worker, retried as one), then its ledger row and the generation."""
    digest = manifest_digest(load.run, load.tag)
    result = LoadResult(load.run, load.url, None, load.live, load.mode, tag=load.tag)
    with plan.locked(load) as lock_conn:
        load.ledger_id = ledger.start_run(lock_conn, dataset=load.live, run_id=load.run.id,
                                          manifest_sha256=digest, mode=load.mode)
        ledger.record_drift(lock_conn, load.ledger_id, load.run.manifest)
        ledger.close_abandoned(lock_conn, dataset=load.live, keep=load.ledger_id)
        result.ledger_id = load.ledger_id
        try:
            start = time.perf_counter()
            counts = load.retry("merge", lambda: load.in_worker(_merge_once, delete_missing))
            rows = sum(c["staged"] for c in counts.values())
            load.phases.append(Phase("merge", time.perf_counter() - start, rows,
                                     peak_rss_bytes(), extra={"tables": counts}))
            result.merged = counts
            with pg.connect(load.url, autocommit=False) as conn:
                ledger.finish_run(conn, load.ledger_id, status="succeeded", phases=load.phases,
                                  rows={n: c["staged"] for n, c in counts.items()},
                                  peak_rss=peak_rss_bytes())
                if result.changed:
                    load.fence.up().wait()
                    load.fence.advance(conn, run_id=load.run.id, ledger_id=load.ledger_id)
                conn.commit()
            load.fence.publish()
        except BaseException as exc:
            plan.fail(load, exc)
            raise
        finally:
            load.close()
    result.rows = {n: c["staged"] for n, c in result.merged.items()}
    result.phases = load.phases
    return result


def _merge_once(load: Load, delete_missing: bool) -> dict[str, dict[str, int]]:
    """In a worker: the whole merge, in one transaction."""
    conn = load.adbc()
    try:
        cur = conn.cursor()
        cur.execute("SELECT 1 FROM pg_namespace WHERE nspname = " + lit(load.live))
        if cur.fetchone() is None:
            log.info("schema %s does not exist; the merge creates it", load.live)
            cur.execute(f"CREATE SCHEMA {quote_ident(load.live)}")
            for stmt in [*create_tables_sql(load.dataset, load.live),
                         *constraints_sql(load.dataset, load.live)]:
                cur.execute(stmt)
            if sql_files(load.dataset):
                cur.execute(f"SET LOCAL search_path = {quote_ident(load.live)}, public")
                for path in sql_files(load.dataset):
                    cur.execute(path.read_text())
                cur.execute("SET LOCAL search_path TO DEFAULT")
        order = _merge_order(load)
        counts = {}
        for name in order:
            load.faults.drop(f"merge:{name}", conn)
            counts[name] = _merge_table(load, cur, name, delete_missing=delete_missing)
        if delete_missing:
            # Each delete of a referenced row checks its referencing rows: indexed, or every
            # check reads the whole referencing table (a live schema made before the loader
            # indexed foreign keys gets the index here, once).
            for t in load.dataset.tables:
                for fk in uncovered_foreign_keys(t):
                    cur.execute(fkey_index_sql(load.live, t, fk))
            for name in reversed(order):
                counts[name]["deleted"] = _delete_missing(load, cur, name)
        for name in order:
            _merge_check(load, cur, name)
        load.faults.kill("merge")
        conn.commit()
        cur.close()
    except BaseException:
        load.drop_adbc()
        raise
    return counts


def _merge_order(load: Load) -> list[str]:
    """Tables with the tables they reference first."""
    order: list[str] = []

    def visit(name: str, trail: tuple[str, ...] = ()) -> None:
        if name in order or name in trail:
            return
        for fk in load.tables[name].foreign_keys:
            if fk.table != name:
                visit(fk.table, (*trail, name))
        order.append(name)

    for t in load.dataset.tables:
        visit(t.name)
    return order


def _temp_name(table: str) -> str:
    """The merge's temporary table for ``table``: ``_merge_<table>``, or where that is over
    PostgreSQL's 63 bytes (it would cut two long names to one), ``_merge_<hash of the name>``."""
    name = f"_merge_{table}"
    if len(name.encode()) <= 63:
        return name
    return "_merge_" + hashlib.sha256(table.encode()).hexdigest()[:24]


def _merge_table(load: Load, cur: Any, name: str, *, delete_missing: bool) -> dict[str, int]:
    table = load.tables[name]
    live = f"{quote_ident(load.live)}.{quote_ident(name)}"
    temp = quote_ident(_temp_name(name))
    cols = [c.name for c in table.columns]
    col_list = ", ".join(quote_ident(c) for c in cols)
    pk = list(table.primary_key)
    rest = [c for c in cols if c not in pk]
    cur.execute(f"CREATE TEMP TABLE {temp} (LIKE {live} INCLUDING DEFAULTS) ON COMMIT DROP")
    reader, staged = table_reader(load.run, table, load.entries[name], for_copy=True,
                                  tag=load.tag_of(name), schema=load.arrow_schemas[name])
    try:
        cur.adbc_ingest(_temp_name(name), reader, mode="append", temporary=True)
    except Exception as exc:
        if pg.is_transient(exc):
            raise
        raise copy_error(exc, load.run, name, load.entries[name]) from exc
    # Indexed and analyzed: unanalyzed, the planner takes the temporary table for a few rows and
    # joins it by nested loops, which made --delete-missing quadratic (137 s for 20,000 results).
    cur.execute(f"CREATE INDEX ON {temp} ({', '.join(quote_ident(c) for c in pk)})")
    cur.execute(f"ANALYZE {temp}")
    if rest:
        sets = ", ".join(f"{quote_ident(c)} = EXCLUDED.{quote_ident(c)}" for c in rest)
        mine = ", ".join(compared(table, c, "t.") for c in rest)
        theirs = ", ".join(compared(table, c, "EXCLUDED.") for c in rest)
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


def _delete_missing(load: Load, cur: Any, name: str) -> int:
    table = load.tables[name]
    live = f"{quote_ident(load.live)}.{quote_ident(name)}"
    temp = quote_ident(_temp_name(name))
    match = " AND ".join(f"m.{quote_ident(c)} = t.{quote_ident(c)}" for c in table.primary_key)
    where = [f"NOT EXISTS (SELECT 1 FROM {temp} m WHERE {match})"]
    tag_col = load.dataset.tag_columns.get(name)
    if tag_col:
        where.append(f"t.{quote_ident(tag_col)} IN (SELECT DISTINCT {quote_ident(tag_col)} "
                     f"FROM {temp})")
    for child in load.dataset.tables:
        for fk in child.foreign_keys:
            if fk.table != name:
                continue
            on = " AND ".join(f"c.{quote_ident(a)} = t.{quote_ident(b)}"
                              for a, b in zip(fk.columns, fk.ref_columns, strict=True))
            where.append(f"NOT EXISTS (SELECT 1 FROM {quote_ident(load.live)}."
                         f"{quote_ident(child.name)} c WHERE {on})")
    cur.execute(f"WITH gone AS (DELETE FROM {live} AS t WHERE {' AND '.join(where)} "
                "RETURNING 1) SELECT count(*) FROM gone")
    return int(cur.fetchone()[0])


def _merge_check(load: Load, cur: Any, name: str) -> None:
    """Every staged row must now be in the live table exactly as staged."""
    table = load.tables[name]
    cols = ", ".join(compared(table, c.name) for c in table.columns)
    cur.execute(f"SELECT count(*) FROM (SELECT {cols} FROM {quote_ident(_temp_name(name))} "
                f"EXCEPT SELECT {cols} FROM {quote_ident(load.live)}.{quote_ident(name)}) x")
    missing = int(cur.fetchone()[0])
    if missing:
        raise VerificationFailed(
            f"merge of {name}: {missing} staged row(s) are not in the live table as staged; "
            "nothing was committed", dataset=load.live, run=load.run.id,
            hint="a row may share its primary key with another staged row; check the "
                 "dataset's unique rules, then merge again")
