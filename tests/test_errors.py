"""Errors by type: every error the toolkit raises is transient or terminal, and retries ask the
type and the driver's codes, never the message (real PostgreSQL, real drivers)."""

from __future__ import annotations

import importlib
import pkgutil

import psycopg
import pytest

import etl
from etl.errors import EtlError, TerminalError, TransientError, is_transient
from etl.infra import pg
from etl.infra.errors import DatabaseError, DatabaseUnavailable, database_error


def _all_error_classes() -> set[type[EtlError]]:
    for info in pkgutil.walk_packages(etl.__path__, "etl."):
        if info.name.startswith("etl.cli") or info.name.endswith("__main__"):
            continue
        importlib.import_module(info.name)
    seen: set[type[EtlError]] = set()
    todo = [EtlError]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            if sub not in seen:
                seen.add(sub)
                todo.append(sub)
    return seen


def test_every_error_has_a_kind() -> None:
    """No error class is left between the two kinds (a new one must say which it is)."""
    kindless = [c.__qualname__ for c in _all_error_classes()
                if not issubclass(c, TransientError | TerminalError)
                and c is not DatabaseError]  # the base of both database kinds
    assert kindless == []
    assert DatabaseUnavailable.transient and not DatabaseError.transient
    assert not etl.ValidationFailed.transient and not etl.InputError.transient


def test_each_stage_package_has_its_errors_module() -> None:
    for pkg in ("stage", "validate", "transform", "load", "infra"):
        importlib.import_module(f"etl.{pkg}.errors")


def test_refused_statement_is_terminal_whatever_its_text(pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn, pytest.raises(psycopg.Error) as exc:
        # a refused value whose message text speaks of a "connection"
        conn.execute("SELECT 'connection lost, server closed'::integer")
    assert exc.value.sqlstate == "22P02"
    assert not pg.is_transient(exc.value)


def test_adbc_errors_are_judged_by_code(pg_url: str) -> None:
    import adbc_driver_postgresql.dbapi as adbc

    with adbc.connect(pg_url) as conn, conn.cursor() as cur, pytest.raises(Exception) as refused:
        cur.execute("SELECT 1 / 0")
    assert getattr(refused.value, "sqlstate", None) == "22012"
    assert not pg.is_transient(refused.value)
    with pytest.raises(Exception) as unreachable:
        adbc.connect("postgresql://postgres@127.0.0.1:1/nowhere")
    assert pg.is_transient(unreachable.value)


def test_lost_connection_is_transient(pg_url: str) -> None:
    victim = psycopg.connect(pg_url, autocommit=True)
    pid = victim.info.backend_pid
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    with pytest.raises(psycopg.Error) as exc:
        victim.execute("SELECT 1")
    victim.close()
    assert pg.is_transient(exc.value)
    assert isinstance(database_error("lost", exc.value), DatabaseUnavailable)


def test_retry_asks_the_kind() -> None:
    calls = []

    def flaky() -> int:
        calls.append(1)
        if len(calls) < 3:
            pg.connect("postgresql://postgres@127.0.0.1:1/nowhere")  # DatabaseUnavailable
        return 7

    assert pg.retry(flaky, what="probe", next_step="-", sleep=lambda s: None) == 7
    assert len(calls) == 3

    def terminal() -> None:
        calls.append(1)
        raise etl.InputError("connection lost (only words)")

    calls.clear()
    with pytest.raises(etl.InputError):
        pg.retry(terminal, what="probe", next_step="-", sleep=lambda s: None)
    assert len(calls) == 1  # a terminal error is not retried, whatever its text says

    def always_down() -> None:
        pg.connect("postgresql://postgres@127.0.0.1:1/nowhere")

    with pytest.raises(DatabaseUnavailable) as gave_up:
        pg.retry(always_down, what="probe", attempts=2, next_step="start it", sleep=lambda s: None)
    assert gave_up.value.hint == "start it" and is_transient(gave_up.value)
