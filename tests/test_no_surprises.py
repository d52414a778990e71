"""A new user's first hour (issue 15): read-only commands never start a server, a wrong database
URL fails before any staging, and an unexpected exception exits 70 with a bug-report hint."""

from __future__ import annotations

import socket
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from etl.cli import main
from etl.cli.render import handle_errors
from etl.datasets.mids.gen import generate_mids
from tests.conftest import transformed_run


@pytest.fixture
def bare_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty folder without a project, and no database configured."""
    folder = tmp_path / "bare"
    folder.mkdir()
    monkeypatch.chdir(folder)
    for name in ("ETL_DATABASE_URL", "DATABASE_URL", "ETL_REDIS_URL", "ETL_STAGING_DIR"):
        monkeypatch.delenv(name, raising=False)
    return folder


def _refused_url() -> str:
    """A URL whose port nothing listens on (a wrong --database-url)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"postgresql://postgres@127.0.0.1:{port}/etl"


@pytest.mark.parametrize("args", [["runs"], ["runs", "--json"], ["runs", "show", "1"], ["stats"],
                                  ["cache", "stats"], ["query", "mids", "power", "1"],
                                  ["db", "optimize"]])
def test_read_only_commands_start_no_server(bare_folder: Path, args: list[str]) -> None:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 3, result.output
    assert "no database" in result.output
    assert "--database-url" in result.output and "etl db start" in result.output
    assert not (bare_folder / ".etl").exists(), "a read-only command created an embedded server"


def test_health_and_db_status_start_no_server(bare_folder: Path) -> None:
    health = CliRunner().invoke(main, ["health", "--json"])
    assert health.exit_code == 1, health.output
    import json

    check = json.loads(health.stdout)["checks"][0]
    assert check["name"] == "database" and check["status"] == "fail"
    assert "etl db start" in check["hint"]
    status = CliRunner().invoke(main, ["db", "status"])
    assert status.exit_code == 0, status.output
    assert "etl db start" in status.output
    assert not (bare_folder / ".etl").exists()


def test_read_only_commands_use_a_given_database(bare_folder: Path, pg_url: str) -> None:
    result = CliRunner().invoke(main, ["runs", "--json", "--database-url", pg_url])
    assert result.exit_code == 3, result.output  # a database without the ledger: says so
    assert "no database" not in result.output and "etl db upgrade" in result.output
    assert not (bare_folder / ".etl").exists()


def test_run_with_a_wrong_url_fails_before_staging(bare_folder: Path) -> None:
    src = bare_folder / "export"
    generate_mids(src, powersets=3, seed=1)
    staging = bare_folder / "staging"
    result = CliRunner().invoke(main, ["--staging-dir", str(staging), "run", "mids", str(src),
                                       "--database-url", _refused_url()])
    assert result.exit_code == 3, result.output
    assert "cannot connect" in result.output
    assert not staging.exists(), "the export was staged before the database was checked"
    assert not (bare_folder / ".etl").exists()
    out = bare_folder / "demo-export"
    demo = CliRunner().invoke(main, ["--staging-dir", str(staging), "demo", "--out", str(out),
                                     "--database-url", _refused_url()])
    assert demo.exit_code == 3 and "cannot connect" in demo.output, demo.output
    assert not out.exists() and not staging.exists()


def test_run_on_a_ledger_from_a_newer_etl_fails_before_staging(bare_folder: Path, pg_url: str) -> None:
    from etl.infra import ledger, pg

    ledger.upgrade(pg_url)
    with pg.connect(pg_url) as conn:
        conn.execute("UPDATE etl.alembic_version SET version_num = '9999_from_the_future'")
    src = bare_folder / "export"
    generate_mids(src, powersets=3, seed=1)
    staging = bare_folder / "staging"
    result = CliRunner().invoke(main, ["--staging-dir", str(staging), "run", "mids", str(src),
                                       "--database-url", pg_url])
    assert result.exit_code == 3, result.output
    assert "9999_from_the_future" in result.output and "upgrade etl" in result.output
    assert not staging.exists()


def test_load_and_rebuild_with_a_wrong_url_fail_at_once(bare_folder: Path, pg_url: str) -> None:
    src = bare_folder / "export"
    generate_mids(src, powersets=3, seed=1)
    run = transformed_run("mids", [src], bare_folder / "staging")
    url = _refused_url()
    for args in (["load", str(run.path)], ["rebuild", str(run.path)]):
        result = CliRunner().invoke(main, [*args, "--database-url", url])
        assert result.exit_code == 3, result.output
        assert "cannot connect" in result.output
    # rebuild checked the database before hashing the chunks: a changed chunk is not reported
    chunk = next((run.path / "tables").rglob("*.parquet"))
    chunk.write_bytes(b"changed")
    result = CliRunner().invoke(main, ["rebuild", str(run.path), "--database-url", url])
    assert result.exit_code == 3 and "cannot connect" in result.output, result.output
    result = CliRunner().invoke(main, ["rebuild", str(run.path), "--database-url", pg_url])
    assert result.exit_code == 2 and chunk.name in result.output, result.output


@click.command()
@click.option("--boom", is_flag=True)
@handle_errors
def _crashing(boom: bool) -> None:
    if boom:
        raise ValueError("an unforeseen value")
    raise click.UsageError("bad usage stays click's")


def test_unexpected_error_exits_70_with_a_bug_report_hint() -> None:
    result = CliRunner().invoke(_crashing, ["--boom"])
    assert result.exit_code == 70, result.output
    assert "internal error" in result.output and "ValueError: an unforeseen value" in result.output
    assert "bug" in result.output and "Traceback" not in result.output
    usage = CliRunner().invoke(_crashing, [])
    assert usage.exit_code == 2 and "bad usage" in usage.output


# ------------------------------------------------------------------------------ no ../shared default


@pytest.fixture
def beside_shared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working folder with a ../shared/data beside it (as in a checkout), ETL_SHARED_DATA unset."""
    for name in ("mids", "mids_full", "aodb"):
        (tmp_path / "shared" / "data" / name).mkdir(parents=True)
    (tmp_path / "shared" / "data" / "aodb" / "items.json").write_text("[]")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    for name in ("ETL_SHARED_DATA", "ETL_DATABASE_URL", "DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    return work


def test_no_command_defaults_to_shared(beside_shared: Path) -> None:
    from etl.bench import find_real_export

    out = beside_shared / "ao"
    made = CliRunner().invoke(main, ["generate", "aodb", str(out), "--items", "5"])
    assert made.exit_code == 2, made.output
    assert "--template" in made.output and "ETL_SHARED_DATA" in made.output
    assert not out.exists()
    reads = CliRunner().invoke(main, ["bench-reads", "--dataset", "mids"])
    assert reads.exit_code == 2, reads.output
    assert "--template" in reads.output and "ETL_SHARED_DATA" in reads.output
    assert not (beside_shared / ".etl").exists()
    assert find_real_export("mids") is None


def test_shared_data_comes_from_the_environment(beside_shared: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from etl.bench import find_real_export
    from tests.conftest import SHARED, require_shared

    require_shared(SHARED / "aodb" / "items_100.json")
    monkeypatch.setenv("ETL_SHARED_DATA", str(SHARED))
    out = beside_shared / "ao"
    made = CliRunner().invoke(main, ["generate", "aodb", str(out), "--items", "5"])
    assert made.exit_code == 0, made.output
    assert any(out.iterdir())
    assert find_real_export("mids") == SHARED / "mids_full"


def test_the_session_names_what_it_skipped_for_want_of_data(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS")}
    env["ETL_SHARED_DATA"] = str(tmp_path / "nowhere")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "tests/test_aodb.py::test_lookup_tables_are_deduplicated_and_shared",
         "tests/test_mids.py::test_counts_reconcile_with_source"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [line for line in done.stdout.splitlines() if "ETL_SHARED_DATA=" in line]
    assert len(lines) == 1, done.stdout
    assert lines[0].startswith("2 tests skipped") and str(tmp_path / "nowhere") in lines[0]
