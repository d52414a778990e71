"""The load stage on the real PostgreSQL: atomic swap, verification, resume after SIGKILL, ledger, CLI.

Every test gets a database of its own (``pg_url``). The real sample export is staged, validated
and transformed once per module, twice: as it is (``full``) and without one powerset file
(``small``), so a reload visibly changes the row counts. Tests that change a run work on a copy.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result

from etl import get_dataset, open_run
from etl.cli import main
from etl.dataset import Table
from etl.datasets import dataset_of
from etl.errors import EtlError
from etl.infra import ledger
from etl.infra.pg import DatabaseError, LockBusy, advisory_lock, connect, lock_key
from etl.load import VerificationFailed, live_tables, load, table_checksums
from etl.run import MANIFEST_FORMAT, Run, write_json_atomic
from tests.conftest import MidsRuns, mids_runs, transformed_run

REPO = Path(__file__).resolve().parents[1]
MIDS = get_dataset("mids")
TABLES = [t.name for t in MIDS.tables]
#: The powerset file left out of the ``small`` export (its powers, effects and requirements go).
DROPPED_SET = "Class_Blaster_Blaster_Ranged.Fire_Blast.json"


@pytest.fixture(scope="module")
def runs(mids_sample: Path, tmp_path_factory: pytest.TempPathFactory) -> MidsRuns:
    runs = mids_runs(mids_sample, tmp_path_factory.mktemp("load"), DROPPED_SET)
    assert runs.full.id != runs.small.id
    assert rows_of(runs.full)["powers"] > rows_of(runs.small)["powers"]
    return runs


def copy_run(run: Run, dest: Path) -> Run:
    """A copy of a staged run directory (to change it without touching the module's run)."""
    shutil.copytree(run.path, dest)
    return open_run(dest)


def rows_of(run: Run) -> dict[str, int]:
    return {name: int(e["rows"]) for name, e in run.manifest["tables"].items()}


def checksums_of(run: Run) -> dict[str, str]:
    return {name: str(e["checksum"]) for name, e in run.manifest["tables"].items()}


def cli(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(main, list(args), input=input)


def etl_process(*args: str, kill_at: str) -> subprocess.CompletedProcess[str]:
    """``etl ARGS`` in a real process that SIGKILLs itself at load step ``kill_at``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETL_FAULT_")}
    env["ETL_FAULT_KILL_AT"] = kill_at
    return subprocess.run([sys.executable, "-m", "etl.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def query(url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with connect(url) as conn:
        return conn.execute(sql, params).fetchall()


def side_schemas(url: str) -> list[str]:
    """Build or old schemas beside the live one (``mids__b*``, ``mids__old*``)."""
    return [r[0] for r in query(url, "SELECT nspname FROM pg_namespace WHERE nspname LIKE %s "
                                     "ORDER BY 1", ("mids\\_\\_%",))]


def latest_load(url: str, run: Run) -> dict[str, Any]:
    with connect(url) as conn:
        return ledger.get_run(conn, run.id)


def loads_of(url: str, run: Run) -> int:
    return int(query(url, "SELECT count(*) FROM etl.runs WHERE run_id = %s", (run.id,))[0][0])


def wait_for_the_killed_load(url: str) -> None:
    """Wait, on the server, until the killed load's session has ended: it held the load lock,
    which the server frees when it notices the client is gone (lock_timeout is the deadline)."""
    key = lock_key("load:mids")
    with connect(url) as conn:
        conn.execute("SET lock_timeout = '30s'")
        conn.execute("SELECT pg_advisory_lock(%s)", (key,))
        conn.execute("SELECT pg_advisory_unlock(%s)", (key,))


def assert_clean_load_of(url: str, run: Run) -> None:
    """The live schema holds exactly the run's rows, nothing is left beside it."""
    assert live_tables(url, MIDS) == rows_of(run)
    assert table_checksums(url, MIDS) == checksums_of(run)
    assert side_schemas(url) == []


# ------------------------------------------------------------------------------ a clean load


def test_load_cli_builds_keys_indexes_view_and_records_the_run(pg_url: str, runs: MidsRuns) -> None:
    run = runs.full
    res = cli("load", str(run.path), "--database-url", pg_url, "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["schema"] == "mids" and out["mode"] == "full" and not out["skipped"]
    assert out["rows"] == rows_of(run) and out["checksums"] == checksums_of(run)
    assert_clean_load_of(pg_url, run)

    # Keys, references, the SQL files' indexes, the view with its unique index, ANALYZE.
    contypes = dict(query(pg_url, "SELECT contype, count(*) FROM pg_constraint c JOIN pg_namespace n "
                                  "ON n.oid = c.connamespace WHERE nspname = 'mids' GROUP BY 1"))
    assert contypes["p"] == len(MIDS.tables)
    assert contypes["u"] == sum(len(t.unique) for t in MIDS.tables)
    assert contypes["f"] == sum(len(t.foreign_keys) for t in MIDS.tables)
    indexes = {r[0] for r in query(pg_url, "SELECT indexname FROM pg_indexes WHERE schemaname = 'mids'")}
    assert {"powers_powerset_id_fkey_idx", "power_effects_effect_type_idx",
            "power_build_summary_power_id_key"} <= indexes
    analyzed = {r[0] for r in query(pg_url, "SELECT DISTINCT tablename FROM pg_stats "
                                            "WHERE schemaname = 'mids'")}
    assert set(TABLES) <= analyzed
    persistence = {r[0] for r in query(pg_url, "SELECT relpersistence FROM pg_class c JOIN pg_namespace n "
                                               "ON n.oid = c.relnamespace WHERE nspname = 'mids' "
                                               "AND relkind IN ('r', 'm')")}
    assert persistence == {"p"}
    with connect(pg_url) as conn:
        conn.execute("REFRESH MATERIALIZED VIEW CONCURRENTLY mids.power_build_summary")
        summary = conn.execute("SELECT count(*), sum(effect_count) FROM mids.power_build_summary").fetchone()
    assert summary == (rows_of(run)["powers"], rows_of(run)["power_effects"])

    # The ledger: `etl runs` lists it, `etl runs show` shows it with every finished step.
    res = cli("runs", "--database-url", pg_url, "--json")
    assert res.exit_code == 0, res.output
    [listed] = json.loads(res.stdout)
    assert (listed["run_id"], listed["status"], listed["mode"]) == (run.id, "succeeded", "full")
    assert listed["rows"] == rows_of(run) and listed["peak_rss"] > 0
    res = cli("runs", "--database-url", pg_url)
    assert res.exit_code == 0 and run.id in res.stderr and "succeeded" in res.stderr
    res = cli("runs", "show", run.id, "--database-url", pg_url, "--json")
    assert res.exit_code == 0, res.output
    shown = json.loads(res.stdout)
    assert shown["id"] == listed["id"] and shown["status"] == "succeeded" and shown["error"] is None
    steps = [s["step"] for s in shown["steps"]]
    assert {"create", "fkeys", "sql", "verify", "swap"} <= set(steps)
    assert {f"keys:{t}" for t in TABLES} <= set(steps)
    assert {f"copy:{t}" for t in TABLES} <= set(steps)
    assert steps[-2:] == ["verify", "swap"]
    assert {p["name"] for p in shown["phases"]} >= {"load", "keys", "verify"}
    res = cli("runs", "show", str(listed["id"]), "--database-url", pg_url)
    assert res.exit_code == 0 and "succeeded" in res.stderr and "copy:power_effects" in res.stderr

    # The same run again: nothing to do, no new ledger row.
    res = cli("load", str(run.path), "--database-url", pg_url)
    assert res.exit_code == 0, res.output
    assert "already loaded" in res.stderr
    assert loads_of(pg_url, run) == 1


# ------------------------------------------------------------------------------ atomicity


def test_readers_see_old_or_new_never_a_mix(pg_url: str, runs: MidsRuns) -> None:
    """Readers querying in a loop while a reload runs see the old rows, then the new ones: never
    an empty table, a missing view, or (within one REPEATABLE READ snapshot) a table from one
    load and the view from the other. Two readers, in opposite orders, so a transaction that
    straddles the swap is likely whatever the timing."""
    load(runs.small, dataset_of(runs.small), database_url=pg_url)
    rels = ("powers", "power_effects", "power_build_summary")
    # The view has one row per power.
    old, new = ((rows["powers"], rows["power_effects"], rows["powers"])
                for rows in (rows_of(runs.small), rows_of(runs.full)))
    assert all(a != b for a, b in zip(old, new, strict=True))
    seen: list[list[tuple[int, ...]]] = [[], []]
    errors: list[str] = []
    ready = [threading.Event(), threading.Event()]
    stop = threading.Event()

    def reader(n: int) -> None:
        order = rels if n == 0 else rels[::-1]
        with psycopg.connect(pg_url, autocommit=False) as conn:
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            while True:
                last = stop.is_set()  # one more read after the load ended
                try:
                    counts = {r: conn.execute(f"SELECT count(*) FROM mids.{r}").fetchone()[0]  # type: ignore[index]
                              for r in order}
                    conn.commit()
                    seen[n].append(tuple(counts[r] for r in rels))
                except psycopg.Error as exc:
                    conn.rollback()
                    errors.append(str(exc).strip())
                ready[n].set()
                if last:
                    return

    threads = [threading.Thread(target=reader, args=(n,), daemon=True) for n in (0, 1)]
    for t in threads:
        t.start()
    try:
        assert all(r.wait(30) for r in ready)
        result = load(runs.full, dataset_of(runs.full), database_url=pg_url)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert not result.skipped
    assert errors == []
    for reads in seen:
        assert set(reads) <= {old, new}, sorted(set(reads) - {old, new})
        assert reads[0] == old and reads[-1] == new
        assert reads.index(new) == len(reads) - reads.count(new), "old data seen again after the new"
    assert min(len(reads) for reads in seen) >= 10, [len(reads) for reads in seen]
    assert_clean_load_of(pg_url, runs.full)


# ------------------------------------------------------------------------------ verification


@pytest.mark.parametrize("field", ["checksum", "rows"])
def test_verification_mismatch_fails_and_keeps_the_live_schema(pg_url: str, runs: MidsRuns, tmp_path: Path,
                                                               field: str) -> None:
    load(runs.small, dataset_of(runs.small), database_url=pg_url)
    before = table_checksums(pg_url, MIDS)
    bad = copy_run(runs.full, tmp_path / "bad")
    entry = bad.manifest["tables"]["salvage"]
    entry[field] = "0000000000000000-108" if field == "checksum" else entry["rows"] + 1
    write_json_atomic(bad.path / "manifest.json", bad.manifest)

    res = cli("load", str(bad.path), "--database-url", pg_url)
    assert res.exit_code == VerificationFailed.exit_code == 1, res.output
    assert "differ from the staged" in res.stderr and "salvage" in res.stderr
    assert table_checksums(pg_url, MIDS) == before
    failed = latest_load(pg_url, bad)
    assert failed["status"] == "failed" and failed["ended_at"] is not None
    assert "salvage" in failed["error"] and "swap" not in {s["step"] for s in failed["steps"]}
    res = cli("runs", "show", bad.id, "--database-url", pg_url)
    assert res.exit_code == 0 and "failed" in res.stderr and "salvage" in res.stderr


def test_a_record_the_staged_rows_do_not_rebuild_stops_the_load_before_the_swap(
        pg_url: str, runs: MidsRuns, mids_sample: Path, tmp_path: Path) -> None:
    """The verify step's reconciliation decides too: a source record changed after staging is
    named (file and key), and nothing is swapped in."""
    load(runs.small, dataset_of(runs.small), database_url=pg_url)
    before = table_checksums(pg_url, MIDS)
    export = tmp_path / "export"
    shutil.copytree(mids_sample, export)
    run = transformed_run("mids", [export], tmp_path / "staging")
    source = next((export / "db").rglob("*.json"))
    record = json.loads(source.read_text())
    record["Powers"][0]["DescShort"] = "changed after staging"
    source.write_text(json.dumps(record))

    with pytest.raises(VerificationFailed, match="not rebuilt by the staged rows") as failed:
        load(run, dataset_of(run), database_url=pg_url, reconcile_sample=1.0)
    assert source.name in str(failed.value) and "DescShort" in str(failed.value)
    assert table_checksums(pg_url, MIDS) == before
    last = latest_load(pg_url, run)
    assert last["status"] == "failed" and "swap" not in {s["step"] for s in last["steps"]}
    assert "not rebuilt" in last["error"]


def test_verification_catches_a_corrupted_copy_and_the_next_load_redoes_it(
        pg_url: str, runs: MidsRuns, monkeypatch: pytest.MonkeyPatch) -> None:
    """A row changed by the COPY (as a silent corruption would) fails the load at verification;
    running it again rebuilds the schema instead of resuming the bad copy."""
    run = runs.full
    monkeypatch.setenv("ETL_FAULT_DROP_AT", "keys:salvage@always")  # stop right after the copies
    with pytest.raises(DatabaseError, match="keys:salvage"):
        load(run, dataset_of(run), database_url=pg_url, retry_delay=0.01)
    monkeypatch.delenv("ETL_FAULT_DROP_AT")
    [build] = side_schemas(pg_url)
    with connect(pg_url) as conn:
        conn.execute(f'UPDATE "{build}".salvage SET external_name = external_name || \'!\' '
                     "WHERE salvage_id = 1")
    with pytest.raises(VerificationFailed, match="salvage: content checksum"):
        load(run, dataset_of(run), database_url=pg_url, retry_delay=0.01)
    assert live_tables(pg_url, MIDS) == dict.fromkeys(TABLES, 0)  # the migration's empty tables
    assert latest_load(pg_url, run)["status"] == "failed"

    again = load(run, dataset_of(run), database_url=pg_url, retry_delay=0.01)
    assert "copy:salvage" not in again.resumed_from
    assert_clean_load_of(pg_url, run)
    assert latest_load(pg_url, run)["status"] == "succeeded"


# ------------------------------------------------------------------------------ kill and resume

KILL_POINTS = [
    # (step killed inside of, steps certainly finished before it, with old data loaded first)
    pytest.param("create", set(), False, id="create-first-load"),
    pytest.param("copy:power_effects", {"create"}, True, id="during-copy"),
    pytest.param("fkeys", {f"keys:{t}" for t in TABLES} | {f"copy:{t}" for t in TABLES}, True,
                 id="after-keys"),
    pytest.param("verify", {"fkeys", "sql"}, True, id="in-verify"),
    pytest.param("swap", {"verify"}, True, id="in-swap"),
]


@pytest.mark.parametrize(("point", "done_before", "old_data"), KILL_POINTS)
def test_killed_load_resumes_to_a_clean_load(pg_url: str, runs: MidsRuns, point: str, done_before: set[str],
                                             old_data: bool) -> None:
    run = runs.full
    if old_data:
        load(runs.small, dataset_of(runs.small), database_url=pg_url)
        before = table_checksums(pg_url, MIDS)
    args = ("load", str(run.path), "--database-url", pg_url)

    killed = etl_process(*args, kill_at=point)
    assert killed.returncode == -9, killed.stderr
    wait_for_the_killed_load(pg_url)
    if old_data:
        assert table_checksums(pg_url, MIDS) == before
    else:  # first load: the live schema is the migration's, empty
        assert live_tables(pg_url, MIDS) == dict.fromkeys(TABLES, 0)
    interrupted = latest_load(pg_url, run)
    steps = {s["step"] for s in interrupted["steps"]}
    assert interrupted["status"] == "abandoned"  # recorded running; its loader is gone
    assert point not in steps and done_before <= steps  # killed exactly there
    assert [s.startswith("mids__b") for s in side_schemas(pg_url)] == ([True] if steps else [])

    res = cli(*args)
    assert res.exit_code == 0, res.output
    if steps:
        assert f"resumed load #{interrupted['id']}: {len(steps)} step(s)" in res.stderr
    assert_clean_load_of(pg_url, run)
    finished = latest_load(pg_url, run)
    assert (finished["id"], finished["status"]) == (interrupted["id"], "succeeded")
    assert loads_of(pg_url, run) == 1
    assert {f"copy:{t}" for t in TABLES} | {"verify", "swap"} <= {s["step"] for s in finished["steps"]}


# ------------------------------------------------------------------------------ lock, dropped connections


def test_second_load_is_refused_while_one_runs(pg_url: str, runs: MidsRuns) -> None:
    load(runs.small, dataset_of(runs.small), database_url=pg_url)
    before = table_checksums(pg_url, MIDS)
    with connect(pg_url) as holder:
        holder.execute("SET application_name = 'etl load'")
        with advisory_lock(holder, "load:mids", what="load of mids"):
            res = cli("load", str(runs.full.path), "--database-url", pg_url)
            assert res.exit_code == LockBusy.exit_code == 4, res.output
            assert "another load of mids holds the lock" in res.stderr
            assert "etl load" in res.stderr  # who holds it
            with pytest.raises(LockBusy):
                load(runs.full, dataset_of(runs.full), database_url=pg_url)
    assert loads_of(pg_url, runs.full) == 0
    assert table_checksums(pg_url, MIDS) == before
    res = cli("load", str(runs.full.path), "--database-url", pg_url)  # lock released: it goes
    assert res.exit_code == 0, res.output
    assert_clean_load_of(pg_url, runs.full)


def test_dropped_connection_is_retried_then_fails_naming_the_next_step(
        pg_url: str, runs: MidsRuns, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    run = runs.full
    monkeypatch.setenv("ETL_FAULT_DROP_AT", "copy:powers")  # once: the retry succeeds
    with caplog.at_level("WARNING"):
        load(run, dataset_of(run), database_url=pg_url, retry_delay=0.01)
    assert any("copy of powers: connection lost" in r.getMessage() for r in caplog.records)
    assert_clean_load_of(pg_url, run)
    loaded = table_checksums(pg_url, MIDS)

    monkeypatch.setenv("ETL_FAULT_DROP_AT", "fkeys@always")
    with pytest.raises(DatabaseError) as failed:
        load(run, dataset_of(run), database_url=pg_url, force=True, retry_delay=0.01)
    message = str(failed.value)
    assert "step fkeys: connection lost 4 times" in message
    assert f"run `etl load {run.path}` again" in message
    assert table_checksums(pg_url, MIDS) == loaded
    record = latest_load(pg_url, run)
    assert record["status"] == "failed" and "fkeys" in record["error"]

    monkeypatch.delenv("ETL_FAULT_DROP_AT")
    resumed = load(run, dataset_of(run), database_url=pg_url, force=True)
    assert resumed.ledger_id == record["id"] and "copy:powers" in resumed.resumed_from
    assert_clean_load_of(pg_url, run)


def test_a_crashed_copy_worker_is_retried_like_a_lost_connection(
        pg_url: str, runs: MidsRuns, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """ADBC runs in forked worker processes (etl.load.forked): a driver that aborts the process
    (as adbc-driver-postgresql 1.8.0 does on a connection that is already gone) costs one
    retry, not the load."""
    run = runs.full
    monkeypatch.setenv("ETL_FAULT_DROP_AT", "copy:power_effects@abort")
    with caplog.at_level("WARNING"):
        result = load(run, dataset_of(run), database_url=pg_url, retry_delay=0.01)
    died = [r.getMessage() for r in caplog.records if "copy of power_effects" in r.getMessage()]
    assert len(died) == 1, died
    assert "killed by signal 6 (SIGABRT)" in died[0]
    assert "fault injection: aborting the worker at copy:power_effects" in died[0]  # its stderr
    assert result.checksums == checksums_of(run)
    assert_clean_load_of(pg_url, run)
    assert not side_schemas(pg_url)


# ------------------------------------------------------------------------------ etl run, rebuild, unsafe-fast


def test_run_end_to_end_json(pg_url: str, mids_sample: Path, tmp_path: Path, runs: MidsRuns) -> None:
    args = ("--staging-dir", str(tmp_path / "st"), "run", "mids", str(mids_sample),
            "--database-url", pg_url, "--json")
    res = cli(*args)
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["validation"] == "passed" and out["run_id"] == runs.full.id
    assert out["tables"] == rows_of(runs.full)
    assert out["load"]["schema"] == "mids" and not out["load"]["skipped"]
    assert out["load"]["checksums"] == checksums_of(runs.full)
    assert {"stage", "validate", "transform", "load", "swap"} <= {p["name"] for p in out["phases"]}
    assert_clean_load_of(pg_url, runs.full)
    again = cli(*args)
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["load"]["skipped"] is True
    assert loads_of(pg_url, runs.full) == 1


def test_run_stops_on_validation_errors_before_the_database(pg_url: str, mids_sample: Path,
                                                            tmp_path: Path) -> None:
    export = tmp_path / "export"
    shutil.copytree(mids_sample, export)
    victim = next((export / "db").rglob(DROPPED_SET))
    data = json.loads(victim.read_text())
    data["Powers"][0]["Accuracy"] = -5.0
    victim.write_text(json.dumps(data))
    res = cli("--staging-dir", str(tmp_path / "st"), "run", "mids", str(export),
              "--database-url", pg_url, "--json")
    assert res.exit_code == 1, res.output
    assert "validation failed" in res.stderr and "powers (1 of 428)" in res.stderr
    # --json: the error document on stdout carries the failing rules (the table goes to stderr
    # without --json, as `etl validate` shows it).
    doc = json.loads(res.stdout)
    assert doc["status"] == "failed" and doc["failed_levels"][0] == "powers"
    assert "powers.accuracy.range" in [r["name"] for r in doc["failed_rules"] if r["severity"] == "error"]
    # Not even the ledger or the live schema was created.
    assert query(pg_url, "SELECT nspname FROM pg_namespace WHERE nspname IN ('etl', 'mids')") == []


def test_rebuild_checks_files_and_reproduces_the_checksums(
        pg_url: str, runs: MidsRuns, tmp_path: Path) -> None:
    run = copy_run(runs.full, tmp_path / "run")
    res = cli("load", str(run.path), "--database-url", pg_url)
    assert res.exit_code == 0, res.output
    first = table_checksums(pg_url, MIDS)

    res = cli("rebuild", str(run.path), "--database-url", pg_url, "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["load"]["mode"] == "rebuild" and out["load"]["checksums"] == first
    assert table_checksums(pg_url, MIDS) == first
    assert side_schemas(pg_url) == []
    assert latest_load(pg_url, run)["mode"] == "rebuild"
    assert loads_of(pg_url, run) == 2

    chunks = sorted((run.path / "tables" / "powers").glob("*.parquet"))
    changed = chunks[0]
    data = bytearray(changed.read_bytes())
    data[len(data) // 2] ^= 0x01
    changed.write_bytes(bytes(data))
    res = cli("rebuild", str(run.path), "--database-url", pg_url)
    assert res.exit_code == 2, res.output
    assert str(changed) in res.stderr and "changed" in res.stderr

    missing = next((run.path / "tables" / "power_effects").glob("*.parquet"))
    shutil.copy(runs.full.path / changed.relative_to(run.path), changed)  # restore the first
    missing.unlink()
    res = cli("rebuild", str(run.path), "--database-url", pg_url)
    assert res.exit_code == 2, res.output
    assert str(missing) in res.stderr and "missing" in res.stderr
    assert table_checksums(pg_url, MIDS) == first
    assert loads_of(pg_url, run) == 2


def test_unsafe_fast_asks_and_builds_unlogged_tables(pg_url: str, runs: MidsRuns) -> None:
    args = ("load", str(runs.full.path), "--database-url", pg_url, "--unsafe-fast")
    res = cli(*args, input="n\n")
    assert res.exit_code != 0
    assert "UNLOGGED" in res.stderr and "Load with --unsafe-fast?" in res.stderr
    assert query(pg_url, "SELECT nspname FROM pg_namespace WHERE nspname = 'etl'") == []  # nothing ran

    res = cli(*args, input="y\n")
    assert res.exit_code == 0, res.output
    tables = query(pg_url, "SELECT relname, relpersistence FROM pg_class c JOIN pg_namespace n "
                           "ON n.oid = c.relnamespace WHERE nspname = 'mids' AND relkind = 'r'")
    assert dict(tables) == dict.fromkeys(TABLES, "u")
    assert_clean_load_of(pg_url, runs.full)
    assert latest_load(pg_url, runs.full)["mode"] == "unsafe-fast"

    res = cli(*args, "--yes", "--force")  # no question asked with --yes
    assert res.exit_code == 0, res.output
    assert "Load with --unsafe-fast?" not in res.stderr
    assert loads_of(pg_url, runs.full) == 2


# ------------------------------------------------------------------------------ crafted chunks
#
# Runs written by hand, chunk by chunk (no stage, validate or transform): rows that validate
# would never pass (a NUL in text), lineage columns beside a table's own, json text in odd forms.

#: Where the crafted rows say they come from (a source as a staged manifest lists it).
SOURCE = {"relpath": "db/Player/Class_Blaster_Blaster_Ranged.Fire_Blast.json",
          "path": "/exports/mids/db/Player/Class_Blaster_Blaster_Ranged.Fire_Blast.json",
          "source": "mids", "size": 1, "sha256": "0" * 64, "shape": "object"}


def crafted_rows(table: Table, n: int, **values: list[Any]) -> dict[str, list[Any]]:
    """``n`` plausible rows of ``table`` (keys 1..n, every NOT NULL column set), by column;
    ``values`` replaces whole columns."""
    def column(field: pa.Field) -> list[Any]:
        t = field.type
        if pa.types.is_integer(t):
            return list(range(1, n + 1))
        if pa.types.is_floating(t):
            return [0.5] * n
        if pa.types.is_boolean(t):
            return [False] * n
        if pa.types.is_list(t) or pa.types.is_large_list(t):
            return [[]] * n
        if field.name == "extra":
            return ["{}"] * n
        return [f"{field.name} {i}" for i in range(1, n + 1)]

    rows = {f.name: column(f) for f in table.polars_schema.to_arrow()}
    rows.update(values)
    return rows


def crafted_run(root: Path, chunks: dict[str, list[dict[str, list[Any]]]], *,
                lineage_beside: bool = False) -> Run:
    """A transformed mids run whose table ``name`` is written as the given chunks (lists of rows
    by column; columns beyond the table's, such as lineage, written too, or with
    ``lineage_beside`` the lineage columns in files of their own, as ``lineage_chunks``); other
    tables empty."""
    tables = {}
    for table in MIDS.tables:
        schema = table.polars_schema.to_arrow()
        entry: dict[str, Any] = {"rows": 0, "chunks": [], "primary_key": list(table.primary_key),
                                 "schema": {}, "checksum": "", "json_dtypes": {}}
        for i, rows in enumerate(chunks.get(table.name, [])):
            if lineage_beside and "_file" in rows:
                beside = {c: rows.pop(c) for c in ("_file", "_record", "_path")}
                rel = f"tables/{table.name}/lineage/part-{i:05d}.parquet"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                pq.write_table(pa.table(beside), root / rel)
                entry.setdefault("lineage_chunks", []).append(
                    {"path": rel, "rows": len(beside["_file"])})
            fields = [schema.field(c) if c in schema.names else
                      pa.field(c, pa.int64() if c == "_record" else pa.string()) for c in rows]
            data = pa.table({c: pa.array(v, f.type) for (c, v), f in zip(rows.items(), fields, strict=True)})
            rel = f"tables/{table.name}/part-{i:05d}.parquet"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(data, root / rel)
            entry["chunks"].append({"path": rel, "rows": data.num_rows})
            entry["rows"] += data.num_rows
        tables[table.name] = entry
    manifest = {"format": MANIFEST_FORMAT, "run_id": f"mids-crafted{abs(hash(root)) % 10**6:06d}",
                "dataset": "mids", "dataset_version": MIDS.version, "sources": [SOURCE],
                "levels": {}, "tables": tables}
    write_json_atomic(root / "manifest.json", manifest)
    return open_run(root)


def lineage(n: int, *, record: int, paths: list[str]) -> dict[str, list[Any]]:
    return {"_file": [SOURCE["relpath"]] * n, "_record": [record] * n, "_path": paths}


@pytest.mark.parametrize("lineage_at", ["chunk", "beside", None],
                         ids=["lineage-in-chunk", "lineage-beside", "no-lineage"])
def test_a_refused_row_names_its_source_record_column_and_value(
        pg_url: str, tmp_path: Path, lineage_at: str | None) -> None:
    """A NUL in text (which validate normally strips) reaching COPY: the error names the source
    file, record and JSON path from the row's lineage (columns of its chunk or files beside it;
    else the chunk file and row), the column, where the NUL is with the text around it, and the
    staged chunk row; nothing is retried and nothing swapped in."""
    powers = MIDS.table("powers")
    text = "Sets the target ablaze for 10 seconds.\x00 Damage: Fire."
    first = crafted_rows(powers, 2)
    second = crafted_rows(powers, 3, power_id=[3, 4, 5],
                          desc_long=["fine", text, "also fine"])
    if lineage_at:
        first |= lineage(2, record=0, paths=["Powers[0]", "Powers[1]"])
        second |= lineage(3, record=0, paths=["Powers[2]", "Powers[3]", "Powers[4]"])
    run = crafted_run(tmp_path / "run", {"powers": [first, second]},
                      lineage_beside=lineage_at == "beside")

    with pytest.raises(EtlError) as raised:
        load(run, dataset_of(run), database_url=pg_url, retry_delay=0.01)
    err = raised.value
    chunk = run.path / "tables" / "powers" / "part-00001.parquet"
    message = str(err)
    if lineage_at:
        assert (err.file, err.record) == (SOURCE["path"], 0)
        assert message.startswith(f"{SOURCE['path']}, record 0: ")
        assert "refused the row of Powers[3]" in message
    else:
        assert (err.file, err.record) == (str(chunk), 1)
    assert f"staged as: {chunk}, row 1" in message
    assert 'invalid byte sequence for encoding "UTF8": 0x00 (SQLSTATE 22021)' in message
    assert ("column desc_long: the text holds NUL (\\x00) at offset 38 of 53 characters: "
            '…"t ablaze for 10 seconds.\\x00 Damage: Fire."') in message
    assert err.hint is not None and "NUL" in err.hint and "not retried" in err.hint
    assert "connection lost" not in message  # refused once, not retried as a drop

    failed = latest_load(pg_url, run)
    assert failed["status"] == "failed" and "desc_long" in failed["error"]
    assert query(pg_url, "SELECT count(*) FROM mids.powers") == [(0,)]  # nothing swapped in
    [build] = side_schemas(pg_url)
    assert query(pg_url, f'SELECT count(*) FROM "{build}".powers') == [(0,)]


def test_lineage_columns_are_not_loaded_and_json_text_is_kept_as_sent(pg_url: str,
                                                                      tmp_path: Path) -> None:
    """Chunks carrying lineage columns load unchanged (only the table's columns are sent), and a
    ``json`` column keeps its text byte for byte (spacing, key order, duplicate keys, escapes),
    which verification compares as plain text."""
    salvage = MIDS.table("salvage")
    assert {c.name: c.type for c in salvage.columns}.get("extra") == "json"
    extras = ['{"b": 1,  "a": [1, 2.50]}', '{"a":1,"a":2}', '"caf\\u00e9 \\u0000 é"', "[]",
              '{"deep": {"x": null, "y": [true, {"z": "\\n"}]}}']
    rows = crafted_rows(salvage, 5, extra=extras)
    rows |= lineage(5, record=7, paths=[f"[{i}]" for i in range(5)])
    run = crafted_run(tmp_path / "run", {"salvage": [rows]})
    result = load(run, dataset_of(run), database_url=pg_url, retry_delay=0.01)
    assert result.rows["salvage"] == 5
    assert query(pg_url, "SELECT extra::text FROM mids.salvage ORDER BY salvage_id") == [
        (e,) for e in extras]
    columns = [r[0] for r in query(pg_url, "SELECT column_name FROM information_schema.columns "
                                           "WHERE table_schema = 'mids' AND table_name = 'salvage'")]
    assert "extra" in columns and not {"_file", "_record", "_path"} & set(columns)
    assert table_checksums(pg_url, MIDS, run=run)["salvage"] == result.checksums["salvage"]
    assert result.checksums["salvage"].endswith("-5")

    # A merge compares json as its text (json has no equality operator): one respaced value is
    # one update, the rest unchanged.
    rows["extra"] = [*extras[:1], '{"a": 1, "a": 2}', *extras[2:]]
    merged = load(crafted_run(tmp_path / "edited", {"salvage": [rows]}), MIDS, database_url=pg_url,
                  mode="merge")
    assert merged.merged["salvage"] == {"staged": 5, "inserted": 0, "updated": 1, "unchanged": 4}
    assert query(pg_url, "SELECT extra::text FROM mids.salvage WHERE salvage_id = 2") == [
        ('{"a": 1, "a": 2}',)]


def test_a_chunk_without_a_table_column_is_named_before_any_copy(pg_url: str, tmp_path: Path) -> None:
    rows = crafted_rows(MIDS.table("salvage"), 3)
    del rows["external_name"]
    run = crafted_run(tmp_path / "run", {"salvage": [rows]})
    with pytest.raises(EtlError, match=r"no column\(s\) \['external_name'\]") as raised:
        load(run, dataset_of(run), database_url=pg_url, retry_delay=0.01)
    assert raised.value.file == str(run.path / "tables" / "salvage" / "part-00000.parquet")
    assert raised.value.hint is not None and "etl transform" in raised.value.hint


def test_the_offending_part_of_a_refused_value() -> None:
    """What a load error quotes of a value (no database): invalid UTF-8 where it starts, a
    number as it is, a null as null; and PostgreSQL's fields parsed from an error's text."""
    from etl.load.diagnostics import _diagnostics, _offending_part

    bad = pa.array([b"caf\xc3\xa9 au l\xc3\x28ait"], pa.binary()).view(pa.string())[0]
    assert _offending_part(bad) == ('the text is not valid UTF-8 at byte offset 10 (character 9) '
                                    'of 15 bytes: "café au l\\xc3(ait"')
    assert _offending_part(pa.scalar(3_000_000_000)) == "the value is 3000000000"
    assert _offending_part(pa.scalar(None, pa.string())) == "the value is null"
    text = ('INVALID_ARGUMENT: [libpq] Failed to execute COPY statement: PGRES_FATAL_ERROR ERROR:  '
            'invalid input syntax for type json\nDETAIL:  Token "bad" is invalid.\nCONTEXT:  JSON '
            'data, line 1: {bad\nCOPY t2, line 2, column js\n. SQLSTATE: 22P02')
    assert _diagnostics(Exception(text)) == {
        "sqlstate": "22P02", "message": "invalid input syntax for type json",
        "detail": 'Token "bad" is invalid.', "context": "JSON data, line 1: {bad\nCOPY t2, line 2, column js"}
