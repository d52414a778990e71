"""Mutual exclusion that holds when the lock's connection does not (issue 17): a load whose lock
connection ends stops before its next step (exit 4, a message, no traceback) and resumes when run
again; a load never drops a build schema another load's connections still work in."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from etl.datasets import dataset_of
from etl.infra.pg import lock_key
from etl.load import load, swap
from etl.load.state import build_lock_name
from tests.conftest import MIDS, require_shared, transformed_run

REPO = Path(__file__).resolve().parents[2]


def _count(url: str, sql: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(sql).fetchone()
        assert row is not None
        return int(row[0])


def test_a_load_that_lost_its_lock_stops_before_the_swap_and_resumes(tmp_path: Path, pg_url: str) -> None:
    run = transformed_run("mids", [require_shared(MIDS)], tmp_path / "staging")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETL_FAULT_")}
    env["ETL_FAULT_DROP_AT"] = "lock:swap"
    cmd = [sys.executable, "-m", "etl.cli", "load", str(run.path), "--database-url", pg_url]
    first = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 4, first.stderr
    assert "lost its lock" in first.stderr and "Traceback" not in first.stderr
    # Nothing was swapped in: the live schema is the empty one, the build schema is kept.
    assert _count(pg_url, "SELECT count(*) FROM mids.powers") == 0
    env.pop("ETL_FAULT_DROP_AT")
    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert _count(pg_url, "SELECT count(*) FROM mids.powers") == run.manifest["tables"]["powers"]["rows"]
    assert _count(pg_url, "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'mids\\_\\_%'") == 0


def test_no_load_drops_a_build_schema_another_load_works_in(tmp_path: Path, pg_url: str,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    run = transformed_run("mids", [require_shared(MIDS)], tmp_path / "staging")
    dataset = dataset_of(run)
    load(run, dataset, database_url=pg_url)
    monkeypatch.setattr(swap, "BUILD_LOCK_WAIT", "200ms")
    with psycopg.connect(pg_url, autocommit=True) as other:
        # Another load's build schema, and one of its working connections, still alive.
        other.execute('CREATE SCHEMA "mids__b999"')
        other.execute("SELECT pg_advisory_lock_shared(%s)", (lock_key(build_lock_name("mids")),))
        load(run, dataset, database_url=pg_url, force=True)
        assert _count(pg_url, "SELECT count(*) FROM pg_namespace WHERE nspname = 'mids__b999'") == 1
    # Its connections gone, the next load clears it.
    load(run, dataset, database_url=pg_url, force=True)
    assert _count(pg_url, "SELECT count(*) FROM pg_namespace WHERE nspname = 'mids__b999'") == 0


def test_a_killed_load_reads_as_abandoned_and_the_next_load_closes_it(tmp_path: Path, pg_url: str) -> None:
    """After kill -9 the ledger row said `running` forever, and `etl health` said ok."""
    import json

    from click.testing import CliRunner

    from etl.cli import main
    from etl.datasets.mids.gen import generate_mids

    full = transformed_run("mids", [require_shared(MIDS)], tmp_path / "staging")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETL_FAULT_")}
    env["ETL_FAULT_KILL_AT"] = "copy:powers"
    cmd = [sys.executable, "-m", "etl.cli", "load", str(full.path), "--database-url", pg_url]
    killed = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr
    assert _count(pg_url, "SELECT count(*) FROM etl.runs WHERE status = 'running'") == 1  # as written
    # Its session is gone with its process (the server may take a moment to notice): wait for
    # the lock it held, as the next load would.
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("SET lock_timeout = '30s'")
        conn.execute("SELECT pg_advisory_lock(%s)", (lock_key("load:mids"),))
        conn.execute("SELECT pg_advisory_unlock(%s)", (lock_key("load:mids"),))
    runs = CliRunner().invoke(main, ["runs", "--database-url", pg_url, "--json"])
    assert runs.exit_code == 0, runs.output
    listed = json.loads(runs.stdout)
    listed = listed["runs"] if isinstance(listed, dict) else listed
    assert [r["status"] for r in listed][:1] == ["abandoned"]
    health = CliRunner().invoke(main, ["health", "--database-url", pg_url, "--json"])
    doc = json.loads(health.stdout)
    checks = {c["name"]: c for c in (doc["checks"] if isinstance(doc, dict) else doc)}
    assert checks["last load: mids"]["status"] == "warn"
    assert checks["last load: mids"]["run_status"] == "abandoned"
    # A load of another run of the dataset closes it for good.
    other = tmp_path / "other"
    generate_mids(other, powersets=5, seed=2)
    small = transformed_run("mids", [other], tmp_path / "staging")
    load(small, dataset_of(small), database_url=pg_url)
    with psycopg.connect(pg_url) as conn:
        row = conn.execute("SELECT status, error FROM etl.runs WHERE run_id = %s", (full.id,)).fetchone()
    assert row is not None and row[0] == "abandoned" and "closed by load #" in row[1]


def test_an_interrupted_load_ends_only_its_own_databases_sessions(pg_url: str) -> None:
    """Advisory locks are the server's: Ctrl-C on a load of `mids` in one database ended the
    sessions of a load of `mids` in another database on the same server (they hold the same
    build lock name)."""
    import uuid

    from etl.infra.pg import with_database
    from etl.load.state import end_build_sessions
    from tests.conftest import PG_ADMIN_URL

    other_name = f"etl_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{other_name}"')
    other = with_database(PG_ADMIN_URL, other_name)
    key = lock_key(build_lock_name("mids"))
    try:
        with psycopg.connect(pg_url, autocommit=True) as mine, \
                psycopg.connect(other, autocommit=True) as theirs:
            for conn in (mine, theirs):
                conn.execute("SELECT pg_advisory_lock_shared(%s)", (key,))
            assert end_build_sessions(pg_url, "mids") == 1
            assert theirs.execute("SELECT 1").fetchone() == (1,)  # untouched
            with pytest.raises(psycopg.OperationalError):
                mine.execute("SELECT 1")
            assert end_build_sessions(other, "mids") == 1
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{other_name}" WITH (FORCE)')
