"""The bench's real-data copies: ``copy_mids`` makes N renamed copies of a real export whose keys
stay unique, whose dirt is kept, and which still stage and validate; ``etl bench --copies``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from etl import Settings, get_dataset
from etl.cli import main
from etl.datasets import dataset_of
from etl.datasets.mids.gen import copy_mids
from etl.stage import stage
from etl.validate import validate
from tests.conftest import SHARED, require_shared

#: Real files of the full export that carry its quirks: a pet set with an empty SetName and no
#: powers, the power description holding a NUL, a db/Other set, and a plain player set.
QUIRKS = (
    "Other/_Villain_Pets.Claws_Assassins_Strike,Claws_Assassins_Strike.json",
    "Player/Class_Mastermind_Mastermind_Summon.Demon_Summoning.json",
    "Other/_Pets.TargetingDrone.json",
    "Player/Class_Defender_Defender_Buff.Time_Manipulation.json",
)


def _unrenamed(obj: Any, suffix: str) -> Any:
    """``obj`` with ``suffix`` taken out of every string (undoes one copy's renaming)."""
    if isinstance(obj, dict):
        return {k: _unrenamed(v, suffix) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unrenamed(v, suffix) for v in obj]
    if isinstance(obj, str):
        return obj[: -len(suffix)] if obj.endswith(suffix) else obj.replace(suffix + ".", ".", 1)
    return obj


def test_copies_of_the_sample_have_unique_keys_and_validate(mids_sample: Path, tmp_path: Path) -> None:
    made = copy_mids(mids_sample, tmp_path / "x3", copies=3)
    sets = sorted((mids_sample / "db").rglob("*.json"))
    assert made.powersets == 3 * len(sets)
    assert made.files == 3 * len(sets) + 3  # the header files once
    names = [orjson.loads(p.read_bytes()) for p in sorted((tmp_path / "x3" / "db").rglob("*.json"))]
    full = [ps["FullName"] for ps in names] + [p["FullName"] for ps in names for p in ps["Powers"]]
    assert len(full) == len(set(full)) == made.powersets + made.powers

    staged = stage(get_dataset("mids"), [tmp_path / "x3"], settings=Settings(staging_dir=tmp_path / "st"))
    checked = validate(staged.run, dataset_of(staged.run))
    assert checked.passed, checked.report["failed_levels"]
    levels = checked.report["levels"]
    assert levels["powersets"]["rows"] == made.powersets
    assert levels["powers"]["rows"] == made.powers
    assert levels["power_effects"]["rows"] == made.effects
    assert all(v["rejected"] == 0 for v in levels.values())


def test_copies_keep_the_real_dirt(tmp_path: Path) -> None:
    full = require_shared(SHARED / "mids_full")
    template = tmp_path / "template"
    for name in ("I12.json", "EnhDB.json", "Salvage.json"):
        (template / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(full / name, template / name)
    for rel in QUIRKS:
        (template / "db" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(full / "db" / rel, template / "db" / rel)

    copy_mids(template, tmp_path / "x2", copies=2)
    for rel in QUIRKS:
        original = orjson.loads((template / "db" / rel).read_bytes())
        path = tmp_path / "x2" / "db" / rel
        assert orjson.loads(path.read_bytes()) == original  # copy 0: the real records
        renamed = orjson.loads(path.with_name(path.stem + "_c1.json").read_bytes())
        assert renamed["FullName"] == original["FullName"] + "_c1"
        assert renamed["SetName"] == (original["SetName"] + "_c1" if original["SetName"] else "")
        assert len(renamed["Powers"]) == len(original["Powers"])
        # Only names changed: undoing the suffix gives the original record, every key and value.
        assert _unrenamed(renamed, "_c1") == original
    pets = orjson.loads((tmp_path / "x2" / "db" / QUIRKS[0]).with_name(
        Path(QUIRKS[0]).stem + "_c1.json").read_bytes())
    assert pets["SetName"] == "" and pets["Powers"] == []
    demons = (tmp_path / "x2" / "db" / QUIRKS[1]).with_name(Path(QUIRKS[1]).stem + "_c1.json")
    assert b"\\u0000" in demons.read_bytes()
    power = orjson.loads(demons.read_bytes())["Powers"][0]
    assert power["FullName"].startswith("Mastermind_Summon.Demon_Summoning_c1.")
    assert {e["PowerFullName"] for e in power["Effects"]} <= {power["FullName"], ""}


def test_copies_are_deterministic_and_pretty_keeps_the_real_bytes(mids_sample: Path, tmp_path: Path) -> None:
    a = copy_mids(mids_sample, tmp_path / "a", copies=2, pretty=True)
    b = copy_mids(mids_sample, tmp_path / "b", copies=2, pretty=True)
    assert a.bytes == b.bytes
    first = next((mids_sample / "db").rglob("*.json"))
    rel = first.relative_to(mids_sample)
    assert (tmp_path / "a" / rel).read_bytes() == first.read_bytes()
    assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    with pytest.raises(ValueError, match="at least 1"):
        copy_mids(mids_sample, tmp_path / "c", copies=0)


def test_bench_copies_cli(mids_sample: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["bench", "--template", str(mids_sample), "--copies", "2",
                                       "--no-load", "--json", "--work-dir", str(tmp_path / "bench")])
    assert result.exit_code == 0, result.output
    (res,) = json.loads(result.stdout)
    assert res["copies"] == 2 and res["validation"] == "passed"
    assert [p["name"] for p in res["phases"]] == ["stage", "validate", "transform"]
    assert res["tables"]["powersets"] == 2 * len(list((mids_sample / "db").rglob("*.json")))
    assert all(p["peak_mb"] > 0 and p["seconds"] > 0 for p in res["phases"])
    # The machine's busy CPU over each phase holds at least the phase process's own CPU (the
    # /proc/stat ticks round to 10 ms each way), and the run's is their sum.
    for p in res["phases"]:
        assert p["extra"]["machine_cpu_seconds"] >= p["extra"]["cpu_seconds"] - 0.05, p
    assert res["machine_cpu_seconds"] == pytest.approx(
        sum(p["extra"]["machine_cpu_seconds"] for p in res["phases"]))
    # Each phase's RSS split, sampled from /proc: its own (anonymous) pages and the libraries'
    # file pages, each part at most the peak it reports (ru_maxrss, in MB like these).
    for p in res["phases"]:
        anon, files = p["extra"]["sampled_anon_mb"], p["extra"]["sampled_file_mb"]
        assert 0 < anon <= p["peak_mb"] + 1 and 0 < files <= p["peak_mb"] + 1, p
    # etl init is measured on the same export: every powerset file read, twice over.
    spec = res["init"]
    assert spec["seconds"] > 0 and spec["peak_rss"] > 0
    assert spec["rows"] >= 2 * len(list((mids_sample / "db").rglob("*.json")))
    assert spec["sources"] >= 2 and spec["levels"] >= 3
    # ... and the same export is run with that inferred spec, as if mids were not built in.
    run = res["spec_run"]
    assert [p["name"] for p in run["phases"]] == ["stage", "validate", "transform"]
    # Every --json shows phases in one shape: what else a phase carries is under "extra".
    assert run["phases"][1]["extra"]["status"] == "passed"
    assert run["phases"][2]["extra"]["tables"]["powers"] == res["tables"]["powers"]
    assert run["total_seconds"] > 0
