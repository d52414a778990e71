"""Forked workers: native-driver work in a child process, so a crash there is an error here.

The loader runs every ADBC call (the COPYs, the read-backs, the merge) in a :class:`Worker`, a
child forked from the loading process. The child inherits the loader object and calls its
methods; results, progress and exceptions come back over a pipe. If the child dies (a driver
that aborts, the OOM killer, a signal), the caller gets :class:`WorkerDied`, a
:class:`~etl.infra.pg.DatabaseError`, which the loader's retry treats like a lost connection: it waits,
forks a fresh worker and tries again.

Why not threads: the fastest ADBC PostgreSQL driver build available from PyPI (1.8.0; later
wheels are compiled without optimization, see DESIGN.md) terminates the process when a statement
meets a connection that is already gone, instead of raising. Isolated in a child, that is one
more lost connection to retry. Each worker also runs its COPY outside the parent's GIL.

The child never runs Polars (a fork does not carry Polars' thread pool along): it reads Parquet
and speaks ADBC through PyArrow only, and streams query results back as Arrow IPC for the parent
to check.
"""

from __future__ import annotations

import contextlib
import faulthandler
import gc
import logging
import os
import pickle
import resource
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from multiprocessing import Pipe
from multiprocessing.connection import Connection
from typing import Any

import pyarrow as pa

from etl.infra.errors import DatabaseUnavailable
from etl.infra.pg import is_transient
from etl.metrics import after_fork_allocator

log = logging.getLogger(__name__)

#: In a worker: the pid of the process that forked it (see :func:`also_kill`).
_PARENT: int | None = None
_FORK_LOCK = threading.Lock()
_LIVE: list[Worker] = []  # this process's workers, so a new child can close their pipes


class WorkerDied(DatabaseUnavailable):
    """The worker process ended in the middle of a call (a crash, a signal): transient, the
    call is tried again in a new worker."""


def parent_pid() -> int | None:
    """In a worker: the pid of the loading process; ``None`` in that process itself."""
    return _PARENT


def _picklable(exc: BaseException) -> BaseException:
    """``exc`` if it crosses the pipe intact, else an equivalent the parent can raise."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        text = f"{type(exc).__name__}: {exc}".strip()
        if is_transient(exc):
            return DatabaseUnavailable(text, hint="check the database, then run the same command again")
        return RuntimeError(text)


class Worker:
    """A forked child serving calls on ``target`` (an object it inherited) until closed.

    ``setup(target, send)`` runs first in the child: it points the target's callbacks at
    ``send(kind, value)``, which reaches the parent's ``on_message`` during the current call.
    """

    def __init__(self, target: Any, setup: Callable[[Any, Callable[[str, Any], None]], None]) -> None:
        # What the child writes to stderr (a native library's last words before an abort)
        # goes to a file, quoted in the error if the child dies.
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - open while the child lives
        with _FORK_LOCK:  # no other fork in between, so no child holds our end of this pipe
            mine, theirs = Pipe()
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child; its coverage is not collected
                mine.close()
                os.dup2(self._stderr.fileno(), 2)
                _serve(theirs, target, setup)
            theirs.close()
            # Whole before it is listed: a child another thread forks next closes the pipes of
            # every listed worker, and must not find one without its pipe yet.
            self.pid = pid
            self.conn: Connection = mine
            self.peak_rss = 0
            self.closed = False
            _LIVE.append(self)

    def call(self, op: str, *args: Any, on_message: Callable[[str, Any], None] | None = None) -> Any:
        """``target.<op>(*args)`` in the child; its result, or its exception raised here."""
        for kind, value in self._exchange(op, args, on_message):
            if kind == "result":
                return value
        raise AssertionError("unreachable")

    def stream(self, op: str, *args: Any) -> Iterator[pa.RecordBatch]:
        """The record batches ``target.<op>(*args)`` yields in the child, one at a time."""
        for kind, value in self._exchange(op, args, None):
            if kind == "batch":
                yield value
            elif kind == "result":
                return

    def _exchange(self, op: str, args: tuple[Any, ...],
                  on_message: Callable[[str, Any], None] | None) -> Iterator[tuple[str, Any]]:
        if self.closed:
            raise WorkerDied("the worker was closed after an earlier failure")
        done = False
        try:
            self.conn.send((op, args))
            while True:
                kind, value = self.conn.recv()
                if kind == "batch":  # its IPC bytes follow, sent raw (no pickling copies)
                    with pa.ipc.open_stream(pa.py_buffer(self.conn.recv_bytes())) as reader:
                        for batch in reader:
                            yield kind, batch
                elif kind == "error":
                    self.peak_rss = max(self.peak_rss, value[1])
                    raise value[0]
                elif kind == "result":
                    self.peak_rss = max(self.peak_rss, value[1])
                    done = True
                    yield kind, value[0]
                    return
                elif on_message is not None:
                    on_message(kind, value)
        except (EOFError, OSError) as exc:
            how = self._reap()
            said = self._last_words()
            self._stderr.close()
            raise WorkerDied(f"the worker process (pid {self.pid}) {how} during {op}"
                             + (f"; it said: {said}" if said else ""),
                             hint="check the database and the machine's memory, then run the "
                                  "same command again") from exc
        except GeneratorExit:  # the caller stopped reading a stream: the child may be mid-way
            if not done:
                self.close(kill=True)
            raise

    def _reap(self) -> str:
        self.closed = True
        self.conn.close()
        try:
            _, status = os.waitpid(self.pid, 0)
        except ChildProcessError:
            return "ended"
        finally:
            if self in _LIVE:
                _LIVE.remove(self)
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            return f"was killed by signal {sig} ({signal.Signals(sig).name})"
        return f"exited with status {os.WEXITSTATUS(status)}"

    def _last_words(self) -> str:
        """The end of what the child wrote to stderr, on one line."""
        try:
            self._stderr.seek(0, os.SEEK_END)
            size = self._stderr.tell()
            self._stderr.seek(max(0, size - 400))
            text = self._stderr.read().decode("utf-8", "replace")
        except (OSError, ValueError):
            return ""
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        return " / ".join(lines[-3:])

    def close(self, *, kill: bool = False, grace: float = 5.0) -> None:
        """Stop the child and reap it: asked to stop, it ends after its current call; one still
        busy after ``grace`` seconds (or any, with ``kill``) is killed."""
        if self.closed:
            return
        try:
            if kill:
                os.kill(self.pid, signal.SIGKILL)
            else:
                self.conn.send(("stop", ()))
                deadline = time.monotonic() + grace
                while os.waitpid(self.pid, os.WNOHANG) == (0, 0):
                    if time.monotonic() > deadline:
                        log.warning("worker %d is still busy; killing it", self.pid)
                        os.kill(self.pid, signal.SIGKILL)
                        break
                    time.sleep(0.005)
                else:  # already reaped by the poll
                    self.closed = True
                    self.conn.close()
                    if self in _LIVE:
                        _LIVE.remove(self)
        except (OSError, ChildProcessError):
            pass
        if not self.closed:
            self._reap()
        self._echo()

    def _echo(self) -> None:
        """Pass on what the child wrote to stderr (its log lines, a warning) once it ended."""
        try:
            self._stderr.seek(0)
            text = self._stderr.read()
            self._stderr.close()
        except (OSError, ValueError):
            return
        if text:
            sys.stderr.write(text.decode("utf-8", "replace"))


def _serve(conn: Connection, target: Any, setup: Callable[[Any, Callable[[str, Any], None]], None]
           ) -> None:  # pragma: no cover - runs in the child
    global _PARENT
    code = 0
    try:
        # What the parent left behind stays untouched: no collection finalizes its objects
        # (a connection's finalizer would speak on the parent's socket), no exit handler runs.
        gc.freeze()
        _PARENT = os.getppid()
        for other in _LIVE:
            other.conn.close()
        _LIVE.clear()
        # Signals end a worker at once (the loading process handles them: etl.interrupt).
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        faulthandler.disable()  # a crash's own words (on fd 2) are what the parent quotes
        # glibc's allocator is fork-safe; Arrow's default (mimalloc) may have been mid-call in
        # another of the parent's threads, holding a lock nobody here would release.
        pa.set_memory_pool(pa.system_memory_pool())
        after_fork_allocator()  # not the loading process's raised threshold (etl.metrics)

        def send(kind: str, value: Any) -> None:
            conn.send((kind, value))

        setup(target, send)
        while True:
            try:
                op, args = conn.recv()
            except EOFError:  # the parent is gone
                break
            if op == "stop":
                break
            try:
                result = getattr(target, op)(*args)
                if isinstance(result, Iterator):
                    for batch in result:
                        sink = pa.BufferOutputStream()
                        with pa.ipc.new_stream(sink, batch.schema) as writer:
                            writer.write_batch(batch)
                        conn.send(("batch", None))
                        conn.send_bytes(sink.getvalue())
                    result = None
                conn.send(("result", (result, _peak_rss())))
            except BaseException as exc:
                conn.send(("error", (_picklable(exc), _peak_rss())))
    except BaseException:
        code = 1
        with contextlib.suppress(Exception):
            log.exception("forked worker failed")
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _peak_rss() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024
