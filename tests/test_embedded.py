"""The embedded PostgreSQL: a real private server in a temporary project, started, used, stopped."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from etl.cli import main
from etl.infra import embedded
from etl.infra.pg import resolve_url

START = ("import logging, sys; from pathlib import Path; from etl.infra.embedded import ensure_started; "
         "logging.basicConfig(level=logging.INFO, format='%(message)s'); "
         "print(ensure_started(Path(sys.argv[1])))")


def _new_project(parent: Path) -> Path:
    root = parent / "proj"
    root.mkdir()
    (root / "pyproject.toml").write_text("[project]\nname = 'embedded-test'\nversion = '0'\n")
    return root


@pytest.fixture(scope="module")
def project() -> Iterator[Path]:
    """A project directory shared by the module's tests (one initdb); its server is always
    stopped and its cluster deleted afterwards."""
    # mkdtemp makes a 0700 folder; when tests run as root the server runs as `postgres`, which
    # must get through it to reach .etl/pg inside the project.
    top = Path(tempfile.mkdtemp(prefix="etl-embedded-test-"))
    top.chmod(0o755)
    root = _new_project(top)
    try:
        yield root
    finally:
        try:
            embedded.remove(root)
        finally:
            shutil.rmtree(top, ignore_errors=True)


def _query(url: str, sql: str) -> list[tuple[object, ...]]:
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        cur = conn.execute(sql)
        return cur.fetchall() if cur.description else []


def test_two_processes_starting_at_once_make_one_cluster(project: Path) -> None:
    procs = [subprocess.Popen([sys.executable, "-c", START, str(project)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    urls = {out.strip().splitlines()[-1] for out, _ in outs}
    assert len(urls) == 1
    logs = "".join(err for _, err in outs)
    assert logs.count("creating the embedded PostgreSQL") == 1, logs
    assert logs.count("starting the embedded PostgreSQL") == 1, logs

    url = urls.pop()
    assert url.startswith("postgresql://postgres@127.0.0.1:") and url.endswith("/etl")
    assert not url.startswith("postgresql://postgres@127.0.0.1:5432/")
    assert _query(url, "SELECT current_database(), current_user") == [("etl", "postgres")]
    settings = dict(_query(url, "SELECT name, setting FROM pg_settings WHERE name IN "
                               "('fsync', 'wal_level', 'listen_addresses', 'server_encoding')"))
    assert settings == {"fsync": "on", "wal_level": "minimal", "listen_addresses": "127.0.0.1",
                        "server_encoding": "UTF8"}


def test_a_running_server_is_reused(project: Path, caplog: pytest.LogCaptureFixture,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    url = embedded.ensure_started(project)
    _query(url, "CREATE TABLE IF NOT EXISTS kept (n int)")
    _query(url, "INSERT INTO kept VALUES (1)")
    before = _query(url, "SELECT count(*) FROM kept")[0][0]
    with caplog.at_level(logging.INFO, logger="etl.infra.embedded"):
        assert embedded.ensure_started(project) == url
    assert not [r for r in caplog.records if "creating" in r.message or "starting" in r.message]
    assert _query(url, "SELECT count(*) FROM kept") == [(before,)]
    # With no URL, the PostgreSQL adapter starts (here: finds) the project's server.
    monkeypatch.chdir(project)
    assert embedded.project_root() == project
    assert resolve_url(None) == url


def test_status_and_stop(project: Path) -> None:
    url = embedded.ensure_started(project)
    info = embedded.status(project)
    assert info["exists"] and info["running"] and info["ready"]
    assert info["url"] == url and url.endswith(f":{info['port']}/etl")
    assert isinstance(info["pid"], int)
    assert info["version"].split(".")[0] == (Path(info["data_dir"]) / "PG_VERSION").read_text().strip()
    assert info["data_dir"] == str((project / ".etl" / "pg").resolve() / "data")

    assert embedded.stop(project) is True
    info = embedded.status(project)
    assert info["exists"] and not info["running"] and info["pid"] is None
    assert info["url"] == url  # the port is remembered for the next start
    with pytest.raises(psycopg.OperationalError):
        _query(url, "SELECT 1")
    assert embedded.stop(project) is False


def test_a_taken_port_moves_the_server_to_another(project: Path) -> None:
    first = embedded.ensure_started(project)
    embedded.stop(project)
    port = embedded.status(project)["port"]
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the old server's TIME_WAITs
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        url = embedded.ensure_started(project)
    assert url != first
    assert _query(url, "SELECT 1") == [(1,)]
    assert embedded.status(project)["url"] == url


def test_a_stale_pid_file_of_another_process_is_not_the_server(project: Path) -> None:
    url = embedded.ensure_started(project)
    embedded.stop(project)
    data = Path(embedded.status(project)["data_dir"])
    # As after a crash and a restart that gave the old pid to another program (here: this test).
    (data / "postmaster.pid").write_text(f"{os.getpid()}\n{data}\n0\n{url.split(':')[-1][:-4]}\n\n"
                                         "127.0.0.1\n0 0\nready\n")
    assert embedded.status(project)["running"] is False
    assert embedded.stop(project) is False  # and no signal sent to this process
    assert embedded.ensure_started(project) == url
    assert _query(url, "SELECT 1") == [(1,)]


def test_cli_start_status_stop(project: Path) -> None:
    runner = CliRunner()
    where = ["--project-dir", str(project)]

    started = runner.invoke(main, ["db", "start", *where])
    assert started.exit_code == 0, started.output
    url = started.stdout.strip().splitlines()[-1]
    assert url == embedded.status(project)["url"]
    assert f"psql {url}" in started.stderr
    _query(url, "CREATE TABLE IF NOT EXISTS survives_restart (n int)")

    status = runner.invoke(main, ["db", "status", "--json", *where])
    assert status.exit_code == 0, status.output
    assert json.loads(status.stdout) | {"running": True, "url": url} == json.loads(status.stdout)

    stopped = runner.invoke(main, ["db", "stop", *where])
    assert stopped.exit_code == 0 and "stopped" in stopped.stderr
    assert json.loads(runner.invoke(main, ["db", "status", "--json", *where]).stdout)["running"] is False
    human = runner.invoke(main, ["db", "status", *where])
    assert human.exit_code == 0 and "stopped" in human.stderr

    again = runner.invoke(main, ["db", "start", *where])
    assert again.exit_code == 0, again.output
    assert again.stdout.strip().splitlines()[-1] == url
    assert _query(url, "SELECT to_regclass('survives_restart') IS NOT NULL") == [(True,)]
    assert runner.invoke(main, ["db", "stop", *where]).exit_code == 0


def test_cli_status_of_a_project_without_a_server(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["db", "status", "--project-dir", str(tmp_path)])
    assert result.exit_code == 0 and "etl db start" in result.stderr
    assert not (tmp_path / ".etl").exists()  # status starts and creates nothing


@pytest.mark.skipif(os.geteuid() != 0, reason="the server's own account is only switched to as root")
def test_project_the_server_account_cannot_reach(tmp_path: Path) -> None:
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)  # root's, closed to others: `postgres` cannot get through
    root = _new_project(closed)
    try:
        url = embedded.ensure_started(root)
        link = root / ".etl" / "pg"
        assert link.is_symlink()
        target = link.resolve()
        assert target.parent == Path(os.path.expanduser(f"~{embedded.SERVER_ACCOUNT}")) / "etl-embedded"
        assert (target / "PROJECT").read_text().strip() == str(root)
        assert _query(url, "SELECT current_database()") == [("etl",)]
        assert embedded.status(root)["data_dir"] == str(target / "data")
    finally:
        embedded.remove(root)
    assert not target.exists() and not link.exists()


def test_binaries_of_a_missing_version_are_a_clear_error() -> None:
    with pytest.raises(embedded.EmbeddedError) as caught:
        embedded.find_binaries(major="9")
    assert "PostgreSQL 9" in str(caught.value) and caught.value.hint
