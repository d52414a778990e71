"""Operations: health checks, database statistics, and optimizing (refresh views, ANALYZE).

Each function returns plain data (dicts and lists) for the CLI to show or a monitor to read.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from typing import Any, Literal

import psycopg

from etl.datasets import available
from etl.errors import EtlError, mask_secrets
from etl.infra import ledger, pg
from etl.infra.pg import quote_ident
from etl.staging_fs import RemotePath, StagePath

log = logging.getLogger(__name__)

Status = Literal["ok", "warn", "fail", "skip"]

#: Below this much free space in the staging directory the check warns.
MIN_FREE_BYTES = 1 << 30


def _check(name: str, status: Status, detail: str, *, required: bool = True, **data: Any) -> dict[str, Any]:
    return {"name": name, "status": status, "required": required, "detail": detail, **data}


def health(database_url: str, *, redis_url: str | None, staging_dir: StagePath) -> dict[str, Any]:
    """Check each part: the database (reachable, version), the migrations (at head), Redis
    (optional), the staging directory (writable, free space) and each dataset's last load.

    ``ok`` in the result is False when a required check failed; Redis, free space and failed
    last loads only warn."""
    checks: list[dict[str, Any]] = []
    conn: psycopg.Connection[Any] | None = None
    try:
        conn = pg.connect(database_url, connect_timeout=5)
        version = conn.execute("SHOW server_version").fetchone()
        checks.append(_check("database", "ok", f"PostgreSQL {version[0] if version else '?'} at "
                                                f"{mask_secrets(database_url)}",
                             version=version[0] if version else None))
    except EtlError as exc:
        checks.append(_check("database", "fail", exc.message, hint=exc.hint))

    if conn is not None:
        try:
            heads = ledger.heads()
            current = ledger.current(database_url)
            if current is not None and set(current.split(",")) == set(heads):
                checks.append(_check("migrations", "ok", f"at head {current}", current=current))
            else:
                checks.append(_check("migrations", "fail", f"at {current or 'none'}, head is "
                                     f"{', '.join(heads)}", current=current, head=heads,
                                     hint="run `etl db upgrade`"))
        except EtlError as exc:
            checks.append(_check("migrations", "fail", exc.message, hint=exc.hint))
    else:
        checks.append(_check("migrations", "skip", "the database is unreachable"))

    checks.append(_redis_check(redis_url))
    checks.append(_staging_check(staging_dir))

    if conn is not None:
        for name in sorted(available()):
            checks.append(_last_run_check(conn, name))
        conn.close()
    ok = not any(c["status"] == "fail" and c["required"] for c in checks)
    return {"ok": ok, "checks": checks}


def _redis_check(redis_url: str | None) -> dict[str, Any]:
    if not redis_url:
        return _check("redis", "skip", "not configured (ETL_REDIS_URL): the cache is in-process only",
                      required=False)
    from etl.infra.cache import redis_client

    client = redis_client(redis_url)
    try:
        start = time.perf_counter()
        client.ping()
        ms = (time.perf_counter() - start) * 1000
        version = client.info("server").get("redis_version")
        return _check("redis", "ok", f"Redis {version} at {mask_secrets(redis_url)} ({ms:.1f} ms)",
                      required=False, version=version)
    except Exception as exc:
        return _check("redis", "warn", f"unreachable at {mask_secrets(redis_url)}: {exc}", required=False,
                      hint="reads still work (in-process cache + PostgreSQL); start Redis or fix "
                           "ETL_REDIS_URL")
    finally:
        client.close()


def _staging_check(staging_dir: StagePath) -> dict[str, Any]:
    if isinstance(staging_dir, RemotePath):
        probe = staging_dir / f".health-{os.getpid()}"
        try:
            staging_dir.mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"ok")
            probe.unlink(missing_ok=True)
        except OSError as exc:
            return _check("staging", "fail", f"{staging_dir} is not writable: {exc}",
                          hint="check the filesystem's credentials (its usual environment variables)")
        return _check("staging", "ok", f"{staging_dir} writable", path=str(staging_dir))
    folder = staging_dir.resolve()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".health-", delete=True) as f:
            f.write(b"ok")
            f.flush()
        free = shutil.disk_usage(folder).free
    except OSError as exc:
        return _check("staging", "fail", f"{folder} is not writable: {exc}",
                      hint="set --staging-dir or ETL_STAGING_DIR to a writable folder")
    detail = f"{folder} writable, {free / 1e9:,.1f} GB free"
    if free < MIN_FREE_BYTES:
        return _check("staging", "warn", detail + " (under 1 GB)", path=str(folder), free_bytes=free)
    return _check("staging", "ok", detail, path=str(folder), free_bytes=free)


def _last_run_check(conn: psycopg.Connection[Any], dataset: str) -> dict[str, Any]:
    name = f"last load: {dataset}"
    try:
        runs = ledger.list_runs(conn, dataset=dataset, limit=1)
    except EtlError as exc:
        return _check(name, "skip", exc.message, required=False)
    if not runs:
        return _check(name, "skip", "never loaded", required=False)
    r = runs[0]
    when = r["ended_at"] or r["started_at"]
    detail = f"#{r['id']} {r['run_id']} {r['status']} at {when:%Y-%m-%d %H:%M:%S}"
    status: Status = {"succeeded": "ok", "running": "ok"}.get(r["status"], "warn")  # type: ignore[assignment]
    return _check(name, status, detail, required=False, ledger_id=r["id"], run_id=r["run_id"],
                  run_status=r["status"],
                  hint=f"see `etl runs show {r['id']}`" if status == "warn" else None)


# ------------------------------------------------------------------------------ stats


def stats(database_url: str, *, runs: int = 10) -> dict[str, Any]:
    """Rows per table per dataset (exact counts), table and index sizes (tables and materialized
    views), each dataset's generation, and the last loads with their timings."""
    out: dict[str, Any] = {"datasets": {}, "runs": []}
    with pg.connect(database_url) as conn:
        for name in sorted(available()):
            rels = conn.execute(
                "SELECT c.relname, c.relkind, pg_relation_size(c.oid), pg_indexes_size(c.oid), "
                "pg_total_relation_size(c.oid) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %s AND c.relkind IN ('r', 'p', 'm') ORDER BY c.relname",
                (name,)).fetchall()
            if not rels:
                continue
            tables = []
            for relname, kind, size, index_size, total in rels:
                populated = True
                if kind == "m":
                    row = conn.execute("SELECT ispopulated FROM pg_matviews WHERE schemaname = %s AND "
                                       "matviewname = %s", (name, relname)).fetchone()
                    populated = bool(row and row[0])
                count = None
                if populated:
                    got = conn.execute(
                        f"SELECT count(*) FROM {quote_ident(name)}.{quote_ident(relname)}").fetchone()
                    count = int(got[0]) if got else 0
                tables.append({"table": relname, "kind": "view" if kind == "m" else "table", "rows": count,
                               "table_bytes": int(size), "index_bytes": int(index_size),
                               "total_bytes": int(total)})
            out["datasets"][name] = {
                "tables": tables,
                "rows": sum(t["rows"] or 0 for t in tables if t["kind"] == "table"),
                "total_bytes": sum(t["total_bytes"] for t in tables),
            }
        try:
            from etl.infra.cache import generations

            for name, gen in generations(conn).items():
                out["datasets"].setdefault(name, {"tables": [], "rows": 0, "total_bytes": 0})
                out["datasets"][name]["generation"] = gen["generation"]
        except EtlError:
            log.info("no generations table yet (migration 0004)")
        try:
            # The ledger's rows as `etl runs` lists them: one shape for a load everywhere.
            out["runs"] = ledger.list_runs(conn, limit=runs)
        except EtlError as exc:
            log.info("no run ledger: %s", exc.message)
    return out


# ------------------------------------------------------------------------------ optimize


def _can_refresh_concurrently(conn: psycopg.Connection[Any], schema: str, view: str) -> tuple[bool, str]:
    """REFRESH ... CONCURRENTLY needs a populated view with a unique, non-partial index on plain
    columns."""
    row = conn.execute("SELECT ispopulated FROM pg_matviews WHERE schemaname = %s AND matviewname = %s",
                       (schema, view)).fetchone()
    if not row or not row[0]:
        return False, "not populated yet"
    idx = conn.execute(
        "SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n "
        "ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s AND i.indisunique "
        "AND i.indisvalid AND i.indpred IS NULL AND i.indexprs IS NULL LIMIT 1", (schema, view)).fetchone()
    if idx is None:
        return False, "no unique index on plain columns"
    return True, ""


def optimize(database_url: str, *, datasets: list[str] | None = None) -> dict[str, Any]:
    """Refresh every materialized view of the datasets' live schemas (CONCURRENTLY when the view
    allows it, so readers are never blocked), then ANALYZE their tables. Holds each dataset's
    load lock meanwhile (a load in progress makes it stop with :class:`~etl.infra.pg.LockBusy`).

    The views are rebuilt from unchanged tables, so their content (and the cache generation)
    stays the same."""
    names = datasets or sorted(available())
    report: dict[str, Any] = {"datasets": {}, "seconds": 0.0}
    start = time.perf_counter()
    with pg.connect(database_url) as conn:
        conn.execute("SET application_name = 'etl optimize'")
        for name in names:
            if conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (name,)).fetchone() is None:
                continue
            entry: dict[str, Any] = {"views": [], "analyze": []}
            with pg.advisory_lock(conn, f"load:{name}", what=f"load of {name}"):
                views = [r[0] for r in conn.execute(
                    "SELECT matviewname FROM pg_matviews WHERE schemaname = %s ORDER BY matviewname",
                    (name,)).fetchall()]
                for view in views:
                    concurrent, why = _can_refresh_concurrently(conn, name, view)
                    t0 = time.perf_counter()
                    target = f"{quote_ident(name)}.{quote_ident(view)}"
                    conn.execute(f"REFRESH MATERIALIZED VIEW {'CONCURRENTLY ' if concurrent else ''}{target}")
                    entry["views"].append({"view": view, "concurrently": concurrent, "why_not": why or None,
                                           "seconds": round(time.perf_counter() - t0, 3)})
                    log.info("refreshed %s%s", target, " concurrently" if concurrent else f" ({why})")
                rels = [r[0] for r in conn.execute(
                    "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = %s AND c.relkind IN ('r', 'p', 'm') ORDER BY c.relname",
                    (name,)).fetchall()]
                for rel in rels:
                    t0 = time.perf_counter()
                    conn.execute(f"ANALYZE {quote_ident(name)}.{quote_ident(rel)}")
                    entry["analyze"].append({"table": rel, "seconds": round(time.perf_counter() - t0, 3)})
            report["datasets"][name] = entry
    report["seconds"] = round(time.perf_counter() - start, 3)
    return report



def runs(database_url: str, *, dataset: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
    """The loads recorded in the run ledger, newest first (``etl runs``)."""
    with pg.connect(database_url) as conn:
        return ledger.list_runs(conn, dataset=dataset, limit=limit)


def run_info(database_url: str, run: str) -> dict[str, Any]:
    """One load of the run ledger: by ledger id, or a staged run id or its prefix (``etl runs show``)."""
    with pg.connect(database_url) as conn:
        return ledger.get_run(conn, run)


def upgrade(database_url: str, *, revision: str = "head") -> dict[str, Any]:
    """``etl db upgrade``: the ledger's migrations up to ``revision``, then (at head) the live
    schema of every registered dataset that has none, derived from its tables. Returns the
    revisions applied, the schemas created and the revision the database is now at."""
    from etl.datasets import get_dataset
    from etl.infra.live import ensure_live_schemas

    applied = ledger.upgrade(database_url, revision)
    created = (ensure_live_schemas(database_url, [get_dataset(n) for n in available()])
               if revision == "head" else [])
    return {"applied": applied, "created": created, "current": ledger.current(database_url)}
