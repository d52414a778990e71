"""A load killed in the middle of a statement leaves no work running on the server: its
connections set client_connection_check_interval, so PostgreSQL cancels a statement whose client
is gone instead of running it on for minutes, holding its locks (issue 17)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import psycopg

from etl.load.state import session_sql

_CLIENT = """
import sys, psycopg
from etl.load.state import session_sql
with psycopg.connect(sys.argv[1], autocommit=True, application_name=sys.argv[2]) as conn:
    for stmt in session_sql():
        conn.execute(stmt)
    print(conn.execute("SHOW client_connection_check_interval").fetchone()[0], flush=True)
    conn.execute("SELECT pg_sleep(600)")
"""


def _backends(url: str, name: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                           (name,)).fetchone()
        assert row is not None
        return int(row[0])


def test_a_statement_whose_client_was_killed_is_cancelled(pg_url: str) -> None:
    assert any("client_connection_check_interval" in s for s in session_sql())
    name = f"etl-test-{uuid.uuid4().hex[:8]}"
    proc = subprocess.Popen([sys.executable, "-c", _CLIENT, pg_url, name], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "2s"  # set, and the sleep is about to start
    deadline = time.monotonic() + 30
    while _backends(pg_url, name) == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _backends(pg_url, name) == 1
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # The server notices the client is gone at its next check (2 s) and ends the backend; without
    # the setting it would sleep on for ten minutes.
    while _backends(pg_url, name) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _backends(pg_url, name) == 0
