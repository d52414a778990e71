"""Fault injection for tests: where a load may be killed or lose its connection, on request.

Two environment variables, read at each point (a forked worker inherits them):

* ``ETL_FAULT_KILL_AT=<point>`` SIGKILLs the loading process at that point (and, from a worker,
  the worker too), so tests can prove a load resumes after dying anywhere.
* ``ETL_FAULT_DROP_AT=<point>`` terminates the connection's server process at that point, as a
  network drop would: once per load, or on every attempt with ``<point>@always``.
  ``<point>@abort`` instead aborts the worker process there, once, as a crashing driver would.

* ``ETL_FAULT_PAUSE_AT=<point>`` makes the process (or the worker) wait at that point, once it
  has written its pid to the file ``ETL_FAULT_PAUSE_FILE`` names, until a signal ends the load
  (at most ten minutes): tests interrupt a load mid-way knowing where it is, without guessing.

A point is a ledger step's name (``create``, ``copy:<table>``, ``keys:<table>``, ``swap``, …),
or ``merge`` / ``merge:<table>``; ``lock:<step>`` drops the connection holding the load lock
just before that step. Without the variables every hook does nothing.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable
from typing import Any

from etl import interrupt
from etl.infra import pg
from etl.load import forked

log = logging.getLogger(__name__)

KILL_AT = "ETL_FAULT_KILL_AT"
DROP_AT = "ETL_FAULT_DROP_AT"
PAUSE_AT = "ETL_FAULT_PAUSE_AT"
PAUSE_FILE = "ETL_FAULT_PAUSE_FILE"
PAUSE_LIMIT = 600.0


class Faults:
    """One load's fault points: which connection drops it has already done (once per load)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.dropped: set[str] = set()

    def kill(self, point: str) -> None:
        """``ETL_FAULT_KILL_AT=<point>``: SIGKILL the load here."""
        if os.environ.get(KILL_AT) == point:
            log.warning("fault injection: killing the process at %s", point)
            parent = forked.parent_pid()  # in a worker: the load dies with it
            if parent is not None:
                os.kill(parent, signal.SIGKILL)
            os.kill(os.getpid(), signal.SIGKILL)

    def pause(self, point: str) -> None:
        """``ETL_FAULT_PAUSE_AT=<point>``: write the pid to ``ETL_FAULT_PAUSE_FILE`` and wait here
        for the signal that stops the load (a test's cue)."""
        if os.environ.get(PAUSE_AT) != point:
            return
        log.warning("fault injection: pausing at %s", point)
        marker = os.environ.get(PAUSE_FILE)
        if marker:
            tmp = f"{marker}.tmp"
            with open(tmp, "w") as f:
                f.write(str(os.getpid()))
            os.replace(tmp, marker)
        deadline = time.monotonic() + PAUSE_LIMIT
        while time.monotonic() < deadline:
            interrupt.check()  # in a thread: the main thread was interrupted
            time.sleep(0.05)  # in the main thread, a signal's handler raises here

    def drop(self, point: str, conn: Any) -> None:
        """``ETL_FAULT_DROP_AT=<point>[@always|@abort]``: lose ``conn`` (or the worker) here."""
        name, _, how = os.environ.get(DROP_AT, "").partition("@")
        if name != point:
            return
        if how != "always" and point in self.dropped:
            return
        self.dropped.add(point)
        if how == "abort" and forked.parent_pid() is not None:
            os.write(2, f"fault injection: aborting the worker at {point}\n".encode())
            os.abort()
        log.warning("fault injection: dropping the connection at %s", point)
        with pg.connect(self.url) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (_backend_pid(conn),))

    def report_to(self, report: Callable[[str], None]) -> None:
        """In a worker: tell the loading process of each drop (``report(point)``), so a retry in a
        fresh worker does not drop again."""
        self.dropped = _Reported(self.dropped, report)


class _Reported(set[str]):
    """A set that reports each new member (a worker's fault points, to the loading process)."""

    def __init__(self, members: set[str], report: Callable[[str], None]) -> None:
        super().__init__(members)
        self._report = report

    def add(self, member: str) -> None:
        self._report(member)
        super().add(member)


def _backend_pid(conn: Any) -> int:
    if hasattr(conn, "info"):  # psycopg
        return int(conn.info.backend_pid)
    cur = conn.cursor()
    cur.execute("SELECT pg_backend_pid()")
    pid = int(cur.fetchone()[0])
    cur.close()
    return pid
