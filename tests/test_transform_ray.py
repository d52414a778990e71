"""The transform on Ray (``engine = "ray"``): a table a task on a real two-node Ray cluster (the
fixture of ``tests/test_stage_ray.py``). A run transformed on Ray holds the local engine's
tables: the same chunk files (byte for byte), rows and checksums. A worker killed mid-table is
run again and leaves no chunk doubled or left over; a driver killed mid-transform leaves the
run untransformed, and the same command transforms it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from etl import Settings, get_dataset
from etl.cli import main
from etl.infra.cluster import FAULT_ENV
from etl.run import Run
from etl.stage import stage
from etl.transform import transform
from etl.validate import require_passed, validate
from tests.conftest import run_killed_driver
from tests.test_stage_ray import ray_cluster, small_export

__all__ = ["ray_cluster", "small_export"]  # the module's fixtures, shared with the stage's tests


def _validated(source: Path, root: Path) -> Run:
    ds = get_dataset("mids")
    staged = stage(ds, [source], settings=Settings(staging_dir=root, threads=2, chunk_rows=250)).run
    checked = validate(staged, ds)
    require_passed(checked)
    return checked.run


@pytest.fixture(scope="module")
def local_tables(small_export: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The tables the local engine builds from the generated export (chunks of 250 rows)."""
    run = _validated(small_export, tmp_path_factory.mktemp("transform-local"))
    return dict(transform(run, get_dataset("mids")).run.manifest["tables"])


def _on_ray(address: str) -> Settings:
    return Settings(engine="ray", ray_address=address, threads=2)


def _assert_local_tables(run: Run, local: dict[str, Any]) -> None:
    """The run's tables are the local engine's: entries (chunks with their sha256, rows,
    checksums) equal, and the run holds those chunk files and nothing else."""
    tables = dict(run.manifest["tables"])
    assert list(tables) == list(local)
    for name, entry in local.items():
        assert tables[name] == entry, name
    listed = {c["path"] for e in tables.values() for c in (*e["chunks"], *e["lineage_chunks"])}
    on_disk = {p.relative_to(run.path).as_posix() for p in (run.path / "tables").rglob("*") if p.is_file()}
    assert on_disk == listed
    assert not list(run.path.glob(".tables.tmp*"))


def test_a_transform_on_ray_is_the_local_transform(ray_cluster: str, small_export: Path, tmp_path: Path,
                                                   local_tables: dict[str, Any]) -> None:
    run = _validated(small_export, tmp_path)
    result = transform(run, get_dataset("mids"), settings=_on_ray(ray_cluster))
    assert sum(len(e["chunks"]) for e in local_tables.values()) > len(local_tables)
    _assert_local_tables(result.run, local_tables)
    figures = result.phase.extra["ray"]
    assert (figures["nodes"], figures["cpus"], figures["tasks"]) == (2, 2, len(local_tables))


def test_a_worker_killed_mid_table_is_retried_without_doubled_chunks(
        ray_cluster: str, small_export: Path, tmp_path: Path, local_tables: dict[str, Any],
        monkeypatch: pytest.MonkeyPatch) -> None:
    run = _validated(small_export, tmp_path)
    marker = tmp_path / "killed"
    monkeypatch.setenv(FAULT_ENV, f"table:{marker}")
    result = transform(run, get_dataset("mids"), settings=_on_ray(ray_cluster))
    assert int(marker.read_text()) != os.getpid()  # a worker process did die, and the run went on
    _assert_local_tables(result.run, local_tables)


def test_a_driver_killed_mid_transform_transforms_on_rerun(ray_cluster: str, small_export: Path,
                                                           tmp_path: Path,
                                                           local_tables: dict[str, Any]) -> None:
    run = _validated(small_export, tmp_path)
    marker = tmp_path / "driver-killed"
    script = ("from etl import Settings, get_dataset, open_run\nfrom etl.transform import transform\n"
              f"transform(open_run({str(run.path)!r}), get_dataset('mids'), "
              f"settings=Settings(engine='ray', ray_address={ray_cluster!r}, threads=2))\n")
    run_killed_driver(script, "transform-driver", marker)
    assert "tables" not in run.current().manifest  # nothing looks transformed
    result = transform(run, get_dataset("mids"), settings=_on_ray(ray_cluster))
    _assert_local_tables(result.run, local_tables)


def test_cli_transform_with_engine_ray(ray_cluster: str, small_export: Path, tmp_path: Path,
                                       local_tables: dict[str, Any]) -> None:
    run = _validated(small_export, tmp_path)
    result = CliRunner().invoke(main, ["transform", str(run.path), "--engine", "ray", "--ray-address",
                                       ray_cluster, "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["tables"] == {name: e["rows"] for name, e in local_tables.items()}
    _assert_local_tables(run.current(), local_tables)
