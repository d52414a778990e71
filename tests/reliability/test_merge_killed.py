"""A merge killed at its last moment (deletes done, not committed) changes nothing, leaves no work on
the server, and the same command run again merges exactly (issue 17: a killed --delete-missing
merge kept its DELETE running for minutes and the next merge waited on its locks)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import psycopg

from etl.datasets.licenses.gen import generate_licenses
from etl.infra.pg import lock_key

REPO = Path(__file__).resolve().parents[2]


def _counts(url: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        return {t: int(conn.execute(f"SELECT count(*) FROM licenses.{t}").fetchone()[0])
                for t in ("search_results", "images", "search_files")}


def _merge(url: str, staging: Path, src: Path, *,
           kill_at: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETL_FAULT_")}
    if kill_at:
        env["ETL_FAULT_KILL_AT"] = kill_at
    cmd = [sys.executable, "-m", "etl.cli", "--staging-dir", str(staging), "run", "licenses",
           str(src), "--database-url", url, "--mode", "merge", "--delete-missing"]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_a_killed_delete_missing_merge_changes_nothing_and_reruns_exactly(pg_url: str,
                                                                         tmp_path: Path) -> None:
    full = tmp_path / "full"
    generate_licenses(full, results=24)
    staging = tmp_path / "staging"
    first = _merge(pg_url, staging, full)
    assert first.returncode == 0, first.stderr
    before = _counts(pg_url)

    # Half of the results again: the merge deletes the other half, then dies before its commit.
    part = tmp_path / "part"
    for p in sorted(full.rglob("*_parse.json"))[::2]:
        dest = part / p.relative_to(full)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(p, dest)
        png = p.with_name(p.name.replace("_parse.json", ".png"))
        if png.exists():
            shutil.copy2(png, dest.with_name(png.name))
    killed = _merge(pg_url, staging, part, kill_at="merge")
    assert killed.returncode == -9, killed.stderr
    assert _counts(pg_url) == before  # one transaction: nothing of it is visible

    # Its session ends with its process: the lock it held is free within moments, and no
    # statement of the dead merge is left running in the database.
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("SET lock_timeout = '30s'")
        conn.execute("SELECT pg_advisory_lock(%s)", (lock_key("load:licenses"),))
        conn.execute("SELECT pg_advisory_unlock(%s)", (lock_key("load:licenses"),))
        left = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND state <> 'idle'").fetchone()[0]
    assert left == 0

    again = _merge(pg_url, staging, part)
    assert again.returncode == 0, again.stderr
    after = _counts(pg_url)
    kept = len(list(part.rglob("*_parse.json")))
    assert after["search_files"] == kept
    assert 0 < after["search_results"] < before["search_results"]
    with psycopg.connect(pg_url) as conn:
        doubled = conn.execute(
            "SELECT count(*) FROM (SELECT 1 FROM licenses.search_results GROUP BY dataset, state, "
            "search_name, license_key HAVING count(*) > 1) d").fetchone()[0]
        statuses = [r[0] for r in conn.execute("SELECT status FROM etl.runs ORDER BY id")]
    assert doubled == 0
    # The killed merge's row does not read as running once its loader is gone.
    assert "running" not in statuses, statuses
