"""The built-in mids dataset is a spec (etl/datasets/mids/mids.toml, its sources and staged levels)
plus a Python hook (its rules, cleaning, tables and transform), the way any spec may name one."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from etl.cli import main
from etl.datasets import dataset_of, get_dataset
from etl.datasets.mids import DATASET
from etl.spec import Spec
from etl.stage import stage
from tests.conftest import MIDS, require_shared

#: What each built-in's staged output depends on (sources, levels, fields and version) as the
#: Python declarations gave it before they moved into <name>.toml. A change to a built-in's spec
#: that changes it must come with a new version (and a new value here).
FINGERPRINTS = {
    "mids": "4861a84aeb65d63726e17a4de2cece9d251c32f42ef3c898528911ee2693931e",
    "aodb": "c930edd50089ac446c8d4b6fd3624ccba863df01d9c65f077abc2a3e8df032c7",
    "licenses": "fcf1b7085887ebeb70fdf2a0b867df3b8f201bf66b446c6712f0f8caa7e1a815",
}


@pytest.mark.parametrize("name", sorted(FINGERPRINTS))
def test_each_builtin_is_its_spec_plus_its_hook(name: str) -> None:
    dataset = get_dataset(name)
    spec_file = Path(dataset.spec_file or "")
    assert spec_file.name == f"{name}.toml" and spec_file.is_file()
    spec = Spec.from_toml(spec_file.read_text())
    assert spec.hook == f"etl.datasets.{name}" and spec.version == dataset.version
    assert {lv.level or lv.table for src in spec.sources for lv in src.levels} == set(dataset.levels)
    assert all(src.drift == "off" for src in spec.sources)
    digest = hashlib.sha256(json.dumps(dataset.fingerprint(), sort_keys=True).encode()).hexdigest()
    assert digest == FINGERPRINTS[name]
    assert dataset.tables and dataset.rules  # from the hook


def test_a_mids_run_keeps_the_spec_and_reopens_through_the_hook(tmp_path: Path) -> None:
    from etl import Settings

    staged = stage(DATASET, [require_shared(MIDS)], settings=Settings(staging_dir=tmp_path))
    assert (staged.run.path / "spec.toml").read_text() == DATASET.spec_text
    assert "drift" not in staged.run.manifest  # the built-ins look for none (drift = "off")
    again = dataset_of(staged.run)
    assert again.fingerprint() == DATASET.fingerprint()
    assert [t.name for t in again.tables] == [t.name for t in DATASET.tables]


def test_a_user_spec_names_its_own_hook(tmp_path: Path, pg_url: str) -> None:
    export = tmp_path / "export"
    export.mkdir()
    for i, (name, size) in enumerate([("a", 1), ("b", 2), ("c", 2), ("d", None)]):
        (export / f"t{i}.json").write_text(json.dumps({"name": name, "size": size, "color": "red"}))
    (tmp_path / "things.toml").write_text(f"""
name = "things"
root = "{export}"
hook = "tests.spec_hook_example"

[[sources]]
name = "things"
patterns = ["*.json"]

[[sources.levels]]
path = ""
table = "things"

[[sources.levels.columns]]
name = "name"
type = "text"

[[sources.levels.columns]]
name = "size"
type = "bigint"
""")
    env = {"ETL_STAGING_DIR": str(tmp_path / "staging")}
    result = CliRunner().invoke(main, ["run", str(tmp_path / "things.toml"), "--database-url", pg_url,
                                       "--json"], env=env)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["tables"] == {"things": 4, "sizes": 2}
    with psycopg.connect(pg_url) as conn:
        sizes = conn.execute("SELECT size, things FROM things.sizes ORDER BY size").fetchall()
        assert sizes == [(1, 1), (2, 2)]
        assert conn.execute("SELECT count(*) FROM things.things WHERE extra::jsonb ->> 'color' = 'red'"
                            ).fetchone() == (4,)
    rec = CliRunner().invoke(main, ["reconcile", summary["run"], "--database-url", pg_url, "--json"], env=env)
    assert rec.exit_code == 0, rec.output
