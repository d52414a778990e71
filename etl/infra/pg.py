"""PostgreSQL adapter: connection URLs, connections (psycopg, ADBC, SQLAlchemy), retries, locks.

Every other module reaches the database through here, so URL handling, password masking and the
retry policy live in one place.
"""

from __future__ import annotations

import logging
import random
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import psycopg

from etl.errors import ConfigError, mask_secrets

# DatabaseError and LockBusy are imported from here too (they were defined here before).
from etl.infra.errors import DatabaseError as DatabaseError
from etl.infra.errors import DatabaseUnavailable, LockBusy
from etl.infra.errors import is_transient as is_transient

log = logging.getLogger(__name__)
T = TypeVar("T")


def normalize_url(url: str) -> str:
    """A libpq URL (``postgresql://…``) from what a user may write (``postgres://``,
    ``postgresql+psycopg://``)."""
    parts = urlsplit(url)
    scheme = parts.scheme.split("+", 1)[0]
    if scheme == "postgres":
        scheme = "postgresql"
    if scheme != "postgresql":
        raise ConfigError(f"not a PostgreSQL URL: {mask_secrets(url)}",
                          hint="use postgresql://user:password@host:5432/database")
    if parts.netloc.count("@") > 1:
        # libpq would read what follows the first '@' as the host and say so, password and all.
        raise ConfigError(f"the URL's password holds a raw '@': {mask_secrets(url)}",
                          hint="percent-encode it: '@' is %40 (e.g. postgresql://me:p%40ss@host/db)")
    return urlunsplit((scheme, *parts[1:]))


def sqlalchemy_url(url: str) -> str:
    """The SQLAlchemy form of a libpq URL (psycopg 3 driver)."""
    return "postgresql+psycopg" + normalize_url(url)[len("postgresql"):]


def with_database(url: str, database: str) -> str:
    """The same server, another database."""
    parts = urlsplit(normalize_url(url))
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))


def connect(url: str, *, autocommit: bool = True, **kwargs: Any) -> psycopg.Connection[Any]:
    """A psycopg connection; connection failures become a :class:`DatabaseError` with a next step."""
    try:
        return psycopg.connect(normalize_url(url), autocommit=autocommit, **kwargs)
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"cannot connect to {mask_secrets(normalize_url(url))}: {exc}".strip(),
                            hint="check that PostgreSQL runs and the URL (--database-url, "
                                 "ETL_DATABASE_URL) is right") from exc


def preload_adbc() -> None:
    """Import the ADBC DB-API module and map the PostgreSQL driver library now, in this
    process: forked workers (:mod:`etl.load.forked`) inherit both instead of each paying ~90 ms."""
    import ctypes

    import adbc_driver_postgresql
    import adbc_driver_postgresql.dbapi

    ctypes.CDLL(adbc_driver_postgresql._driver_path())


def connect_adbc(url: str, *, autocommit: bool = False) -> Any:
    """An ADBC DB-API connection (binary COPY ingest, Arrow results)."""
    import adbc_driver_postgresql.dbapi as adbc

    try:
        return adbc.connect(normalize_url(url), autocommit=autocommit)
    except Exception as exc:  # the driver raises its own OperationalError family
        raise DatabaseUnavailable(f"cannot connect to {mask_secrets(normalize_url(url))}: {exc}".strip(),
                                  hint="check that PostgreSQL runs and the URL is right") from exc


def retry(fn: Callable[[], T], *, what: str, attempts: int = 4, first_delay: float = 0.5,
          next_step: str, sleep: Callable[[float], None] = time.sleep) -> T:
    """Call ``fn``; on a lost connection wait (about 0.5 s, 1 s, 2 s, …: exponential backoff,
    each wait drawn from [½, 1½] of it so that parallel workers do not retry in step) and try
    again, then give up with a :class:`DatabaseError` that names ``next_step``. Any other error
    (a refused statement: a constraint, a bad value) is terminal and raised at once, unretried
    (:func:`is_transient` decides, by type)."""
    delay = first_delay
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as exc:
            if not is_transient(exc):
                raise
            if attempt == attempts:
                raise DatabaseUnavailable(f"{what}: connection lost {attempts} times: {exc}".strip(),
                                          hint=next_step) from exc
            wait = delay * random.uniform(0.5, 1.5)
            log.warning("%s: connection lost (%s); retry %d/%d in %.1f s", what,
                        mask_secrets(str(exc)).strip(), attempt, attempts - 1, wait)
            sleep(wait)
            delay *= 2
    raise AssertionError("unreachable")


def lock_key(name: str) -> int:
    """A stable advisory-lock key for a name (signed 64-bit, as PostgreSQL wants)."""
    return zlib.crc32(f"etl:{name}".encode()) | (0x5E7 << 32)


@contextmanager
def advisory_lock(conn: psycopg.Connection[Any], name: str, *, what: str) -> Iterator[None]:
    """Hold a session advisory lock for ``name`` on ``conn``, or raise :class:`LockBusy` at once.

    The lock goes with the session, so a killed process frees it."""
    key = lock_key(name)
    got = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
    if not got or not got[0]:
        holder = conn.execute(
            "SELECT a.pid, a.application_name, a.backend_start FROM pg_locks l "
            "JOIN pg_stat_activity a USING (pid) WHERE l.locktype = 'advisory' "
            "AND l.objid = %s::bigint & x'ffffffff'::bigint AND l.granted "
            # Advisory locks are per database; pg_locks shows the whole server's.
            "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "LIMIT 1", (key,)).fetchone()
        who = f" (server pid {holder[0]}, {holder[1] or 'etl'}, since {holder[2]:%H:%M:%S})" if holder else ""
        raise LockBusy(f"another {what} holds the lock{who}",
                       hint="wait for it to finish (see `etl runs`), then run this again")
    try:
        yield
    finally:
        if not conn.closed:
            conn.execute("SELECT pg_advisory_unlock(%s)", (key,))


def holds_lock(conn: psycopg.Connection[Any], name: str) -> bool:
    """Whether ``conn``'s session still holds the advisory lock for ``name`` (False when the
    connection is gone: a session that ended holds nothing)."""
    key = lock_key(name)
    try:
        row = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE pid = pg_backend_pid() AND locktype = 'advisory' "
            "AND granted AND objid = (%s::bigint & x'ffffffff'::bigint) AND classid = (%s::bigint >> 32)",
            (key, key)).fetchone()
    except psycopg.Error:
        return False
    return bool(row and row[0])


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def resolve_url(database_url: str | None) -> str:
    """The database to use: the given URL, else the embedded server under the project directory
    (started if needed)."""
    if database_url:
        return normalize_url(database_url)
    from etl.infra import embedded

    return embedded.ensure_started()
