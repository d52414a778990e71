"""The mids dataset end to end without a database: stage → validate → transform.

Row counts are proven from the source files themselves (parsed here with the standard library),
not only from constants.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from etl import Settings, get_dataset, open_run
from etl.cli import main
from etl.datasets import dataset_of
from etl.datasets.mids.gen import generate_mids
from etl.stage import stage
from etl.transform import transform
from etl.validate import validate


def _source_counts(root: Path) -> dict[str, int]:
    sets = [json.loads(p.read_text()) for p in sorted((root / "db").rglob("*.json"))]
    enh = json.loads((root / "EnhDB.json").read_text())
    requirements = 0
    for s in sets:
        for p in s["Powers"]:
            r = p["Requires"]
            requirements += sum(1 for c in r["ClassName"] + r["ClassNameNot"] if c)
            requirements += sum(1 for g in r["PowerID"] + r["PowerIDNot"] for x in g if x)
    return {
        "archetypes": len(json.loads((root / "I12.json").read_text())["Archetypes"]),
        "powersets": len(sets),
        "powers": sum(len(s["Powers"]) for s in sets),
        "power_effects": sum(len(p["Effects"]) for s in sets for p in s["Powers"]),
        "power_requirements": requirements,
        "enhancements": len(enh["Enhancements"]),
        "enhancement_sets": len(enh["EnhancementSets"]),
        # every entry of both lists, empty special bonuses too: each source record is a row
        "set_bonuses": sum(len(s["Bonus"]) + len(s["SpecialBonus"]) for s in enh["EnhancementSets"]),
        "salvage": len(json.loads((root / "Salvage.json").read_text())["Salvage"]),
        "documents": 3,  # the header files I12.json, EnhDB.json, Salvage.json
    }


@pytest.fixture(scope="module")
def sample_run(mids_sample: Path, tmp_path_factory: pytest.TempPathFactory):
    settings = Settings(staging_dir=tmp_path_factory.mktemp("st"), chunk_rows=1000)
    staged = stage(get_dataset("mids"), [mids_sample], settings=settings)
    checked = validate(staged.run, dataset_of(staged.run))
    built = transform(staged.run, dataset_of(staged.run))
    return staged, checked, built


def test_counts_reconcile_with_source(sample_run, mids_sample: Path) -> None:
    _, checked, built = sample_run
    expected = _source_counts(mids_sample)
    assert checked.passed
    assert built.rows == expected
    # The figures the issue states for the real sample, as a second anchor.
    assert {k: expected[k] for k in ("powersets", "powers", "power_effects", "enhancements",
                                     "enhancement_sets", "salvage")} == {
        "powersets": 32, "powers": 428, "power_effects": 4470, "enhancements": 1288,
        "enhancement_sets": 221, "salvage": 108}


def test_lineage_and_chunks(sample_run) -> None:
    staged, _, _ = sample_run
    run = staged.run
    effects = run.raw("power_effects").collect()
    assert effects.height == 4470
    assert effects["_file"].is_null().sum() == 0
    assert effects["_path"].str.contains(r"^Powers\[\d+\]\.Effects\[\d+\]$").all()
    # chunk_rows=1000 bounds every chunk, and the manifest's hashes and counts match the files.
    chunks = run.manifest["levels"]["power_effects"]["chunks"]
    assert len(chunks) == 5
    for c in chunks:
        assert pq.ParquetFile(run.path / c["path"]).metadata.num_rows == c["rows"] <= 1000
    src = {s["relpath"]: s for s in run.manifest["sources"]}
    assert src["I12.json"]["source"] == "archetypes" and len(src["I12.json"]["sha256"]) == 64
    assert run.manifest["phases"]["stage"]["peak_rss"] > 0


def test_effect_values_round_trip(sample_run, mids_sample: Path) -> None:
    """A staged effect equals the source JSON, field by field, at the record it names."""
    staged, _, _ = sample_run
    run = staged.run
    fire_blast = "db/Player/Class_Blaster_Blaster_Ranged.Fire_Blast.json"
    row = run.raw("power_effects").filter(pl.col("_file") == fire_blast) \
        .sort("_path").collect().row(0, named=True)
    src = json.loads((mids_sample / row["_file"]).read_text())
    p_i, e_i = (int(x) for x in row["_path"].replace("Powers[", "").replace("Effects[", "")
                .replace("]", "").split("."))
    effect = src["Powers"][p_i]["Effects"][e_i]
    assert row["mag"] == effect["Mag"] and row["effect_type"] == effect["EffectType"]
    assert row["modifier_table"] == effect["ModifierTable"]
    assert row["power_full_name"] == src["Powers"][p_i]["FullName"]


def test_keys_are_deterministic(mids_sample: Path, tmp_path: Path, sample_run) -> None:
    _, _, first = sample_run
    settings = Settings(staging_dir=tmp_path / "again", chunk_rows=250)
    staged = stage(get_dataset("mids"), [mids_sample], settings=settings)
    validate(staged.run, dataset_of(staged.run))
    second = transform(staged.run, dataset_of(staged.run))
    assert staged.run.id == first.run.id  # the id comes from the content
    for name in first.rows:
        a = first.run.table(name).collect()
        b = second.run.table(name).collect()
        assert a.equals(b), name
        assert first.run.manifest["tables"][name]["checksum"] == \
            second.run.manifest["tables"][name]["checksum"]


def test_references_and_keys(sample_run) -> None:
    _, _, built = sample_run
    t = built.run.tables()
    powers = t["powers"].collect()
    effects = t["power_effects"].collect()
    assert effects.join(powers, on="power_id", how="anti").height == 0
    assert powers.join(t["powersets"].collect(), on="powerset_id", how="anti").height == 0
    assert powers["full_name"].is_unique().all()
    # Surrogate keys number rows in the order of their natural keys (worked out on the key
    # columns alone, the rows left in their order): 1, 2, 3… along full_name, and along
    # (power's full name, index) for the effects.
    assert powers.sort("full_name")["power_id"].to_list() == list(range(1, powers.height + 1))
    named = effects.join(powers.select("power_id", "full_name"), on="power_id")
    assert named.sort("full_name", "effect_index")["effect_id"].to_list() == list(
        range(1, effects.height + 1))
    sets = t["powersets"].collect()
    assert sets.sort("full_name")["powerset_id"].to_list() == list(range(1, sets.height + 1))
    enh = t["enhancements"].collect()
    # Crafted Bonesnap pieces carry no nIDSet: the set's UID still links them.
    bonesnap = enh.filter(pl.col("uid") == "Crafted_Bonesnap_A")
    assert bonesnap["set_id"].item() is not None


def test_rejects_cascade_and_ratio(tmp_path: Path) -> None:
    """A broken power is rejected with its rule, its effects follow it, the ratio decides."""
    src = tmp_path / "export"
    generate_mids(src, powersets=5, seed=3)
    victim = sorted((src / "db").rglob("*.json"))[0]
    data = json.loads(victim.read_text())
    bad_power = data["Powers"][0]
    bad_power["Accuracy"] = -5.0
    n_effects = len(bad_power["Effects"])
    data["Powers"][1 % len(data["Powers"])]["Level"] = "high"  # wrong type
    victim.write_text(json.dumps(data))
    settings = Settings(staging_dir=tmp_path / "st")
    staged = stage(get_dataset("mids"), [src], settings=settings)
    strict = validate(staged.run, dataset_of(staged.run))
    assert not strict.passed
    rejects = staged.run.rejects("powers").collect()
    assert bad_power["FullName"] in rejects["full_name"].to_list()
    rules = {r for rs in rejects["_rules"].to_list() for r in rs}
    assert "powers.accuracy.range" in rules
    if len(data["Powers"]) > 1:
        assert "powers.types" in rules
    eff_rejects = staged.run.rejects("power_effects").collect()
    assert eff_rejects.filter(pl.col("power_full_name") == bad_power["FullName"]).height == n_effects
    with pytest.raises(Exception, match="failed validation"):
        transform(staged.run, dataset_of(staged.run))
    lenient = validate(staged.run, dataset_of(staged.run), max_reject_ratio=0.9)
    assert lenient.passed
    built = transform(staged.run, dataset_of(staged.run))
    assert bad_power["FullName"] not in built.run.table("powers").collect()["full_name"].to_list()


def test_cli_stage_validate_transform(mids_sample: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    st = tmp_path / "st"
    res = runner.invoke(main, ["--staging-dir", str(st), "stage", "mids", str(mids_sample),
                               "--chunk-rows", "2000"])
    assert res.exit_code == 0, res.output
    run_dir = Path(res.stdout.strip().splitlines()[-1])
    assert (run_dir / "manifest.json").is_file()
    again = runner.invoke(main, ["--staging-dir", str(st), "stage", "mids", str(mids_sample)])
    assert again.exit_code == 0
    assert "already staged" in again.stderr
    assert Path(again.stdout.strip().splitlines()[-1]) == run_dir
    report = tmp_path / "ci" / "report.json"
    res = runner.invoke(main, ["validate", str(run_dir), "--report", str(report)])
    assert res.exit_code == 0, res.output
    assert json.loads(report.read_text())["status"] == "passed"
    res = runner.invoke(main, ["transform", str(run_dir)])
    assert res.exit_code == 0, res.output
    assert open_run(run_dir).manifest["tables"]["powers"]["rows"] == 428


def test_cli_validate_exit_codes(tmp_path: Path) -> None:
    src = tmp_path / "export"
    generate_mids(src, powersets=4, seed=1)
    victim = sorted((src / "db").rglob("*.json"))[0]
    data = json.loads(victim.read_text())
    data["Powers"][0]["Effects"][0]["Probability"] = 7.5
    victim.write_text(json.dumps(data))
    runner = CliRunner()
    st = ["--staging-dir", str(tmp_path / "st")]
    res = runner.invoke(main, [*st, "validate", "mids", str(src)])
    assert res.exit_code == 1
    assert "power_effects.probability.range" in res.stderr
    res = runner.invoke(main, [*st, "validate", "mids", str(src), "--max-reject-ratio", "0.5"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, [*st, "validate", "mids", str(tmp_path / "nowhere")])
    assert res.exit_code == 2


def test_force_restages_and_sources_forms(mids_sample: Path, tmp_path: Path) -> None:
    """Globs, gz files and NDJSON feed the same levels as plain files."""
    import gzip

    src = tmp_path / "export"
    shutil.copytree(mids_sample, src, ignore=shutil.ignore_patterns("db"))
    (src / "db").mkdir()
    sets = sorted((mids_sample / "db").rglob("*.json"))[:6]
    with gzip.open(src / "db" / "gz_set.json.gz", "wb") as f:
        f.write(sets[0].read_bytes())
    (src / "db" / "many.ndjson").write_text(
        "\n".join(json.dumps(json.loads(p.read_text())) for p in sets[1:4]) + "\n")
    (src / "db" / "arr.json").write_text(json.dumps([json.loads(p.read_text()) for p in sets[4:6]]))
    settings = Settings(staging_dir=tmp_path / "st")
    staged = stage(get_dataset("mids"), [str(src / "*.json"), str(src / "db" / "*")], settings=settings)
    ps = staged.run.raw("powersets").collect().sort("_file", "_record")
    assert ps.height == 6
    # A glob's files are named under the deepest folder holding them all (db/ for db/*).
    assert ps.filter(pl.col("_file") == "many.ndjson")["_record"].to_list() == [0, 1, 2]
    assert ps.filter(pl.col("_file") == "arr.json")["_record"].to_list() == [0, 1]
    expected = {json.loads(p.read_text())["FullName"] for p in sets}
    assert set(ps["full_name"].to_list()) == expected
    again = stage(get_dataset("mids"), [str(src / "*.json"), str(src / "db" / "*")],
                  settings=settings, force=True)
    assert not again.skipped and again.run.id == staged.run.id


def test_memory_does_not_grow_with_input(tmp_path: Path) -> None:
    """Peak RSS of staging is bounded by the settings, not the export (checked in a subprocess)."""
    import subprocess
    import sys

    def peak(powersets: int) -> int:
        src = tmp_path / f"e{powersets}"
        generate_mids(src, powersets=powersets, seed=2)
        code = ("import sys; from etl import Settings, get_dataset; from etl.stage import stage; "
                f"r = stage(get_dataset('mids'), [{str(src)!r}], settings=Settings(staging_dir="
                f"{str(tmp_path / 'st')!r}, memory_limit='128MB')); print(r.phase.peak_rss)")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        return int(out.stdout.strip().splitlines()[-1])

    small, large = peak(50), peak(1500)
    assert large < small + 120_000_000, (small, large)
