"""Errors of the infrastructure: the database, its lock, the embedded server, the read cache.

A :class:`DatabaseError` is terminal (the server refused what was asked, the ledger is missing)
unless it is a :class:`DatabaseUnavailable` (cannot connect, the connection was lost, the worker
holding it died): that kind is transient, and retries try again. :func:`database_error` picks the
kind from the driver error that caused it.
"""

from __future__ import annotations

from etl.errors import EtlError, TerminalError, TransientError


class DatabaseError(EtlError):
    """The database refused what was asked, or cannot be reached (:class:`DatabaseUnavailable`)."""

    exit_code = 3


class DatabaseUnavailable(DatabaseError, TransientError):
    """The database cannot be reached, or the connection was lost: worth trying again."""

    transient = True


class LockBusy(TerminalError):
    """Another process holds the dataset's load lock."""

    exit_code = 4


def database_error(message: str, cause: BaseException | None, **kwargs: object) -> DatabaseError:
    """A :class:`DatabaseError` for ``message``, of the transient kind when ``cause`` is (see
    :func:`etl.infra.pg.is_transient`)."""
    from etl.infra.pg import is_transient

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
