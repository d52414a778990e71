"""The run ledger: its functions on the real PostgreSQL, and `etl runs` / `etl db upgrade`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from etl.cli import main
from etl.errors import ConfigError
from etl.infra import ledger
from etl.infra.pg import DatabaseError, advisory_lock, connect
from etl.metrics import Phase


@pytest.fixture
def db(pg_url: str) -> Iterator[psycopg.Connection[Any]]:
    ledger.upgrade(pg_url)
    with connect(pg_url) as conn:
        yield conn


def test_run_round_trip(db: psycopg.Connection[Any]) -> None:
    lid = ledger.start_run(db, dataset="mids", run_id="mids-3f2a00000000", manifest_sha256="ab" * 32,
                           mode="full")
    # Running while a loader holds the dataset's load lock; abandoned once none does.
    with advisory_lock(db, "load:mids", what="load of mids"):
        run = ledger.get_run(db, str(lid))
        assert run["status"] == "running" and run["ended_at"] is None and run["pid"] and run["host"]
        assert run["steps"] == []
    assert ledger.get_run(db, str(lid))["status"] == "abandoned"
    assert ledger.list_runs(db, dataset="mids")[0]["status"] == "abandoned"

    ledger.step_done(db, lid, "copy:archetypes", {"rows": 12})
    ledger.step_done(db, lid, "copy:archetypes", {"rows": 99})  # again: no change, no error
    ledger.step_done(db, lid, "constraints")
    assert ledger.steps_done(db, lid) == {"copy:archetypes": {"rows": 12}, "constraints": None}

    ledger.finish_run(db, lid, status="succeeded",
                      phases=[Phase("load", 1.5, 12, 10_000_000), {"name": "swap", "seconds": 0.1,
                                                                  "rows": 0, "peak_rss": 1}],
                      rows={"archetypes": 12}, peak_rss=10_000_000)
    run = ledger.get_run(db, "mids-3f2a")
    assert run["id"] == lid and run["status"] == "succeeded" and run["ended_at"] >= run["started_at"]
    assert run["phases"][0] == {"name": "load", "seconds": 1.5, "rows": 12, "peak_rss": 10_000_000}
    assert run["phases"][1]["name"] == "swap"
    assert run["rows"] == {"archetypes": 12} and run["peak_rss"] == 10_000_000
    assert [s["step"] for s in run["steps"]] == ["copy:archetypes", "constraints"]
    assert ledger.get_run(db, "3f2a")["id"] == lid  # the hash part alone
    assert ledger.last_success(db, "mids")["id"] == lid  # type: ignore[index]
    assert ledger.last_success(db, "aodb") is None


def test_resume_candidate(db: psycopg.Connection[Any]) -> None:
    kw: dict[str, Any] = {"dataset": "mids", "run_id": "mids-aaaa", "mode": "full"}
    assert ledger.resume_candidate(db, **kw) is None
    first = ledger.start_run(db, manifest_sha256=None, **kw)
    assert ledger.resume_candidate(db, **kw) == first
    assert ledger.resume_candidate(db, **{**kw, "mode": "unsafe-fast"}) is None
    assert ledger.resume_candidate(db, **{**kw, "run_id": "mids-bbbb"}) is None

    ledger.finish_run(db, first, status="failed", phases=[], rows={}, peak_rss=None, error="killed")
    assert ledger.resume_candidate(db, **kw) == first
    ledger.mark_running(db, first)
    with advisory_lock(db, "load:mids", what="load of mids"):
        run = ledger.get_run(db, str(first))
    assert run["status"] == "running" and run["error"] is None and run["ended_at"] is None

    ledger.finish_run(db, first, status="succeeded", phases=[], rows={}, peak_rss=1)
    assert ledger.resume_candidate(db, **kw) is None  # done: nothing to resume


def test_steps_commit_with_the_callers_transaction(pg_url: str, db: psycopg.Connection[Any]) -> None:
    lid = ledger.start_run(db, dataset="mids", run_id="mids-tx", manifest_sha256=None, mode="full")
    with connect(pg_url, autocommit=False) as conn:
        ledger.step_done(conn, lid, "copy:powers")
        conn.rollback()
        assert ledger.steps_done(db, lid) == {}
        ledger.step_done(conn, lid, "copy:powers")
        conn.commit()
    assert list(ledger.steps_done(db, lid)) == ["copy:powers"]


def test_deleting_a_run_deletes_its_steps(db: psycopg.Connection[Any]) -> None:
    lid = ledger.start_run(db, dataset="mids", run_id="mids-del", manifest_sha256=None, mode="full")
    ledger.step_done(db, lid, "x")
    db.execute("DELETE FROM etl.runs WHERE id = %s", (lid,))
    assert ledger.steps_done(db, lid) == {}


def test_list_runs_newest_first(db: psycopg.Connection[Any]) -> None:
    ids = [ledger.start_run(db, dataset=ds, run_id=f"{ds}-{i}", manifest_sha256=None, mode="full")
           for i, ds in enumerate(["mids", "aodb", "mids"])]
    assert [r["id"] for r in ledger.list_runs(db)] == ids[::-1]
    assert [r["id"] for r in ledger.list_runs(db, dataset="mids")] == [ids[2], ids[0]]
    assert len(ledger.list_runs(db, limit=1)) == 1


def test_get_run_unknown_or_ambiguous(db: psycopg.Connection[Any]) -> None:
    for run_id in ("mids-abc1", "mids-abc2"):
        ledger.start_run(db, dataset="mids", run_id=run_id, manifest_sha256=None, mode="full")
    with pytest.raises(ConfigError, match="fits 2 run ids") as exc:
        ledger.get_run(db, "mids-abc")
    assert exc.value.hint
    with pytest.raises(ConfigError, match="no load of") as exc:
        ledger.get_run(db, "nope")
    assert "etl runs" in (exc.value.hint or "")
    with pytest.raises(ConfigError):
        ledger.get_run(db, "9999")
    assert ledger.get_run(db, "mids-abc2")["run_id"] == "mids-abc2"
    with pytest.raises(ConfigError):
        ledger.get_run(db, "mids-abc_")  # LIKE wildcards are literal


def test_missing_ledger_says_how_to_create_it(pg_url: str) -> None:
    with connect(pg_url) as conn, pytest.raises(DatabaseError, match="ledger is missing") as exc:
        ledger.list_runs(conn)
    assert "etl db upgrade" in (exc.value.hint or "")


# ------------------------------------------------------------------------------ CLI, end to end


def test_cli_db_upgrade_then_runs(pg_url: str) -> None:
    runner = CliRunner()
    first = runner.invoke(main, ["db", "upgrade", "--database-url", pg_url])
    assert first.exit_code == 0, first.output
    assert "0001_ledger, 0004_generations" in first.stderr
    assert first.stdout.strip() == ledger.heads()[0]
    again = runner.invoke(main, ["db", "upgrade", "--database-url", pg_url])
    assert again.exit_code == 0 and "nothing to apply" in again.stderr

    empty = runner.invoke(main, ["runs", "--database-url", pg_url])
    assert empty.exit_code == 0 and "no loads recorded" in empty.stderr

    with connect(pg_url) as conn:
        ok = ledger.start_run(conn, dataset="mids", run_id="mids-3f2a11112222", manifest_sha256="f" * 64,
                              mode="full")
        ledger.step_done(conn, ok, "copy:powers", {"rows": 5})
        ledger.finish_run(conn, ok, status="succeeded", phases=[Phase("load", 2.0, 5, 50_000_000)],
                          rows={"powers": 5, "archetypes": 2}, peak_rss=50_000_000)
        bad = ledger.start_run(conn, dataset="mids", run_id="mids-9999aaaa", manifest_sha256=None,
                               mode="unsafe-fast")
        ledger.finish_run(conn, bad, status="failed", phases=[], rows={}, peak_rss=None,
                          error="duplicate key value violates unique constraint \"powers_pkey\"\nDETAIL: …")

    listed = runner.invoke(main, ["runs", "--database-url", pg_url])
    assert listed.exit_code == 0, listed.output
    assert "mids-3f2a11112222" in listed.stderr and "succeeded" in listed.stderr
    assert "failed" in listed.stderr and "powers_pkey" in listed.stderr and "DETAIL" not in listed.stderr
    assert listed.stdout == ""

    as_json = runner.invoke(main, ["runs", "--json", "--limit", "1", "--database-url", pg_url])
    assert [r["id"] for r in json.loads(as_json.stdout)] == [bad]

    shown = runner.invoke(main, ["runs", "show", "mids-3f2a", "--database-url", pg_url])
    assert shown.exit_code == 0, shown.output
    assert "copy:powers" in shown.stderr and "archetypes" in shown.stderr and "load" in shown.stderr

    # the group's --database-url reaches `show` too
    shown_json = runner.invoke(main, ["runs", "--database-url", pg_url, "show", str(bad), "--json"])
    run = json.loads(shown_json.stdout)
    assert run["status"] == "failed" and run["mode"] == "unsafe-fast" and run["steps"] == []

    missing = runner.invoke(main, ["runs", "show", "nope", "--database-url", pg_url])
    assert missing.exit_code == 2 and "no load of 'nope'" in missing.stderr and "next:" in missing.stderr


def test_cli_runs_without_ledger_says_upgrade(pg_url: str) -> None:
    result = CliRunner().invoke(main, ["runs", "--database-url", pg_url])
    assert result.exit_code == 3 and "etl db upgrade" in result.stderr
