"""Errors of the infrastructure: the database, its lock, the embedded server, the read cache.

A :class:`DatabaseError` is terminal (the server refused what was asked, the ledger is missing)
unless it is a :class:`DatabaseUnavailable` (cannot connect, the connection was lost, the worker
holding it died): that kind is transient, and retries try again. :func:`database_error` picks the
kind from the driver error that caused it.
"""

from __future__ import annotations

import psycopg

from etl.errors import EtlError, TerminalError, TransientError
from etl.errors import is_transient as _is_transient_etl


class DatabaseError(EtlError):
    """The database refused what was asked, or cannot be reached (:class:`DatabaseUnavailable`)."""

    exit_code = 3


class DatabaseUnavailable(DatabaseError, TransientError):
    """The database cannot be reached, or the connection was lost: worth trying again."""

    transient = True


class NoDatabase(DatabaseError, TerminalError):
    """No database is given and the project's embedded server is not running: a read-only command
    does not start one."""

    transient = False


class LockBusy(TerminalError):
    """Another process holds the dataset's load lock."""

    exit_code = 4


class LockLost(LockBusy):
    """A load's lock went with its lock connection's session: another load may hold it now, so
    this one stops before its next step."""


def database_error(message: str, cause: BaseException | None, **kwargs: object) -> DatabaseError:
    """A :class:`DatabaseError` for ``message``, of the transient kind when ``cause`` is (see
    :func:`is_transient`)."""
    kind = DatabaseUnavailable if cause is not None and is_transient(cause) else DatabaseError
    return kind(message, **kwargs)  # type: ignore[arg-type]


class EmbeddedError(TerminalError):
    """The private server cannot be found, created, started or stopped."""

    exit_code = 3


class CacheError(TerminalError):
    """The cache cannot answer (the database behind it is missing a table, or a query failed)."""

    exit_code = 3


class NotFound(TerminalError):
    """Nothing matches what was asked for in the live data."""

    exit_code = 1


#: SQLSTATEs worth a retry: the connection (class 08), a serialization failure or deadlock
#: (40001, 40P01), too many connections (53300), a server shutting down or starting (57P01-03).
_TRANSIENT_STATES = frozenset({"40001", "40P01", "53300", "57P01", "57P02", "57P03"})
#: ADBC's status code for an I/O failure (a lost or refused connection).
_ADBC_IO = 10


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is worth a retry, asked of its type and codes, never its message: the
    toolkit's errors say so (:class:`~etl.errors.TransientError`); a driver error by its SQLSTATE
    (see :data:`_TRANSIENT_STATES`; every other state is a refused statement or value, terminal);
    one without a SQLSTATE by its class: psycopg's ``OperationalError``/``InterfaceError`` and
    ADBC's I/O status mean the connection itself failed."""
    if isinstance(exc, EtlError):
        return _is_transient_etl(exc)
    state = getattr(exc, "sqlstate", None)
    if isinstance(state, str) and state:
        return state[:2] == "08" or state in _TRANSIENT_STATES
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        return True
    return getattr(exc, "status_code", None) == _ADBC_IO and type(exc).__module__.startswith("adbc")
