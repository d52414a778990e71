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
