"""The staging root as a path or a URI (:mod:`etl.staging_fs`), on the real PostgreSQL.

A ``file://`` root is the local code path and gives the run a plain path gives. ``mock://`` is
pyarrow's own in-memory filesystem (opened once per root in a process): nothing of a run staged
there is on local disk, and a :class:`~etl.staging_fs.RemotePath` has no ``__fspath__``, so any
code that still went through pathlib, ``open()`` or DuckDB's file readers would fail here.
The Ray engine on a shared root is tested in tests/test_stage_ray.py.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from etl import Settings, get_dataset, latest_run, open_run
from etl.config import load_settings
from etl.datasets import dataset_of
from etl.errors import RunStateError
from etl.load import live_tables, load, table_checksums
from etl.report import write_report
from etl.run import MANIFEST, Run
from etl.stage import stage
from etl.staging_fs import RemotePath, as_uri, resolve
from etl.transform import transform
from etl.validate import require_passed, validate

MIDS = get_dataset("mids")


def _through_the_load(root: str | Path, sample: Path, url: str) -> tuple[Run, dict[str, Any]]:
    """Stage, validate, transform and load ``sample`` with ``root`` as the staging root: the
    transformed run, and what the database holds after the load (rows and checksums)."""
    # Small chunks: a level or table of several chunks, read back in order.
    staged = stage(MIDS, [sample], settings=Settings(staging_dir=root, threads=2, chunk_rows=1000))
    require_passed(validate(staged.run, dataset_of(staged.run)))
    run = transform(staged.run, dataset_of(staged.run)).run
    load(run, dataset_of(run), database_url=url, force=True)
    return run, {"rows": live_tables(url, MIDS), "checksums": table_checksums(url, MIDS)}


def _fingerprint(run: Run) -> dict[str, Any]:
    """What must not depend on where the run is staged: its id, every chunk (path, rows,
    sha256) of every level and table, and the tables' rows and checksums."""
    m = run.manifest
    return {
        "run_id": m["run_id"],
        "sources": m["sources"],
        "levels": {n: [(c["path"], c["rows"], c["sha256"]) for c in e["chunks"]]
                   for n, e in m["levels"].items()},
        "tables": {n: (e["rows"], e["checksum"], [(c["path"], c["rows"], c["sha256"]) for c in e["chunks"]])
                   for n, e in m["tables"].items()},
    }


def _mock_root() -> str:
    """A fresh in-memory filesystem root (each ``mock://`` root is a filesystem of its own)."""
    return f"mock:///staging-{uuid.uuid4().hex[:8]}"


def test_a_file_uri_root_and_a_plain_path_give_the_same_run_through_the_load(
        pg_url: str, mids_sample: Path, tmp_path: Path) -> None:
    plain, plain_db = _through_the_load(tmp_path / "plain", mids_sample, pg_url)
    uri = (tmp_path / "uri").as_uri()
    assert uri.startswith("file:///")
    by_uri, uri_db = _through_the_load(uri, mids_sample, pg_url)
    # file:// is the local filesystem: the run is a plain local folder, read the local way.
    assert by_uri.path == tmp_path / "uri" / "mids" / plain.id
    assert (by_uri.path / MANIFEST).is_file()
    assert _fingerprint(by_uri) == _fingerprint(plain)
    assert uri_db == plain_db
    assert uri_db["checksums"] == {n: e["checksum"] for n, e in plain.manifest["tables"].items()}
    assert latest_run("mids", uri).path == by_uri.path


def test_a_remote_root_runs_every_stage_through_its_filesystem(
        pg_url: str, mids_sample: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # a relative path slipping through would land here
    plain, plain_db = _through_the_load(tmp_path / "plain", mids_sample, pg_url)
    root = _mock_root()
    remote, remote_db = _through_the_load(root, mids_sample, pg_url)
    assert isinstance(remote.path, RemotePath)
    assert str(remote.path) == f"{root}/mids/{plain.id}"
    assert _fingerprint(remote) == _fingerprint(plain)
    assert remote_db == plain_db  # loaded from chunks read through the filesystem
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain"]
    # What the run's readers give, through the filesystem too.
    again = open_run(str(remote.path))
    assert again.manifest == remote.manifest
    assert latest_run("mids", root).id == plain.id
    assert again.report() == plain.report() | {"phase": again.report()["phase"]}  # type: ignore[operator]
    powers = again.table("powers").collect()
    assert powers.height == plain.manifest["tables"]["powers"]["rows"]
    assert powers.equals(plain.table("powers").collect())
    assert again.duckdb().execute("SELECT count(*) FROM powers").fetchone()[0] == powers.height
    # Chunks are read through the filesystem a batch at a time, with the projection, filter and
    # row limit Polars pushes down applied by the reader, in the chunks' order.
    assert len(again.manifest["levels"]["power_effects"]["chunks"]) > 2
    for query in (lambda lf: lf.select("_file", "_path", "_record"),
                  lambda lf: lf.filter(pl.col("_record") % 3 == 1).select("_path").head(2500),
                  lambda lf: lf.with_row_index("i").filter(pl.col("i") >= 2100).head(5),
                  lambda lf: lf.select(pl.len())):
        assert query(again.raw("power_effects")).collect().equals(
            query(plain.raw("power_effects")).collect())
    page = write_report(again)  # profiled through the filesystem, written there as one object
    assert page == again.path / "report.html" and page.is_file()
    # Staging the same export again finds the run on the remote root and stages nothing.
    assert stage(MIDS, [mids_sample], settings=Settings(staging_dir=root)).skipped


def test_a_run_uploaded_in_part_is_no_run_and_the_next_stage_completes_it(
        mids_sample: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _mock_root()
    real_write = RemotePath.write_bytes

    def lost_at_the_manifest(self: RemotePath, data: bytes) -> int:
        if MANIFEST in self.name:  # every other file is up: the connection drops now
            raise OSError("connection reset (test)")
        return real_write(self, data)

    monkeypatch.setattr(RemotePath, "write_bytes", lost_at_the_manifest)
    with pytest.raises(OSError, match="connection reset"):
        stage(MIDS, [mids_sample], settings=Settings(staging_dir=root))
    half = resolve(root) / "mids"
    [folder] = [p for p in half.iterdir() if not p.name.startswith(".")]
    assert (folder / "raw").is_dir() and not (folder / MANIFEST).exists()
    # Without its manifest the folder is no run: not opened, not the latest, not "staged before".
    with pytest.raises(RunStateError, match="not a complete staged run"):
        open_run(folder)
    with pytest.raises(RunStateError, match="no staged run"):
        latest_run("mids", root)
    monkeypatch.setattr(RemotePath, "write_bytes", real_write)
    again = stage(MIDS, [mids_sample], settings=Settings(staging_dir=root))
    assert not again.skipped and again.run.path == folder
    assert {c["path"] for e in again.run.manifest["levels"].values() for c in e["chunks"]} == {
        p.relative_to(folder).as_posix() for p in _files(folder / "raw")}
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []


def _files(folder: RemotePath) -> list[RemotePath]:
    out: list[RemotePath] = []
    for p in folder.iterdir():
        out += _files(p) if p.is_dir() else [p]
    return out


def test_side_files_are_stored_on_a_remote_root_as_on_a_local_one(tmp_path: Path) -> None:
    # The licenses screenshots are copied into the staging root's content-addressed _store.
    from etl.datasets.licenses.gen import generate_licenses

    export = tmp_path / "export"
    generate_licenses(export, results=12)
    licenses = get_dataset("licenses")
    runs = []
    for root in (tmp_path / "local", _mock_root()):
        staged = stage(licenses, [export], settings=Settings(staging_dir=root)).run
        require_passed(validate(staged, dataset_of(staged)))
        runs.append(transform(staged, dataset_of(staged)).run)
    local, remote = runs
    assert isinstance(remote.path, RemotePath)
    assert _fingerprint(remote) == _fingerprint(local)
    stored = sorted(remote.table("images").collect().get_column("path").to_list())
    assert stored and stored == sorted(local.table("images").collect().get_column("path").to_list())
    base = remote.path.parent.parent
    for rel in stored:
        assert (base / rel).read_bytes() == (tmp_path / "local" / rel).read_bytes()


def test_a_staging_root_is_a_path_or_a_uri_kept_as_given(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve("staging") == Path("staging")
    assert resolve((tmp_path / "x").as_uri()) == tmp_path / "x"
    assert as_uri(tmp_path / "x") == (tmp_path / "x").as_uri()
    # A URI is kept as text (Path() would fold "s3://b" into "s3:/b"), from a flag or the environment.
    assert load_settings(start=tmp_path, staging_dir="s3://bucket/staging").staging_dir == "s3://bucket/staging"
    monkeypatch.setenv("ETL_STAGING_DIR", "gs://bucket/runs")
    assert load_settings(start=tmp_path).staging_dir == "gs://bucket/runs"
    remote = resolve(_mock_root())
    assert isinstance(remote, RemotePath)
    assert resolve(str(remote / "mids" / "run")) == remote / "mids" / "run"
    with pytest.raises(TypeError), open(remote / "manifest.json"):  # type: ignore[call-overload]
        pass  # no __fspath__: a remote path is never taken for a local file


def test_the_cli_stages_validates_transforms_and_loads_a_run_given_by_its_uri(
        pg_url: str, mids_sample: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from etl.cli import main

    monkeypatch.chdir(tmp_path)
    root = _mock_root()
    env = {"ETL_STAGING_DIR": root, "ETL_DATABASE_URL": pg_url, "ETL_REDIS_URL": ""}
    staged = CliRunner().invoke(main, ["stage", "mids", str(mids_sample)], env=env)
    assert staged.exit_code == 0, staged.output
    uri = staged.output.strip().splitlines()[-1]  # the last line: the run, as a URI
    assert uri.startswith(f"{root}/mids/mids-")
    for command in (["validate", uri], ["transform", uri], ["load", uri, "--yes"], ["reconcile", uri],
                    ["rebuild", uri], ["report", uri]):
        res = CliRunner().invoke(main, [*command, "--json"], env=env)
        assert res.exit_code == 0, (command, res.output)
    run = open_run(uri)
    assert live_tables(pg_url, MIDS) == {n: e["rows"] for n, e in run.manifest["tables"].items()}
    assert list(tmp_path.iterdir()) == []


def test_health_checks_a_remote_root_and_prune_removes_its_old_runs(tmp_path: Path) -> None:
    from etl.datasets.mids.gen import generate_mids
    from etl.ops import _staging_check
    from etl.prune import prune

    root = resolve(_mock_root())
    check = _staging_check(root)
    assert check["status"] == "ok" and str(root) in check["detail"]
    assert [p.name for p in root.iterdir()] == []  # the probe is removed
    runs = []
    for seed in (1, 2):
        export = generate_mids(tmp_path / f"export{seed}", powersets=6, seed=seed).root
        runs.append(stage(MIDS, [export], settings=Settings(staging_dir=str(root))).run)
    older, newer = runs
    # two stages within one second tie on created_at (seconds): the older one is made older
    manifest = json.loads((older.path / "manifest.json").read_text())
    manifest["created_at"] = "2000-01-01T00:00:00+00:00"
    (older.path / "manifest.json").write_text(json.dumps(manifest))
    report = prune(root, database_url=None, keep=1, force=True)
    assert {(r["run_id"], r["action"]) for r in report["runs"]} == {(older.id, "delete"), (newer.id, "keep")}
    assert report["freed_bytes"] > 0
    assert [p.name for p in (root / "mids").iterdir()] == [newer.id]
    assert latest_run("mids", root).id == newer.id


def test_ray_transform_and_load_of_an_object_store_run_say_to_run_them_locally(
        mids_sample: Path, pg_url: str) -> None:
    """Transform and COPY tasks on Ray need the run on a path every node sees: a run on an
    object-store root stops with a ConfigError naming --engine local, before any Ray starts."""
    from etl.errors import ConfigError

    root = _mock_root()
    ray = Settings(staging_dir=root, engine="ray")
    run = validate(stage(MIDS, [mids_sample], settings=Settings(staging_dir=root)).run, MIDS).run
    with pytest.raises(ConfigError, match="--engine local"):
        transform(run, MIDS, settings=ray)
    run = transform(run, MIDS).run
    with pytest.raises(ConfigError, match="--engine local"):
        load(run, MIDS, database_url=pg_url, settings=ray)
    assert load(run, MIDS, database_url=pg_url).rows == {
        n: e["rows"] for n, e in run.manifest["tables"].items()}
