"""Ctrl-C and SIGTERM during `etl run` (issue 15): the load stops at once, its workers and server
sessions with it; the ledger says `interrupted`; the terminal names the command that resumes;
exit 130 / 143, no click "Aborted!"; the live data is untouched; the rerun loads exactly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from etl.datasets.mids.gen import generate_mids
from etl.run import open_run

REPO = Path(__file__).resolve().parents[2]
WAIT = 120.0  # seconds at most for any condition below


def _query(url: str, sql: str) -> list[tuple[object, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        return list(conn.execute(sql).fetchall())


def _wait_for(what: str, ready: object) -> None:
    """Poll ``ready()`` until true (a condition, not a timing: it fails after WAIT seconds)."""
    deadline = time.monotonic() + WAIT
    while not ready():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.mark.parametrize(("sig", "code", "point", "as_json"), [
    (signal.SIGINT, 130, "copy:powers", False),  # in a worker process, mid-COPY
    (signal.SIGTERM, 143, "copy:powers", True),
    (signal.SIGTERM, 143, "keys:powers", False),  # in a thread of the loading process
])
def test_an_interrupted_run_stops_cleanly_and_the_rerun_resumes(
        tmp_path: Path, pg_url: str, sig: signal.Signals, code: int, point: str, as_json: bool) -> None:
    export = tmp_path / "export"
    generate_mids(export, powersets=12, seed=3)
    marker = tmp_path / "paused"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETL_FAULT_")}
    env.update(ETL_FAULT_PAUSE_AT=point, ETL_FAULT_PAUSE_FILE=str(marker))
    cmd = [sys.executable, "-m", "etl.cli", "--staging-dir", str(tmp_path / "staging"), "run", "mids",
           str(export), "--database-url", pg_url, *(["--json"] if as_json else [])]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        _wait_for(f"the load to reach {point}", lambda: marker.exists() or proc.poll() is not None)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(sig)  # to the loading process only: it stops its workers itself
        out, errs = proc.communicate(timeout=WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == code, errs
    assert "Aborted!" not in errs and "Traceback" not in errs
    assert f"interrupted by {sig.name}" in errs
    assert f"etl --staging-dir {tmp_path / 'staging'} run mids {export}" in errs and "again" in errs
    if as_json:
        doc = json.loads(out)
        assert doc["error"]["type"] == "Interrupted" and "run mids" in doc["error"]["next"]
    else:
        assert out == ""
    # The ledger says so; no half-loaded live data; no session of the load left on the server.
    assert _query(pg_url, "SELECT status FROM etl.runs") == [("interrupted",)]
    run = open_run(next((tmp_path / "staging" / "mids").glob("mids-*")))
    for table in run.manifest["tables"]:  # the live schema as the first load found it: empty
        assert _query(pg_url, f'SELECT count(*) FROM mids."{table}"') == [(0,)], table
    _wait_for("the load's server sessions to end", lambda: _query(
        pg_url, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid()") == [(0,)])
    listed = subprocess.run([sys.executable, "-m", "etl.cli", "runs", "--database-url", pg_url, "--json"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=WAIT)
    assert [r["status"] for r in json.loads(listed.stdout)] == ["interrupted"], listed.stderr

    env.pop("ETL_FAULT_PAUSE_AT")
    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    if as_json:  # the finished steps were kept, not redone
        assert "create" in json.loads(again.stdout)["load"]["resumed_steps"]
    else:
        assert "resumed load #1" in again.stderr
    for table, entry in run.manifest["tables"].items():
        assert _query(pg_url, f'SELECT count(*) FROM mids."{table}"') == [(entry["rows"],)], table
    # The interrupted load was resumed (its ledger row), not begun again.
    assert _query(pg_url, "SELECT status FROM etl.runs") == [("succeeded",)]


def test_ctrl_c_in_a_notebook_stops_the_load_and_it_resumes(tmp_path: Path, pg_url: str,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Python's own KeyboardInterrupt (no CLI handler installed): the same clean stop."""
    import threading

    from etl.datasets import dataset_of
    from etl.load import load
    from tests.conftest import transformed_run

    export = tmp_path / "export"
    generate_mids(export, powersets=6, seed=4)
    run = transformed_run("mids", [export], tmp_path / "staging")
    marker = tmp_path / "paused"
    monkeypatch.setenv("ETL_FAULT_PAUSE_AT", "copy:powers")
    monkeypatch.setenv("ETL_FAULT_PAUSE_FILE", str(marker))

    def press_ctrl_c() -> None:
        deadline = time.monotonic() + WAIT
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C does to a notebook's kernel

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    presser = threading.Thread(target=press_ctrl_c)
    presser.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            load(run, dataset_of(run), database_url=pg_url)
    finally:
        presser.join()
        signal.signal(signal.SIGINT, previous)
    assert _query(pg_url, "SELECT status FROM etl.runs") == [("interrupted",)]
    assert _query(pg_url, "SELECT count(*) FROM mids.powers") == [(0,)]
    monkeypatch.delenv("ETL_FAULT_PAUSE_AT")
    done = load(run, dataset_of(run), database_url=pg_url)
    assert done.resumed_from and "create" in done.resumed_from
    for table, entry in run.manifest["tables"].items():
        assert _query(pg_url, f'SELECT count(*) FROM mids."{table}"') == [(entry["rows"],)], table
    assert _query(pg_url, "SELECT status FROM etl.runs") == [("succeeded",)]
