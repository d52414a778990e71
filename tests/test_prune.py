"""`etl runs prune`: the newest N staged runs of each dataset stay, and so does every run the run
ledger needs (live, in use by a load, resumable), unless --force."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from etl import Settings, get_dataset
from etl.cli import main
from etl.datasets.mids.gen import generate_mids
from etl.infra import ledger, pg
from etl.prune import dir_bytes
from etl.stage import stage


def _stage_runs(root: Path, n: int) -> list[Path]:
    """``n`` staged runs of small generated exports, oldest first."""
    staging = root / "staging"
    runs = []
    for seed in range(1, n + 1):
        src = root / f"export-{seed}"
        generate_mids(src, powersets=2, seed=seed)
        runs.append(stage(get_dataset("mids"), [src], settings=Settings(staging_dir=staging)).run.path)
    return runs


def _record(conn, run: Path, status: str, mode: str = "full") -> int:
    ledger_id = ledger.start_run(conn, dataset="mids", run_id=run.name, manifest_sha256=None, mode=mode)
    if status != "running":
        ledger.finish_run(conn, ledger_id, status=status, phases=[], rows={}, peak_rss=None)
    return ledger_id


def _prune(staging: Path, *args: str) -> dict:
    result = CliRunner().invoke(main, ["--staging-dir", str(staging), "runs", "prune", "--json", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_prune_keeps_the_newest_and_what_the_ledger_needs(tmp_path: Path, pg_url: str) -> None:
    runs = _stage_runs(tmp_path, 7)
    staging = tmp_path / "staging"
    old_full, merged, in_use, interrupted, plain, _newer, newest = runs
    ledger.upgrade(pg_url)
    with pg.connect(pg_url) as conn, pg.connect(pg_url) as loader:
        _record(conn, old_full, "succeeded")            # the full load a merge built on
        _record(conn, merged, "succeeded", mode="merge")  # the latest successful load
        _record(conn, interrupted, "interrupted")
        _record(conn, plain, "failed")                  # failed, then superseded: not needed
        _record(conn, in_use, "running")
        # a load of mids is alive: it holds the dataset's load lock on its own session
        with pg.advisory_lock(loader, "load:mids", what="load of mids"):
            dry = _prune(staging, "--keep", "2", "--dry-run", "--database-url", pg_url)
            actions = {r["run_id"]: (r["action"], r["reason"]) for r in dry["runs"]}
            assert {k for k, (a, _) in actions.items() if a == "delete"} == {plain.name}
            assert actions[newest.name][1].startswith("among the 2 newest")
            assert actions[old_full.name][1].startswith("live")
            assert actions[merged.name][1].startswith("live")
            assert actions[in_use.name][1].startswith("in use")
            assert actions[interrupted.name][1].startswith("resumable")
            assert dry["freed_bytes"] == dir_bytes(plain) > 0
            assert all(p.is_dir() for p in runs), "a dry run deleted something"

            done = _prune(staging, "--keep", "2", "--database-url", pg_url)
            assert done["freed_bytes"] == dry["freed_bytes"]
            assert not plain.exists()
            assert all(p.is_dir() for p in runs if p != plain)
        # the loader is gone: its running load reads abandoned, which resumes: still kept
        again = _prune(staging, "--keep", "2", "--database-url", pg_url)
        reasons = {r["run_id"]: r["reason"] for r in again["runs"]}
        assert reasons[in_use.name].startswith("resumable") and "abandoned" in reasons[in_use.name]
        assert again["freed_bytes"] == 0

    forced = _prune(staging, "--keep", "1", "--force", "--database-url", pg_url)
    assert {r["run_id"] for r in forced["runs"] if r["action"] == "delete"} == {
        p.name for p in runs if p not in (plain, newest)}
    assert [p for p in runs if p.exists()] == [newest]
    assert not list((staging / "mids").glob(".stage.tmp-*"))


def test_prune_without_a_database_needs_force(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ETL_DATABASE_URL", "DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    runs = _stage_runs(tmp_path, 2)
    staging = tmp_path / "staging"
    refused = CliRunner().invoke(main, ["--staging-dir", str(staging), "runs", "prune", "--keep", "0"])
    assert refused.exit_code == 3, refused.output
    assert "no database" in refused.output and "--force" in refused.output
    assert all(p.is_dir() for p in runs)
    human = CliRunner().invoke(main, ["--staging-dir", str(staging), "runs", "prune", "--keep", "1",
                                      "--force"])
    assert human.exit_code == 0, human.output
    assert "freed" in human.stderr and int(human.stdout.strip()) > 0
    assert not runs[0].exists() and runs[1].is_dir()
    assert not (tmp_path / ".etl").exists()


def test_prune_help_has_an_example() -> None:
    result = CliRunner().invoke(main, ["runs", "prune", "--help"])
    assert result.exit_code == 0 and "etl runs prune --dry-run" in result.output
