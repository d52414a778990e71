"""Operations on the real PostgreSQL: etl health (statuses and exit codes), etl stats, etl db optimize.

Each test has a database of its own (``pg_url``); the mids sample is loaded where a test needs data.
"""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from etl.cli import main
from etl.datasets import dataset_of
from etl.infra import ledger
from etl.infra.pg import connect
from etl.load import live_tables, load
from etl.ops import health, optimize, stats
from tests.conftest import REDIS_URL, MidsRuns
from tests.test_cache import MIDS, runs  # noqa: F401  (the module's staged runs fixture)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def loaded(pg_url: str, runs: MidsRuns) -> str:  # noqa: F811
    load(runs.full, dataset_of(runs.full), database_url=pg_url, redis_url=None)
    return pg_url


def _statuses(report: dict) -> dict[str, str]:
    return {c["name"]: c["status"] for c in report["checks"]}


def test_health_all_ok(loaded: str, tmp_path: Path) -> None:
    report = health(loaded, redis_url=REDIS_URL, staging_dir=tmp_path / "staging")
    st = _statuses(report)
    assert report["ok"] is True
    assert st["database"] == st["migrations"] == st["staging"] == st["last load: mids"] == "ok"
    assert st["redis"] == "ok", report
    db = next(c for c in report["checks"] if c["name"] == "database")
    assert db["version"].split()[0][0].isdigit()


def test_health_exit_codes(loaded: str, pg_url: str, tmp_path: Path) -> None:
    cli = CliRunner()
    ok = cli.invoke(main, ["--staging-dir", str(tmp_path), "health", "--json", "--database-url", loaded,
                           "--redis-url", f"redis://127.0.0.1:{_free_port()}/0"])
    assert ok.exit_code == 0, ok.output  # Redis is optional: a warning only
    assert _statuses(json.loads(ok.stdout))["redis"] == "warn"

    wrong = f"postgresql://postgres@127.0.0.1:{_free_port()}/nowhere"
    bad = cli.invoke(main, ["--staging-dir", str(tmp_path), "health", "--json", "--database-url", wrong])
    assert bad.exit_code == 1
    report = json.loads(bad.stdout)
    assert report["ok"] is False and _statuses(report)["database"] == "fail"

    human = cli.invoke(main, ["--staging-dir", str(tmp_path), "health", "--database-url", wrong])
    assert human.exit_code == 1 and "fail" in human.output


def test_health_migrations_behind_fails(pg_url: str, tmp_path: Path) -> None:
    ledger.upgrade(pg_url, "0001_ledger")
    report = health(pg_url, redis_url=None, staging_dir=tmp_path)
    st = _statuses(report)
    assert st["migrations"] == "fail" and st["redis"] == "skip" and report["ok"] is False


def test_health_unwritable_staging_fails(loaded: str, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    report = health(loaded, redis_url=None, staging_dir=blocker / "staging")
    assert _statuses(report)["staging"] == "fail" and report["ok"] is False


def test_stats(loaded: str) -> None:
    info = stats(loaded)
    mids = info["datasets"]["mids"]
    counts = {t["table"]: t["rows"] for t in mids["tables"] if t["kind"] == "table"}
    assert counts == live_tables(loaded, MIDS)
    view = next(t for t in mids["tables"] if t["table"] == "power_build_summary")
    assert view["kind"] == "view" and view["rows"] == counts["powers"] and view["index_bytes"] > 0
    assert all(t["total_bytes"] >= t["table_bytes"] for t in mids["tables"])
    assert mids["generation"] == 1
    assert info["runs"][0]["status"] == "succeeded" and info["runs"][0]["rows"] == counts
    assert "load" in [p["name"] for p in info["runs"][0]["phases"]]

    res = CliRunner().invoke(main, ["stats", "--json", "--database-url", loaded])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["datasets"]["mids"]["rows"] == sum(counts.values())


def test_optimize_refreshes_the_view_concurrently(loaded: str) -> None:
    with connect(loaded) as conn:
        conn.execute("UPDATE mids.powers SET display_name = 'Renamed' WHERE power_id = 1")
    reader = connect(loaded, autocommit=False)
    # An open reader of the view: a blocking REFRESH would wait for it, CONCURRENTLY does not.
    reader.execute("SELECT count(*) FROM mids.power_build_summary")
    done: dict[str, object] = {}
    t = threading.Thread(target=lambda: done.update(report=optimize(loaded, datasets=["mids"])))
    t.start()
    t.join(30)
    finished = not t.is_alive()
    reader.rollback()
    reader.close()
    t.join(30)
    assert finished, "the refresh waited for a reader: it was not CONCURRENTLY"
    report = done["report"]
    assert isinstance(report, dict)
    (view,) = report["datasets"]["mids"]["views"]
    assert view["view"] == "power_build_summary" and view["concurrently"] is True
    assert {a["table"] for a in report["datasets"]["mids"]["analyze"]} >= {"powers", "power_build_summary"}
    with connect(loaded) as conn:
        row = conn.execute("SELECT power_name FROM mids.power_build_summary WHERE power_id = 1").fetchone()
    assert row == ("Renamed",)

    res = CliRunner().invoke(main, ["db", "optimize", "--json", "--database-url", loaded])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["datasets"]["mids"]["views"][0]["concurrently"] is True
