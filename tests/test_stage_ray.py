"""The stage on Ray (``engine = "ray"``): the local engine's run, from tasks on a real Ray cluster.

A Ray cluster of two nodes (a head and a second node process joined to it, one CPU each, no
dashboard) is started for the module and shut down after it; each stage joins it by its address
(``ray_address``, as ``ETL_RAY_ADDRESS`` or ``--ray-address`` give it) and leaves it after. Both
nodes write into the same staging root, a local path. A run staged on Ray must be the local
engine's run: the same run id, the same chunks holding the same rows, the same table checksums
after the transform. A worker process killed mid-stage is run again by Ray, and the run ends
with the exact rows and no chunk left over or doubled.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from etl import Settings, get_dataset
from etl.cli import main
from etl.config import load_settings
from etl.dataset import Dataset
from etl.datasets import dataset_of
from etl.datasets.aodb.gen import generate_aodb
from etl.datasets.licenses.gen import generate_licenses
from etl.datasets.mids.gen import generate_mids
from etl.errors import ConfigError, InputError, TransientError
from etl.run import MANIFEST, STAGING_LOCK, Run, open_run
from etl.spec import infer
from etl.spec.dataset import to_dataset
from etl.stage import stage
from etl.stage.on_ray import FAULT_ENV, PIECES
from etl.transform import transform
from etl.validate import require_passed, validate
from tests.conftest import SHARED, require_shared

#: Credentials for the moto S3 server of :func:`s3_root` (pyarrow's S3 reads them from here).
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
          "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    """A real two-node Ray cluster for this module's tests (its address, as ``ETL_RAY_ADDRESS``
    would give it), shut down after them."""
    try:
        import ray
        from ray.cluster_utils import Cluster
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("Ray is not installed; CI installs it (the test extra)")
        pytest.skip("Ray is not installed (pip install 'etl-staging[ray]')")
    # The S3 test's fake credentials (its moto server takes any), in the environment before the
    # nodes start, so their workers have them as a real cluster's would.
    before = {k: os.environ.get(k) for k in S3_ENV}
    for k, v in S3_ENV.items():
        os.environ.setdefault(k, v)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        yield cluster.address
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()
        for k, old in before.items():
            if old is None:
                os.environ.pop(k, None)


@pytest.fixture(scope="module")
def small_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated MidsReborn export (every source kind of the real one), a few MB."""
    out = tmp_path_factory.mktemp("mids-export")
    generate_mids(out, powersets=120, seed=7)
    return out


def _stage_both(source: Path, root: Path, address: str, dataset: str | Dataset = "mids",
                **settings: Any) -> tuple[Run, Run]:
    ds = get_dataset(dataset) if isinstance(dataset, str) else dataset
    local = stage(ds, [source], settings=Settings(staging_dir=root / "local", engine="local",
                                                  threads=2, **settings)).run
    on_ray = stage(ds, [source], settings=Settings(staging_dir=root / "ray", engine="ray", threads=2,
                                                   ray_address=address, **settings)).run
    return local, on_ray


def _assert_same_run(local: Run, on_ray: Run) -> None:
    """The same run id and files read; every level in the same chunks holding the same rows."""
    assert on_ray.path.name == local.path.name
    assert on_ray.manifest["run_id"] == local.manifest["run_id"]
    assert on_ray.manifest["sources"] == local.manifest["sources"]
    assert on_ray.manifest["quarantined"] == local.manifest["quarantined"]
    assert on_ray.manifest["settings"]["engine"] == "ray"
    figures = on_ray.manifest["ray"]  # the cluster it ran on (both nodes) and its tasks
    assert figures == on_ray.manifest["phases"]["stage"]["extra"]["ray"]
    assert (figures["nodes"], figures["cpus"]) == (2, 2)
    assert figures["chunks"] == sum(len(e["chunks"]) for e in on_ray.manifest["levels"].values()
                                    if e["rows"] and not e["chunks"][0]["path"].startswith("raw/images/"))
    for name, entry in local.manifest["levels"].items():
        other = on_ray.manifest["levels"][name]
        assert other["rows"] == entry["rows"], name
        assert other["schema"] == entry["schema"], name
        assert [(c["path"], c["rows"]) for c in other["chunks"]] == \
            [(c["path"], c["rows"]) for c in entry["chunks"]], name
        for chunk in entry["chunks"]:
            mine = pq.read_table(local.path / chunk["path"])
            theirs = pq.read_table(on_ray.path / chunk["path"])
            assert theirs.schema == mine.schema, chunk["path"]
            assert theirs.equals(mine), f"{chunk['path']} holds other rows on Ray"
    _assert_only_listed_chunks(on_ray)


def _assert_only_listed_chunks(run: Run) -> None:
    """The run folder holds the manifest's chunks and nothing else (no pieces, no partial files)."""
    listed = {c["path"] for e in run.manifest["levels"].values() for c in e["chunks"]}
    on_disk = {p.relative_to(run.path).as_posix() for p in (run.path / "raw").rglob("*") if p.is_file()}
    assert on_disk == listed
    assert not (run.path / PIECES).exists()
    assert not [p for p in run.path.iterdir() if p.name.startswith(".")]


def _table_checksums(run: Run) -> dict[str, tuple[int, str]]:
    require_passed(validate(run, dataset_of(run)))
    built = transform(run, dataset_of(run)).run
    return {name: (t["rows"], t["checksum"]) for name, t in built.manifest["tables"].items()}


def test_ray_stage_is_the_local_run_on_a_generated_export(ray_cluster: str, small_export: Path,
                                                          tmp_path: Path) -> None:
    # A small memory limit and chunk size: many groups (of a batch each) and chunks that
    # gather rows from several groups' pieces.
    local, on_ray = _stage_both(small_export, tmp_path, ray_cluster, memory_limit="24MB", chunk_rows=700)
    assert len(on_ray.manifest["levels"]["power_effects"]["chunks"]) > 2
    _assert_same_run(local, on_ray)
    assert _table_checksums(on_ray) == _table_checksums(local)


def test_duplicated_keys_on_ray_keep_their_last_value_as_locally(ray_cluster: str, small_export: Path,
                                                                 tmp_path: Path) -> None:
    """A record holding a key twice: the last value wins on Ray as on the local engine (DuckDB
    alone keeps the first), and both count it in the manifest's duplicate_keys."""
    export = tmp_path / "export"
    shutil.copytree(small_export, export)
    victim = next(p for p in sorted(export.rglob("*.json")) if '"DisplayName":' in p.read_text())
    text = victim.read_text()
    victim.write_text(text.replace('"DisplayName":', '"DisplayName": "first of two", "DisplayName":', 1))
    local, on_ray = _stage_both(export, tmp_path, ray_cluster)
    assert local.manifest["duplicate_keys"]["records"] == 1
    assert on_ray.manifest["duplicate_keys"] == local.manifest["duplicate_keys"]
    _assert_same_run(local, on_ray)
    texts = [v for entry in on_ray.manifest["levels"].values() for c in entry["chunks"]
             for col in pl.read_parquet(on_ray.path / c["path"]).select(pl.col(pl.String)).iter_columns()
             for v in col.drop_nulls().to_list()]
    assert not [v for v in texts if "first of two" in v]
    assert len(texts) > 1000


def test_ray_stage_is_the_local_run_on_the_real_full_export(ray_cluster: str, tmp_path: Path) -> None:
    source = require_shared(SHARED / "mids_full")
    local, on_ray = _stage_both(source, tmp_path, ray_cluster, chunk_rows=20_000)
    assert local.manifest["levels"]["power_effects"]["rows"] > 60_000
    _assert_same_run(local, on_ray)
    assert _table_checksums(on_ray) == _table_checksums(local)


@pytest.mark.parametrize("ndjson", [False, True], ids=["arrays", "ndjson"])
def test_ray_stage_is_the_local_run_on_streamed_files(ray_cluster: str, tmp_path: Path, ndjson: bool) -> None:
    # Array and NDJSON files go through DuckDB's streaming reader (the local engine's last pass).
    template = require_shared(SHARED / "aodb" / "items_100.json")
    generate_aodb(tmp_path / "export", items=1500, template=template, files=4, ndjson=ndjson)
    local, on_ray = _stage_both(tmp_path / "export", tmp_path, ray_cluster, "aodb", memory_limit="24MB",
                                chunk_rows=1000)
    _assert_same_run(local, on_ray)


def test_ray_stage_quarantines_and_runs_side_files_as_the_local_run(ray_cluster: str,
                                                                    tmp_path: Path) -> None:
    # licenses: broken result files are quarantined; the screenshots are staged beside the
    # results by the dataset's side-file hook, on the driver.
    export = tmp_path / "export"
    generate_licenses(export, results=40)
    state = next(p for p in sorted(export.iterdir()) if p.is_dir())
    (state / "Broken_01_parse.json").write_text('{"results": [')
    local, on_ray = _stage_both(export, tmp_path, ray_cluster, "licenses")
    assert [q["relpath"] for q in local.manifest["quarantined"]] == [f"{state.name}/Broken_01_parse.json"]
    assert local.manifest["levels"]["images"]["rows"] > 0
    _assert_same_run(local, on_ray)


def test_ray_stage_of_a_spec_dataset_is_the_local_run(ray_cluster: str, small_export: Path,
                                                      tmp_path: Path) -> None:
    # A dataset inferred by `etl init` (its levels and transform built from the spec) travels to
    # the tasks too; its run keeps the spec, and drift is looked for in the staged chunks.
    ds = to_dataset(infer("powers", [small_export]))
    local, on_ray = _stage_both(small_export, tmp_path, ray_cluster, ds, memory_limit="24MB",
                                chunk_rows=700)
    _assert_same_run(local, on_ray)
    assert on_ray.manifest["spec"]["sha256"] == local.manifest["spec"]["sha256"]
    assert on_ray.manifest.get("drift") == local.manifest.get("drift")


def test_a_broken_file_stops_the_ray_stage_naming_it(ray_cluster: str, small_export: Path,
                                                      tmp_path: Path) -> None:
    # An error a task raises is the input's, not the worker's: not retried, raised as itself.
    export = tmp_path / "export"
    shutil.copytree(small_export, export)
    good = next((export / "db").rglob("*.json"))
    text = good.read_bytes()
    at = text.index(b'"FullName": "') + len(b'"FullName": "')
    broken = good.with_name("Broken.json")
    broken.write_bytes(text[:at] + b"\xff\xfe" + text[at:])
    staging = tmp_path / "staging"
    with pytest.raises(InputError) as caught:
        stage(get_dataset("mids"), [export], settings=Settings(staging_dir=staging, engine="ray", threads=2,
                                                              ray_address=ray_cluster))
    assert Path(caught.value.file or "").resolve() == broken.resolve()
    assert "UTF-8" in caught.value.message
    assert not [p for p in (staging / "mids").iterdir() if p.name != STAGING_LOCK]  # no run, no temporary


@pytest.mark.parametrize("point", ["group", "chunk"])
def test_a_killed_ray_worker_is_retried_without_doubled_rows(
        ray_cluster: str, small_export: Path, tmp_path: Path, point: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    ds = get_dataset("mids")
    settings = Settings(staging_dir=tmp_path / "local", threads=2, memory_limit="24MB", chunk_rows=700)
    local = stage(ds, [small_export], settings=settings).run
    marker = tmp_path / "killed"
    monkeypatch.setenv(FAULT_ENV, f"{point}:{marker}")
    on_ray = stage(ds, [small_export], settings=Settings(
        staging_dir=tmp_path / "ray", engine="ray", threads=2, memory_limit="24MB", chunk_rows=700,
        ray_address=ray_cluster)).run
    killed = int(marker.read_text())  # a worker process did die (its pid), and the run went on
    assert killed != os.getpid()
    _assert_same_run(local, on_ray)
    assert {n: e["rows"] for n, e in on_ray.manifest["levels"].items()} == \
        {n: e["rows"] for n, e in local.manifest["levels"].items()}


def test_the_engine_is_a_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "pyproject.toml").write_text('[tool.etl]\nengine = "ray"\n')
    monkeypatch.delenv("ETL_ENGINE", raising=False)
    monkeypatch.delenv("ETL_RAY_ADDRESS", raising=False)
    assert load_settings(start=tmp_path).engine == "ray"
    monkeypatch.setenv("ETL_ENGINE", "local")
    monkeypatch.setenv("ETL_RAY_ADDRESS", "ray://head:10001")
    settings = load_settings(start=tmp_path)
    assert (settings.engine, settings.ray_address) == ("local", "ray://head:10001")
    assert load_settings(start=tmp_path, engine="ray").engine == "ray"  # a flag wins
    monkeypatch.setenv("ETL_ENGINE", "spark")
    with pytest.raises(ConfigError, match="engine 'spark'"):
        load_settings(start=tmp_path)


def test_without_ray_the_ray_engine_says_how_to_install_it(small_export: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as when it is not installed
    with pytest.raises(ConfigError) as caught:
        stage(get_dataset("mids"), [small_export],
              settings=Settings(staging_dir=tmp_path, engine="ray", threads=2))
    assert "pip install 'etl-staging[ray]'" in str(caught.value)
    assert not list((tmp_path / "mids").glob("*/" + MANIFEST))  # nothing looks like a run


def test_cli_stage_with_engine_ray(ray_cluster: str, small_export: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["--staging-dir", str(tmp_path), "stage", "mids",
                                       str(small_export), "--engine", "ray", "--ray-address", ray_cluster])
    assert result.exit_code == 0, result.output
    run_dir = Path(result.stdout.strip().splitlines()[-1])
    assert (run_dir / MANIFEST).is_file()
    assert open_run(run_dir).manifest["settings"]["engine"] == "ray"
    assert "staged on Ray: 2 node(s), 2 CPUs" in result.stderr


def test_cli_run_with_engine_ray_loads_the_local_runs_tables(ray_cluster: str, small_export: Path,
                                                             tmp_path: Path, pg_url: str) -> None:
    # Staged, transformed (a table a task) and COPYed (a chunk a task) on Ray; validated, keyed,
    # verified and swapped in this process, from the shared folder.
    local = stage(get_dataset("mids"), [small_export],
                  settings=Settings(staging_dir=tmp_path / "local", threads=2)).run
    expected = _table_checksums(local)
    result = CliRunner().invoke(main, ["--staging-dir", str(tmp_path / "ray"), "run", "mids",
                                       str(small_export), "--engine", "ray", "--ray-address", ray_cluster,
                                       "--database-url", pg_url, "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["run_id"] == local.id
    assert summary["tables"] == {name: rows for name, (rows, _) in expected.items()}
    assert summary["load"]["checksums"] == {name: checksum for name, (_, checksum) in expected.items()}
    on_ray = {p["name"]: p["extra"]["ray"] for p in summary["phases"] if "ray" in p.get("extra", {})}
    assert set(on_ray) == {"stage", "transform", "load"}
    assert all(figures["nodes"] == 2 for figures in on_ray.values())


def test_a_driver_killed_mid_stage_leaves_no_run_and_the_rerun_stages_it(
        ray_cluster: str, small_export: Path, tmp_path: Path) -> None:
    settings = {"staging_dir": tmp_path / "ray", "threads": 2, "memory_limit": "24MB", "chunk_rows": 700}
    marker = tmp_path / "driver-killed"
    script = ("import sys\nfrom pathlib import Path\nfrom etl import Settings, get_dataset\n"
              "from etl.stage import stage\n"
              f"stage(get_dataset('mids'), [{str(small_export)!r}], settings=Settings("
              f"staging_dir=Path({str(settings['staging_dir'])!r}), engine='ray', threads=2, "
              f"memory_limit='24MB', chunk_rows=700, ray_address={ray_cluster!r}))\n")
    driver = subprocess.run([sys.executable, "-c", script], env={**os.environ, FAULT_ENV: f"driver:{marker}"},
                            capture_output=True, text=True, timeout=300)
    assert driver.returncode == 137, driver.stderr[-2000:]
    assert marker.is_file()
    left = [p.name for p in (tmp_path / "ray" / "mids").iterdir()]
    assert not [n for n in left if n.startswith("mids-")]  # nothing that looks like a run
    on_ray = stage(get_dataset("mids"), [small_export],
                   settings=Settings(engine="ray", ray_address=ray_cluster, **settings)).run
    local = stage(get_dataset("mids"), [small_export],
                  settings=Settings(**{**settings, "staging_dir": tmp_path / "local"})).run
    _assert_same_run(local, on_ray)
    # The killed driver's temporary folder went with the rerun (it holds the staging lock).
    assert [p.name for p in (tmp_path / "ray" / "mids").iterdir() if p.name.startswith(".stage.tmp")] == []


def test_a_worker_that_dies_on_every_retry_is_a_transient_error(
        ray_cluster: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    export = tmp_path / "export"
    generate_licenses(export, results=3)  # one group: one task, killed on each of its 4 attempts
    monkeypatch.setenv(FAULT_ENV, "group:always")
    staging = tmp_path / "staging"
    with pytest.raises(TransientError, match="failed 4 times") as caught:
        stage(get_dataset("licenses"), [export],
              settings=Settings(staging_dir=staging, engine="ray", threads=2, ray_address=ray_cluster))
    assert caught.value.transient and "stage again" in (caught.value.hint or "")
    assert not [p for p in (staging / "licenses").iterdir() if p.name != STAGING_LOCK]  # no run, no temporary


def test_bench_stages_on_ray_with_one_and_two_workers_beside_local(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    sample = require_shared(SHARED / "mids")
    result = CliRunner().invoke(main, ["bench", "--template", str(sample), "--copies", "1", "--no-load",
                                       "--engine", "ray", "--json", "--work-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    (res,) = json.loads(result.stdout)
    engines = res["stage_engines"]
    assert [(p["engine"], p.get("workers")) for p in engines] == [("local", None), ("ray", 1), ("ray", 2)]
    assert len({p["rows"] for p in engines}) == 1  # the same rows on every engine
    assert all(p["seconds"] > 0 and p["run"] == engines[0]["run"] for p in engines)
    assert all(p["ray_start_seconds"] > 0 and p["cold_seconds"] > 0 for p in engines[1:])
    # The transform ran on each Ray too; nothing was loaded.
    assert [(e["engine"], e["workers"]) for e in res["engines"]] == [("local", None), ("ray", 1), ("ray", 2)]
    assert all(e["transform"] > 0 and "load" not in e for e in res["engines"])


# ------------------------------------------------------------------------------ a shared staging root


def test_ray_stage_into_a_file_uri_root_both_nodes_see_is_the_local_run(
        ray_cluster: str, small_export: Path, tmp_path: Path) -> None:
    # Both nodes see tmp_path (one machine): the root is given as a URI, as a cluster's shared
    # mount would be, and the tasks open it from the URI they are given.
    local = stage(get_dataset("mids"), [small_export], settings=Settings(
        staging_dir=tmp_path / "local", engine="local", threads=2, chunk_rows=700)).run
    uri = (tmp_path / "shared").as_uri()
    on_ray = stage(get_dataset("mids"), [small_export], settings=Settings(
        staging_dir=uri, engine="ray", threads=2, ray_address=ray_cluster, chunk_rows=700)).run
    assert on_ray.path == tmp_path / "shared" / "mids" / local.id
    _assert_same_run(local, on_ray)
    assert [p.name for p in (tmp_path / "shared" / "mids").iterdir() if p.name.startswith(".stage")] == []
    assert _table_checksums(on_ray) == _table_checksums(local)


@pytest.fixture(scope="module")
def s3_root() -> Iterator[str]:
    """An S3 bucket served by moto's S3 server on localhost, as the staging root's URI (the
    endpoint in its query, as pyarrow's S3 filesystem reads it; the credentials in the
    environment, :data:`S3_ENV`)."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("moto is not installed; CI installs it (the test extra)")
        pytest.skip("moto is not installed (pip install 'moto[server]')")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield (f"s3://etl-staging/runs?endpoint_override=http://{host}:{port}&scheme=http"
               "&region=us-east-1&allow_bucket_creation=true")
    finally:
        server.stop()


def test_ray_stage_into_an_object_store_root_is_the_local_run(
        ray_cluster: str, s3_root: str, small_export: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in S3_ENV.items():  # the driver's own S3 client (the module's cluster has them)
        monkeypatch.setenv(k, os.environ.get(k) or v)
    from etl.staging_fs import RemotePath

    local = stage(get_dataset("mids"), [small_export], settings=Settings(
        staging_dir=tmp_path / "local", engine="local", threads=2, chunk_rows=700)).run
    on_ray = stage(get_dataset("mids"), [small_export], settings=Settings(
        staging_dir=s3_root, engine="ray", threads=2, ray_address=ray_cluster, chunk_rows=700)).run
    assert isinstance(on_ray.path, RemotePath) and str(on_ray.path).startswith("s3://etl-staging/runs/mids/")
    assert on_ray.id == local.id
    for name, entry in local.manifest["levels"].items():
        assert on_ray.manifest["levels"][name]["chunks"] == entry["chunks"], name
    # Written by the tasks through S3, moved into place, the manifest last; nothing else left.
    root = on_ray.path.parent
    assert [p.name for p in root.iterdir()] == [local.id]
    assert sorted(p.name for p in on_ray.path.iterdir()) == sorted(p.name for p in local.path.iterdir())
    assert _table_checksums(on_ray) == _table_checksums(local)


def test_ray_stage_into_an_object_store_evolves_a_drifting_spec_as_locally(
        ray_cluster: str, s3_root: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Drift is looked for in chunks the tasks wrote to S3; "evolve" stages again there.
    from etl.spec.model import Spec
    from tests.test_spec_run import _v1, _v2, _write

    for k, v in S3_ENV.items():
        monkeypatch.setenv(k, os.environ.get(k) or v)
    spec = Spec.from_toml(infer("things", [_write(tmp_path / "v1", _v1())]).to_toml()
                          .replace('drift = "keep"', 'drift = "evolve"'))
    ds = to_dataset(spec)
    v2 = _write(tmp_path / "v2", _v2())
    local = stage(ds, [v2], settings=Settings(staging_dir=tmp_path / "local", threads=2))
    on_ray = stage(ds, [v2], settings=Settings(staging_dir=s3_root.replace("/runs?", "/evolve?"),
                                               engine="ray", threads=2, ray_address=ray_cluster))
    assert {d["policy"] for d in on_ray.run.manifest["drift"]} == {"evolve"}
    assert on_ray.run.manifest["drift"] == local.run.manifest["drift"]
    assert on_ray.run.id == local.run.id and on_ray.run.manifest["spec"] == local.run.manifest["spec"]
    assert on_ray.dataset is not None and on_ray.dataset.version == local.run.manifest["dataset_version"]
    for name, entry in local.run.manifest["levels"].items():
        assert [(c["path"], c["rows"]) for c in on_ray.run.manifest["levels"][name]["chunks"]] == \
            [(c["path"], c["rows"]) for c in entry["chunks"]], name
    assert [p.name for p in on_ray.run.path.parent.iterdir()] == [local.run.id]


# Last of the module: it starts and stops a Ray of its own in this process, after which joining
# the module's cluster again can fail (OwnerDiedError on the first tasks).
def test_without_an_address_the_run_starts_a_ray_of_its_own(ray_cluster: str, small_export: Path,
                                                             tmp_path: Path) -> None:
    # A Ray already runs on this machine (the module's cluster): a run given no address must not
    # join it (ray.init() alone would), but start its own for the run and stop it after.
    import ray

    run = stage(get_dataset("mids"), [small_export],
                settings=Settings(staging_dir=tmp_path, engine="ray", threads=1)).run
    assert (run.manifest["ray"]["nodes"], run.manifest["ray"]["cpus"]) == (1, 1)
    assert not ray.is_initialized()
