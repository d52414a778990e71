"""The run ledger (schema ``etl``) and the Alembic migrations that create it.

Every load writes one row to ``etl.runs``: dataset, staged run id, manifest hash, mode, status,
start and end, per-phase timings, rows per table, peak RSS and the error, if any. Finished steps
of a load go to ``etl.load_steps`` so an interrupted load can resume.

The ledger functions take a psycopg connection and run plain SQL on it, without committing: the
loader calls them inside its own transaction, so a step's work and its ledger row commit together.
On an autocommit connection each call stands alone.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import psycopg
from psycopg.rows import dict_row, tuple_row
from psycopg.types.json import Jsonb

from etl.errors import ConfigError
from etl.infra import pg
from etl.infra.errors import DatabaseError, DatabaseUnavailable
from etl.infra.pg import lock_key, sqlalchemy_url
from etl.metrics import Phase
from etl.shipped import shipped

log = logging.getLogger(__name__)

Mode = Literal["full", "unsafe-fast", "rebuild"]
Status = Literal["running", "succeeded", "failed", "interrupted", "abandoned"]

#: The Alembic scripts of the ledger (schema ``etl``), shipped inside the package. The datasets'
#: live schemas are not migrated: they come from the datasets' tables (:mod:`etl.infra.live`).

_COLUMNS = ("id, dataset, run_id, manifest_sha256, mode, status, started_at, ended_at, phases, rows, "
            "peak_rss, error, host, pid, ended_at - started_at AS duration")

_NO_LEDGER = "run `etl db upgrade` (or etl.infra.ledger.upgrade(url)) to create the ledger"


def _ledger_sql(conn: psycopg.Connection[Any], sql: str, params: Sequence[Any] | Mapping[str, Any] = (),
                ) -> psycopg.Cursor[dict[str, Any]]:
    """Run one ledger statement; a missing ledger becomes a :class:`DatabaseError` that says how
    to create it."""
    cur = conn.cursor(row_factory=dict_row)
    try:
        return cur.execute(sql, params)
    except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName) as exc:
        raise DatabaseError(f"the run ledger is missing from this database: {exc}".strip(),
                            hint=_NO_LEDGER) from exc


# ------------------------------------------------------------------------------ writing


def start_run(conn: psycopg.Connection[Any], *, dataset: str, run_id: str, manifest_sha256: str | None,
              mode: Mode | str) -> int:
    """Record a new load of ``run_id`` as ``running``; its ledger id."""
    row = _ledger_sql(
        conn,
        "INSERT INTO etl.runs (dataset, run_id, manifest_sha256, mode, status, host, pid) "
        "VALUES (%s, %s, %s, %s, 'running', %s, %s) RETURNING id",
        (dataset, run_id, manifest_sha256, mode, socket.gethostname(), os.getpid()),
    ).fetchone()
    assert row is not None
    log.info("ledger: run %s of %s %s started (%s)", row["id"], dataset, run_id, mode)
    return int(row["id"])


def resume_candidate(conn: psycopg.Connection[Any], *, dataset: str, run_id: str,
                     mode: Mode | str) -> int | None:
    """The latest ``running`` or ``failed`` load of the same dataset, run and mode, if the latest
    load of it did not succeed; None when there is nothing to resume."""
    row = _ledger_sql(
        conn,
        "SELECT id, status FROM etl.runs WHERE dataset = %s AND run_id = %s AND mode = %s "
        "ORDER BY started_at DESC, id DESC LIMIT 1",
        (dataset, run_id, mode),
    ).fetchone()
    if row is None or row["status"] not in ("running", "failed", "abandoned", "interrupted"):
        return None
    return int(row["id"])


def mark_running(conn: psycopg.Connection[Any], ledger_id: int) -> None:
    """Take a load up again (resume): status ``running``, no end or error, this host and process."""
    _ledger_sql(
        conn,
        "UPDATE etl.runs SET status = 'running', ended_at = NULL, error = NULL, host = %s, pid = %s "
        "WHERE id = %s",
        (socket.gethostname(), os.getpid(), ledger_id),
    )


def step_done(conn: psycopg.Connection[Any], ledger_id: int, step: str,
              detail: Mapping[str, Any] | None = None) -> None:
    """Record that ``step`` of a load is done (once: recording it again changes nothing)."""
    _ledger_sql(
        conn,
        "INSERT INTO etl.load_steps (run, step, detail) VALUES (%s, %s, %s) "
        "ON CONFLICT (run, step) DO NOTHING",
        (ledger_id, step, Jsonb(dict(detail)) if detail is not None else None),
    )


def record_drift(conn: psycopg.Connection[Any], ledger_id: int, manifest: Mapping[str, Any]) -> None:
    """Record what the run's stage found its spec does not declare (the manifest's ``drift``: the
    keys and types seen, and what each source's policy did: kept, evolved) as the load's
    ``drift`` step; nothing when there was none."""
    drift = manifest.get("drift")
    if not drift:
        return
    evolving = any(d.get("policy") == "evolve" for d in drift)
    evolved = manifest.get("spec", {}).get("sha256") if evolving else None
    step_done(conn, ledger_id, "drift", {"findings": list(drift), "evolved_spec_sha256": evolved})


def steps_done(conn: psycopg.Connection[Any], ledger_id: int) -> dict[str, dict[str, Any] | None]:
    """The finished steps of a load, in the order they finished, with their detail."""
    rows = _ledger_sql(
        conn, "SELECT step, detail FROM etl.load_steps WHERE run = %s ORDER BY done_at, step",
        (ledger_id,)).fetchall()
    return {r["step"]: r["detail"] for r in rows}


def _phase_dict(phase: Phase | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(phase, Phase):
        return {"name": phase.name, "seconds": round(phase.seconds, 4), "rows": phase.rows,
                "peak_rss": phase.peak_rss}
    return dict(phase)


def finish_run(conn: psycopg.Connection[Any], ledger_id: int, *, status: Status | str,
               phases: Sequence[Phase | Mapping[str, Any]], rows: Mapping[str, int], peak_rss: int | None,
               error: str | None = None) -> None:
    """Close a load: its status (``succeeded``, ``failed``, or ``interrupted`` by a signal), end
    time, figures and error."""
    _ledger_sql(
        conn,
        "UPDATE etl.runs SET status = %s, ended_at = now(), phases = %s, rows = %s, peak_rss = %s, "
        "error = %s WHERE id = %s",
        (status, Jsonb([_phase_dict(p) for p in phases]), Jsonb(dict(rows)), peak_rss, error, ledger_id),
    )
    log.info("ledger: run %s %s", ledger_id, status)


# ------------------------------------------------------------------------------ reading


def list_runs(conn: psycopg.Connection[Any], *, dataset: str | None = None, limit: int = 50,
              ) -> list[dict[str, Any]]:
    """The latest loads, newest first (all datasets, or one). A load recorded as ``running``
    whose dataset's load lock nobody holds (its loader was killed) reads as ``abandoned``."""
    where = "WHERE dataset = %s" if dataset else ""
    params: tuple[Any, ...] = (dataset, limit) if dataset else (limit,)
    return _abandoned(conn, _ledger_sql(
        conn, f"SELECT {_COLUMNS} FROM etl.runs {where} ORDER BY started_at DESC, id DESC LIMIT %s",
        params).fetchall())


def latest_per_run(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    """The latest load of each staged run (``abandoned`` when its loader is gone, as in
    :func:`list_runs`)."""
    return _abandoned(conn, _ledger_sql(
        conn, f"SELECT DISTINCT ON (dataset, run_id) {_COLUMNS} FROM etl.runs "
              "ORDER BY dataset, run_id, started_at DESC, id DESC").fetchall())


def live_sources(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    """Per dataset, the latest successful load and the latest successful full load (the one a
    merge since then built on): the runs the live schema came from (``id``, ``dataset``,
    ``run_id``, ``mode``)."""
    latest = ("SELECT * FROM (SELECT DISTINCT ON (dataset) id, dataset, run_id, mode FROM etl.runs "
              "WHERE status = 'succeeded' {} ORDER BY dataset, ended_at DESC NULLS LAST, id DESC) {}")
    return _ledger_sql(conn, latest.format("", "any_load") + " UNION "
                       + latest.format("AND mode <> 'merge'", "full_load")).fetchall()


def _abandoned(conn: psycopg.Connection[Any], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` with each ``running`` load whose loader is gone marked ``abandoned``: a running
    load holds its dataset's advisory lock on the server for its whole life (the session ends
    with the process), so a running row without it lies."""
    running = [r for r in rows if r["status"] == "running"]
    if not running:
        return rows
    held = {(int(c), int(o)) for c, o in conn.cursor(row_factory=tuple_row).execute(
        "SELECT classid::bigint, objid::bigint FROM pg_locks WHERE locktype = 'advisory' AND granted "
        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())").fetchall()}
    for r in running:
        key = lock_key(f"load:{r['dataset']}")
        if ((key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF) not in held:
            r["status"] = "abandoned"
    return rows


def close_abandoned(conn: psycopg.Connection[Any], *, dataset: str, keep: int) -> int:
    """Record every other ``running`` load of ``dataset`` as ``abandoned`` (called holding the
    dataset's load lock, so none of them can be alive); how many."""
    rows = _ledger_sql(
        conn, "UPDATE etl.runs SET status = 'abandoned', ended_at = coalesce(ended_at, now()), "
              "error = coalesce(error, 'the loader was gone (its lock was free); closed by load #' || %s) "
              "WHERE dataset = %s AND status = 'running' AND id <> %s RETURNING id",
        (keep, dataset, keep)).fetchall()
    for r in rows:
        log.warning("ledger: load #%s of %s was abandoned (its loader is gone)", r["id"], dataset)
    return len(rows)


def _like_prefix(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def get_run(conn: psycopg.Connection[Any], key: str) -> dict[str, Any]:
    """One load with its finished steps (``steps``: a list of {step, done_at, detail}).

    ``key`` is a ledger id (``42``), or a staged run id or a prefix of one (``mids-3f2a``,
    ``3f2a``): its latest load. A prefix that fits several run ids is refused."""
    key = key.strip()
    row = None
    if key.isdigit():
        row = _ledger_sql(conn, f"SELECT {_COLUMNS} FROM etl.runs WHERE id = %s", (int(key),)).fetchone()
    if row is None and key:
        prefix = _like_prefix(key)
        matches = _ledger_sql(
            conn,
            "SELECT run_id, max(started_at) AS latest FROM etl.runs "
            "WHERE run_id = %s OR run_id LIKE %s OR run_id LIKE '%%-' || %s "
            "GROUP BY run_id ORDER BY (run_id = %s) DESC, latest DESC",
            (key, prefix, prefix, key)).fetchall()
        if len(matches) > 1 and matches[0]["run_id"] != key:
            shown = ", ".join(m["run_id"] for m in matches[:5])
            raise ConfigError(f"{key!r} fits {len(matches)} run ids: {shown}", run=key,
                              hint="give more of the run id, or the ledger id from `etl runs`")
        if matches:
            row = _ledger_sql(
                conn, f"SELECT {_COLUMNS} FROM etl.runs WHERE run_id = %s "
                      "ORDER BY started_at DESC, id DESC LIMIT 1", (matches[0]["run_id"],)).fetchone()
    if row is None:
        raise ConfigError(f"no load of {key!r} in the run ledger", run=key,
                          hint="list the recorded loads with `etl runs`")
    _abandoned(conn, [row])
    row["steps"] = _ledger_sql(
        conn, "SELECT step, done_at, detail FROM etl.load_steps WHERE run = %s ORDER BY done_at, step",
        (row["id"],)).fetchall()
    return row


def last_success(conn: psycopg.Connection[Any], dataset: str) -> dict[str, Any] | None:
    """The latest load of ``dataset`` that succeeded, or None."""
    return _ledger_sql(
        conn, f"SELECT {_COLUMNS} FROM etl.runs WHERE dataset = %s AND status = 'succeeded' "
              "ORDER BY ended_at DESC NULLS LAST, id DESC LIMIT 1", (dataset,)).fetchone()


# ------------------------------------------------------------------------------ migrations


def alembic_config(url: str) -> Any:
    """An Alembic ``Config`` built in code (no alembic.ini): the repository's ``migrations/`` and
    ``url``."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(shipped("migrations")))
    # ConfigParser interpolates %: a URL-encoded password (p%40ss) must be doubled.
    cfg.set_main_option("sqlalchemy.url", sqlalchemy_url(url).replace("%", "%%"))
    cfg.attributes["url"] = sqlalchemy_url(url)
    return cfg


def _script() -> Any:
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(shipped("migrations")))


def heads() -> list[str]:
    """The head revision(s) of the migrations."""
    return list(_script().get_heads())


def check_known(url: str) -> None:
    """Raise :class:`DatabaseError` when the database's ledger is at a revision the shipped
    migrations do not have (a newer toolkit migrated it); none yet, or one behind the head, is
    fine (:func:`upgrade` brings it up)."""
    at = current(url)
    if at is None:
        return
    known = {rev.revision for rev in _script().walk_revisions()}
    unknown = sorted(set(at.split(",")) - known)
    if unknown:
        raise DatabaseError(f"the run ledger of this database is at revision {', '.join(unknown)}, "
                            "which this version of etl does not know (a newer one migrated it)",
                            hint="upgrade etl (pip install -U etl-staging), or use another database")


def current(url: str) -> str | None:
    """The revision the database at ``url`` is at (None: never migrated); a retired revision
    reads as the ledger revision it stands for (see :data:`RETIRED`)."""
    import sqlalchemy as sa

    engine = sa.create_engine(sqlalchemy_url(url), poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            version = conn.execute(sa.text("SELECT to_regclass('etl.alembic_version')")).scalar()
            if version is None:
                return None
            rows = conn.execute(sa.text("SELECT version_num FROM etl.alembic_version")).scalars().all()
    except sa.exc.OperationalError as exc:
        raise DatabaseUnavailable(f"cannot read the schema revision: {exc.orig or exc}",
                                  hint="check that PostgreSQL runs and the URL is right") from exc
    finally:
        engine.dispose()
    return ",".join(sorted(RETIRED.get(r, r) for r in rows)) if rows else None


#: Revisions that created or changed dataset schemas before those left the migrations, and the
#: ledger revision a database at one of them is at: 0004 was the only ledger revision among them.
RETIRED = {"0002_mids": "0001_ledger", "0003_aodb": "0001_ledger",
           "0005_licenses": "0004_generations", "0006_mids_extra": "0004_generations",
           "0007_aodb_extra": "0004_generations", "0008_licenses_extra": "0004_generations"}


def _restamp_retired(url: str) -> None:
    """A database stamped with a retired revision is stamped with its ledger revision instead
    (its dataset tables stay as they are; the next full load rebuilds them)."""
    with pg.connect(url) as conn:
        if conn.execute("SELECT to_regclass('etl.alembic_version')").fetchone() == (None,):
            return
        for old, new in RETIRED.items():
            conn.execute("UPDATE etl.alembic_version SET version_num = %s WHERE version_num = %s",
                         (new, old))


def upgrade(url: str, revision: str = "head") -> list[str]:
    """Apply the migrations up to ``revision`` to the database at ``url``; the revisions applied,
    oldest first (empty when it was already there)."""
    import sqlalchemy as sa
    from alembic import command
    from alembic.util import CommandError

    cfg = alembic_config(url)
    _restamp_retired(url)
    before = current(url)
    try:
        command.upgrade(cfg, revision)
    except CommandError as exc:
        raise ConfigError(f"cannot upgrade to {revision!r}: {exc}",
                          hint="give a revision from migrations/versions, or 'head'") from exc
    except sa.exc.OperationalError as exc:
        raise DatabaseUnavailable(f"cannot apply the migrations: {exc.orig or exc}",
                                  hint="check that PostgreSQL runs and the URL is right") from exc
    except sa.exc.DBAPIError as exc:
        raise DatabaseError(f"a migration failed: {exc.orig or exc}",
                            hint="see the statement above; the database was left at revision "
                                 f"{before or 'none'}") from exc
    after = current(url)
    if after == before or after is None:
        return []
    applied = [rev.revision for rev in _script().iterate_revisions(after, before)]
    applied.reverse()
    log.info("migrations applied: %s (now at %s)", ", ".join(applied) or "none", after)
    return applied
