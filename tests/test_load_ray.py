"""The load's COPY on Ray (``engine = "ray"``): a task per staged chunk on a real two-node Ray
cluster (the fixture of ``tests/test_stage_ray.py``), into the real PostgreSQL.

A load on Ray must be the local engine's load: the same rows, the same table checksums read
back, the same ledger (a ``copy:<table>`` step per table, no chunk steps left over). A worker
killed mid-COPY, or just after its commit, is run again by Ray and the tables hold their exact
rows, none doubled; a driver killed mid-COPY leaves a load the same command resumes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from etl import Settings, get_dataset
from etl.cli import main
from etl.datasets import dataset_of
from etl.errors import EtlError
from etl.infra.cluster import FAULT_ENV
from etl.load import live_tables, load
from etl.run import Run
from etl.stage import stage
from etl.transform import transform
from etl.validate import require_passed, validate
from tests.conftest import SHARED, require_shared, run_killed_driver
from tests.test_load import MIDS, SOURCE, crafted_rows, crafted_run, latest_load, lineage, query
from tests.test_stage_ray import ray_cluster, small_export

__all__ = ["ray_cluster", "small_export"]  # the module's fixtures, shared with the stage's tests


@pytest.fixture(scope="module")
def chunked_run(small_export: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The generated export staged and transformed locally in chunks of 250 rows: most tables
    have several chunks, so several COPY tasks each."""
    root = tmp_path_factory.mktemp("load-ray")
    ds = get_dataset("mids")
    staged = stage(ds, [small_export], settings=Settings(staging_dir=root, threads=2, chunk_rows=250)).run
    require_passed(validate(staged, ds))
    return transform(staged, ds).run


def _on_ray(address: str) -> Settings:
    return Settings(engine="ray", ray_address=address, threads=2)


def _staged(run: Run) -> tuple[dict[str, int], dict[str, str]]:
    tables = run.manifest["tables"]
    return ({n: int(e["rows"]) for n, e in tables.items()}, {n: e["checksum"] for n, e in tables.items()})


def _steps(url: str, ledger_id: int | None) -> list[str]:
    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute("SELECT step FROM etl.load_steps WHERE run = %s ORDER BY step",
                                           (ledger_id,)).fetchall()]


def _assert_loaded_exactly(url: str, run: Run, checksums: dict[str, str], ledger_id: int | None) -> None:
    """The live tables hold the staged rows (counted in PostgreSQL), with the staged checksums;
    the ledger keeps a copy step per table and no chunk step."""
    rows, staged = _staged(run)
    assert live_tables(url, get_dataset("mids")) == rows
    assert checksums == staged
    steps = _steps(url, ledger_id)
    assert {s for s in steps if s.startswith("copy:")} == {f"copy:{n}" for n in rows}
    assert not [s for s in steps if "#" in s]


def test_a_load_on_ray_is_the_local_load(ray_cluster: str, chunked_run: Run, pg_url: str) -> None:
    local = load(chunked_run, get_dataset("mids"), database_url=pg_url)
    rows, _ = _staged(chunked_run)
    assert sum(len(e["chunks"]) for e in chunked_run.manifest["tables"].values()) > len(rows) + 5
    on_ray = load(chunked_run, get_dataset("mids"), database_url=pg_url, force=True,
                  settings=_on_ray(ray_cluster))
    assert on_ray.checksums == local.checksums
    assert on_ray.rows == local.rows == rows
    _assert_loaded_exactly(pg_url, chunked_run, on_ray.checksums, on_ray.ledger_id)
    figures = next(p for p in on_ray.phases if p.name == "load").extra["ray"]
    assert (figures["nodes"], figures["cpus"]) == (2, 2)
    assert figures["tasks"] == figures["chunks_copied"] == sum(
        len(e["chunks"]) for e in chunked_run.manifest["tables"].values())
    assert [p.name for p in on_ray.phases] == [p.name for p in local.phases]


@pytest.mark.parametrize("point", ["copy", "copy/power_effects", "copied"])
def test_a_worker_killed_mid_copy_is_retried_without_doubled_rows(
        ray_cluster: str, chunked_run: Run, pg_url: str, tmp_path: Path, point: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # copy: the worker dies once every row of its chunk has gone out, before the COPY ends (the
    # server rolls it back); copy/power_effects: the same in a chunk of a table of several
    # chunks (appended, not truncated); copied: just after its commit (the retry must find the
    # chunk done).
    marker = tmp_path / "killed"
    monkeypatch.setenv(FAULT_ENV, f"{point}:{marker}")
    result = load(chunked_run, get_dataset("mids"), database_url=pg_url, settings=_on_ray(ray_cluster))
    killed = int(marker.read_text())  # a worker process did die (its pid), and the load went on
    assert killed != os.getpid()
    _assert_loaded_exactly(pg_url, chunked_run, result.checksums, result.ledger_id)
    figures = next(p for p in result.phases if p.name == "load").extra["ray"]
    # The chunk committed before its worker died is found done by the retry, not copied again.
    assert figures["chunks_found_done"] == (1 if point == "copied" else 0)


def test_a_driver_killed_mid_copy_resumes_on_rerun(ray_cluster: str, chunked_run: Run, pg_url: str,
                                                   tmp_path: Path) -> None:
    marker = tmp_path / "driver-killed"
    script = ("from etl import Settings, get_dataset, open_run\nfrom etl.load import load\n"
              f"load(open_run({str(chunked_run.path)!r}), get_dataset('mids'), database_url={pg_url!r}, "
              f"settings=Settings(engine='ray', ray_address={ray_cluster!r}, threads=2))\n")
    run_killed_driver(script, "copy-driver", marker)
    with psycopg.connect(pg_url) as conn:
        left = conn.execute("SELECT id, status FROM etl.runs").fetchall()
    assert [status for _, status in left] == ["running"]  # its loader is gone: abandoned
    done = [s for s in _steps(pg_url, left[0][0]) if s.startswith("copy:")]
    assert done  # at least the chunk the driver saw finish
    result = load(chunked_run, get_dataset("mids"), database_url=pg_url, settings=_on_ray(ray_cluster))
    assert result.ledger_id == left[0][0]
    assert set(done) <= set(result.resumed_from)
    _assert_loaded_exactly(pg_url, chunked_run, result.checksums, result.ledger_id)


@pytest.mark.parametrize("beside", [False, True], ids=["lineage-in-chunk", "lineage-beside"])
def test_a_row_refused_on_ray_names_its_source_record(
        ray_cluster: str, pg_url: str, tmp_path: Path, beside: bool) -> None:
    """The COPY task of the chunk holding a NUL raises the local engine's error (source file,
    record and JSON path from the row's lineage, in its chunk or in the lineage chunk beside
    it); the load fails, nothing swapped in."""
    powers = MIDS.table("powers")
    text = "Sets the target ablaze for 10 seconds.\x00 Damage: Fire."
    first = crafted_rows(powers, 2) | lineage(2, record=0, paths=["Powers[0]", "Powers[1]"])
    second = crafted_rows(powers, 3, power_id=[3, 4, 5], desc_long=["fine", text, "also fine"]) | \
        lineage(3, record=0, paths=["Powers[2]", "Powers[3]", "Powers[4]"])
    run = crafted_run(tmp_path / "run", {"powers": [first, second]}, lineage_beside=beside)
    with pytest.raises(EtlError) as raised:
        load(run, dataset_of(run), database_url=pg_url, retry_delay=0.01, settings=_on_ray(ray_cluster))
    err = raised.value
    message = str(err)
    assert (err.file, err.record) == (SOURCE["path"], 0)
    assert "refused the row of Powers[3]" in message
    assert f"staged as: {run.path / 'tables' / 'powers' / 'part-00001.parquet'}, row 1" in message
    assert "NUL" in (err.hint or "")
    failed = latest_load(pg_url, run)
    assert failed["status"] == "failed" and "desc_long" in failed["error"]
    assert query(pg_url, "SELECT count(*) FROM mids.powers") == [(0,)]  # nothing swapped in


def test_cli_load_with_engine_ray(ray_cluster: str, chunked_run: Run, pg_url: str) -> None:
    result = CliRunner().invoke(main, ["load", str(chunked_run.path), "--engine", "ray", "--ray-address",
                                       ray_cluster, "--database-url", pg_url, "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    rows, checksums = _staged(chunked_run)
    assert (doc["rows"], doc["checksums"]) == (rows, checksums)
    copy = next(p for p in doc["phases"] if p["name"] == "load")
    assert copy["extra"]["ray"]["nodes"] == 2
    _assert_loaded_exactly(pg_url, chunked_run, doc["checksums"], doc["ledger_id"])


def test_bench_runs_each_phase_on_ray_with_one_and_two_workers_beside_local(tmp_path: Path,
                                                                             pg_url: str) -> None:
    pytest.importorskip("ray")
    sample = require_shared(SHARED / "mids")
    result = CliRunner().invoke(main, ["bench", "--template", str(sample), "--copies", "1", "--engine", "ray",
                                       "--database-url", pg_url, "--json", "--work-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    (res,) = json.loads(result.stdout)
    engines = res["engines"]
    assert [(e["engine"], e["workers"]) for e in engines] == [("local", None), ("ray", 1), ("ray", 2)]
    for e in engines:  # every phase measured on every engine, the COPY a part of the load
        assert all(e[k] > 0 for k in ("stage", "transform", "load", "copy", "copy_statements")), e
        assert e["copy"] < e["load"]
    assert res["copy_ceiling"]["seconds"] > 0
    assert live_tables(pg_url, get_dataset("mids")) == res["tables"]
