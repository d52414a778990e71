"""Ctrl-C and SIGTERM as one exception, so a stopped command cleans up on its way out.

:func:`install` (called by the CLI, once per process) makes SIGINT and SIGTERM raise
:class:`Interrupted` in the main thread: a :class:`KeyboardInterrupt`, so ``except Exception``
never swallows it, while ``finally`` blocks and context managers (the load's lock, its worker
processes, the stage's temporary folder) still run. Whoever records a stopped piece of work
(the load's ledger row) tells an interruption from a failure by type; code running in other
threads asks :func:`requested` before trying something again.

Example::

    from etl import interrupt

    interrupt.install()
    try:
        long_job()
    except interrupt.Interrupted as exc:
        print(exc.signal_name, exc.exit_code)    # SIGTERM 143
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from types import FrameType

log = logging.getLogger(__name__)

_REQUESTED = threading.Event()
_REPEATS = [0]  # signals received while already stopping
_SIGNUM = [int(signal.SIGINT)]  # the signal that asked, for the threads that ask requested()


class Interrupted(KeyboardInterrupt):
    """The process was asked to stop (SIGINT: Ctrl-C, or SIGTERM). ``exit_code`` is the shell's
    convention: 128 + the signal's number (130, 143)."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        self.signum = int(signum)
        super().__init__(f"interrupted by {self.signal_name}")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.signum,))

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _raise(signum: int, frame: FrameType | None) -> None:
    if _REQUESTED.is_set():
        # Already stopping (cleaning up): a second signal lets that finish, a third ends the
        # process at once (the load then resumes like one that was killed).
        _REPEATS[0] += 1
        if _REPEATS[0] >= 2:
            os._exit(128 + signum)
        log.warning("already stopping (finishing the cleanup); signal once more to stop at once")
        return
    _SIGNUM[0] = signum
    _REQUESTED.set()
    log.info("received %s: stopping", signal.Signals(signum).name)
    raise Interrupted(signum)


def install() -> None:
    """Make SIGINT and SIGTERM raise :class:`Interrupted` in this process's main thread (a no-op
    when called from another thread: only the main thread receives Python signal handlers).
    Forgets an earlier interruption of this process."""
    if threading.current_thread() is not threading.main_thread():
        return
    _REQUESTED.clear()
    _REPEATS[0] = 0
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _raise)


def requested() -> bool:
    """Whether this process was asked to stop (a worker thread should not start over)."""
    return _REQUESTED.is_set()


def check() -> None:
    """Raise :class:`Interrupted` if this process was asked to stop: what a worker thread calls
    before trying again, so it ends with the main thread instead of starting new work."""
    if _REQUESTED.is_set():
        raise Interrupted(_SIGNUM[0])


def as_interrupted(exc: BaseException) -> Interrupted | None:
    """``exc`` as an :class:`Interrupted` when it is one (a plain ``KeyboardInterrupt``, as the
    default SIGINT handler raises it, counts as Ctrl-C), or when it came after this process was
    asked to stop (a native library that turns the interruption into an error of its own, as
    DuckDB does); ``None`` otherwise."""
    if isinstance(exc, Interrupted):
        return exc
    if isinstance(exc, KeyboardInterrupt):
        return Interrupted(signal.SIGINT)
    if _REQUESTED.is_set():
        return Interrupted(_SIGNUM[0])
    return None
