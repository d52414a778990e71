"""Two runs sharing a staging folder (issue 17): each stage, validation and transform holds the
dataset's staging folder alone, so concurrent runs of the same export both end with a complete
run (manifest, rejects, report, tables), and the temporary folder a killed stage left behind is
removed by the next one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from etl.datasets.mids.gen import generate_mids
from etl.run import open_run

REPO = Path(__file__).resolve().parents[2]


def test_concurrent_runs_of_one_export_both_complete(tmp_path: Path) -> None:
    export = tmp_path / "export"
    generate_mids(export, powersets=40, seed=5)
    staging = tmp_path / "staging"
    env = {**os.environ, "ETL_STAGING_DIR": str(staging)}
    cmd = [sys.executable, "-m", "etl.cli", "validate", "mids", str(export), "--force"]
    procs = [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(3)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_out, errs) in zip(procs, outs, strict=True):
        assert p.returncode == 0, errs
        assert "Traceback" not in errs
    (run_dir,) = {out.strip().splitlines()[-1] for out, _ in outs}
    run = open_run(run_dir)
    assert run.manifest["validation"]["status"] == "passed"
    assert (Path(run_dir) / "rejects").is_dir() and (Path(run_dir) / "report.json").is_file()
    assert list((staging / "mids").glob(".stage.tmp-*")) == []


def test_a_killed_stage_leaves_nothing_the_next_one_keeps(tmp_path: Path) -> None:
    export = tmp_path / "export"
    generate_mids(export, powersets=5, seed=1)
    staging = tmp_path / "staging"
    left = staging / "mids" / ".stage.tmp-999999-1"  # as a stage killed mid-way leaves it
    (left / "raw").mkdir(parents=True)
    (left / "raw" / "part.parquet").write_bytes(b"half")
    env = {**os.environ, "ETL_STAGING_DIR": str(staging)}
    done = subprocess.run([sys.executable, "-m", "etl.cli", "stage", "mids", str(export)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert not left.exists()


def test_a_glob_root_is_the_folder_it_names_so_references_cannot_leave_it(tmp_path: Path) -> None:
    """A licenses result given as `export/states_baseline/FL/*_parse.json` whose screenshot
    reference names `secret/other.png` is judged against the FL folder the glob names: a PNG in
    a folder beside FL is not read, copied or recorded (it used to be, the glob's root being the
    folder above)."""
    import hashlib
    import json
    import shutil

    from etl import Settings, get_dataset
    from etl.stage import stage
    from tests.conftest import SHARED, require_shared

    sample = require_shared(SHARED / "licenses" / "states_baseline" / "FL")
    export = tmp_path / "export"
    shutil.copytree(sample, export / "states_baseline" / "FL")
    secret = export / "states_baseline" / "secret" / "other.png"
    secret.parent.mkdir()
    secret.write_bytes((export / "states_baseline" / "FL" / "Belmar_01.png").read_bytes() + b"secret")
    result = export / "states_baseline" / "FL" / "Belmar_01_parse.json"
    doc = json.loads(result.read_text())
    doc["metadata"]["source_image_file"] = "secret/other.png"
    result.write_text(json.dumps(doc))
    staged = stage(get_dataset("licenses"), [str(export / "states_baseline" / "FL" / "*_parse.json")],
                   settings=Settings(staging_dir=tmp_path / "staging"))
    images = staged.run.raw("images").collect()
    assert hashlib.sha256(secret.read_bytes()).hexdigest() not in set(images["sha256"])
    assert images.height == 10 and set(images["found_by"]) == {"name"}
