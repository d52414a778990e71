"""etl.load.forked: calls, streams, errors and deaths of a forked worker process (no database)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa
import pytest

from etl.errors import InputError
from etl.infra.pg import DatabaseError
from etl.load import forked


class Target:
    def __init__(self) -> None:
        self.greeting = "hello"
        self.report: Callable[[str, Any], None] | None = None

    def echo(self, value: Any) -> Any:
        if self.report is not None:
            self.report("note", f"{self.greeting} {value}")
        return (value, os.getpid(), forked.parent_pid())

    def batches(self, n: int) -> Iterator[pa.RecordBatch]:
        for i in range(n):
            yield pa.record_batch({"i": pa.array([i] * 3, pa.int32())})

    def refuse(self) -> None:
        raise InputError("bad row", file="x.parquet", record=7, hint="fix it")

    def odd(self) -> None:
        class Local(Exception):  # cannot be pickled: crosses as RuntimeError
            pass

        raise Local("something odd")

    def crash(self) -> None:
        os.write(2, b"native library: cannot go on\n")
        os.abort()


def setup(target: Target, send: Callable[[str, Any], None]) -> None:
    target.report = send


def test_a_call_runs_in_the_child_and_reports_back() -> None:
    notes: list[tuple[str, Any]] = []
    worker = forked.Worker(Target(), setup)
    try:
        value, pid, parent = worker.call("echo", 42, on_message=lambda k, v: notes.append((k, v)))
        assert value == 42 and pid == worker.pid != os.getpid() and parent == os.getpid()
        assert notes == [("note", "hello 42")]
        assert forked.parent_pid() is None  # here, in the parent
        assert worker.peak_rss > 0
    finally:
        worker.close()
    assert worker.closed


def test_a_stream_arrives_batch_by_batch() -> None:
    worker = forked.Worker(Target(), setup)
    try:
        got = [b.column(0).to_pylist() for b in worker.stream("batches", 4)]
        assert got == [[i] * 3 for i in range(4)]
        assert worker.call("echo", "after")[0] == "after"  # the worker serves on
    finally:
        worker.close()


def test_errors_cross_with_their_fields() -> None:
    worker = forked.Worker(Target(), setup)
    try:
        with pytest.raises(InputError) as refused:
            worker.call("refuse")
        assert (refused.value.file, refused.value.record, refused.value.hint) == ("x.parquet", 7, "fix it")
        with pytest.raises(RuntimeError, match="Local: something odd"):
            worker.call("odd")
        assert worker.call("echo", 1)[0] == 1  # an error is not a death
    finally:
        worker.close()


def test_a_dead_worker_is_a_lost_connection_quoting_its_last_words() -> None:
    worker = forked.Worker(Target(), setup)
    with pytest.raises(forked.WorkerDied) as died:
        worker.call("crash")
    assert isinstance(died.value, DatabaseError)  # so the loader's retry takes it
    text = str(died.value)
    assert "killed by signal 6 (SIGABRT) during crash" in text
    assert "native library: cannot go on" in text
    assert worker.closed
    with pytest.raises(forked.WorkerDied):
        worker.call("echo", 1)
