"""Lossless staging and reconciliation: every key of every source record is in its row (typed
columns plus ``extra``), and ``etl reconcile`` rebuilds each record and compares it with the export."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import polars as pl
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from etl import Settings, get_dataset
from etl.cli import main
from etl.datasets import dataset_of
from etl.load.reconcile import reconcile
from etl.run import Run
from etl.stage import stage
from etl.transform import transform
from etl.validate import validate

from .conftest import SHARED, require_shared


def _transformed(sources: list[Path], staging: Path, max_reject_ratio: float = 0.0) -> Run:
    staged = stage(get_dataset("mids"), sources, settings=Settings(staging_dir=staging))
    validate(staged.run, dataset_of(staged.run), max_reject_ratio=max_reject_ratio)
    return transform(staged.run, dataset_of(staged.run)).run


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    sample = require_shared(SHARED / "mids")
    return _transformed([sample], tmp_path_factory.mktemp("reconcile"))


def test_every_key_of_a_power_is_in_its_row(sample_run: Run) -> None:
    """A power's keys are its typed columns plus ``extra``: nothing else, nothing missing."""
    src = json.loads(next((SHARED / "mids" / "db").rglob("*.json")).read_text())
    power = src["Powers"][0]
    row = (sample_run.table("powers").filter(pl.col("full_name") == power["FullName"])
           .collect().row(0, named=True))
    extra = orjson.loads(row["extra"])
    assert "Effects" not in extra  # its effects are rows of their own
    assert "FullName" not in extra and row["full_name"] == power["FullName"]
    # 68 of the 94 keys are not typed: they are all kept
    typed = {"FullName", "PowerName", "DisplayName", "Level", "Accuracy", "EndCost",
             "RechargeTime", "CastTime", "Range", "Radius", "Arc", "MaxTargets", "Target",
             "EffectArea", "ToggleCost", "StaticIndex", "DescShort", "DescLong", "BoostsAllowed",
             "Enhancements", "SetTypes", "PowerType"}
    assert set(power) - {"Effects"} <= set(extra) | typed
    # every key kept is kept with its value, and nothing appears that the export lacks
    kept = set(power) - {"Effects"} - typed
    assert len(kept) >= 20 and {"Requires", "GroupName", "AccuracyMult"} <= kept
    assert {k: extra[k] for k in kept} == {k: power[k] for k in kept}
    assert set(extra) <= set(power)


def test_cleaned_values_keep_the_export_original(sample_run: Run) -> None:
    """``LevelMax`` -1 is cleaned to NULL in the column; ``extra`` says what the export said."""
    enh = sample_run.table("enhancements").filter(pl.col("level_max").is_null()).collect()
    assert enh.height > 0
    assert all(orjson.loads(e).get("LevelMax") == -1 for e in enh["extra"])


def test_sample_reconciles_and_tampering_is_found(sample_run: Run, tmp_path: Path) -> None:
    result = reconcile(sample_run, get_dataset("mids"))
    assert result.ok, result.mismatches
    assert result.records == result.matched > 8_000
    assert result.levels["power_effects"]["matched"] == 4_470
    assert result.levels["set_special_bonuses"]["matched"] == 1_326  # empty ones are rows too
    assert result.keys_compared > 300_000

    # Change one value of one loaded row: reconcile names the file, record, path and key.
    entry = sample_run.manifest["tables"]["powers"]["chunks"][0]
    path = sample_run.path / entry["path"]
    df = pl.read_parquet(path)
    victim = sample_run.table("powers", lineage=True).collect().row(3, named=True)
    df = df.with_columns(pl.when(pl.int_range(pl.len()) == 3).then(pl.lit(99.0))
                         .otherwise(pl.col("accuracy")).alias("accuracy"))
    pq.write_table(df.to_arrow(), path)
    bad = reconcile(sample_run, get_dataset("mids"))
    assert not bad.ok and bad.mismatched == 1
    [m] = bad.mismatches
    assert (m["file"], m["record"], m["path"], m["key"]) == (
        victim["_file"], victim["_record"], victim["_path"], "Accuracy")
    out = CliRunner().invoke(main, ["reconcile", str(sample_run.path), "--json"])
    assert out.exit_code == 1
    doc = json.loads(out.stdout)
    assert doc["mismatched"] == 1
    assert doc["error"]["type"] == "ReconcileMismatch"
    assert (doc["error"]["file"], doc["error"]["record"]) == (victim["_file"], victim["_record"])


@pytest.mark.slow
def test_full_export_reconciles(tmp_path: Path) -> None:
    """The complete MidsReborn export: every record rebuilt from its row equals the export's."""
    full = require_shared(SHARED / "mids_full")
    run = _transformed([full], tmp_path, max_reject_ratio=1.0)
    result = reconcile(run, get_dataset("mids"))
    assert result.ok, result.mismatches
    assert result.levels["powers"]["records"] == 9_649
    assert result.levels["power_effects"]["records"] == 65_293
    assert result.levels["powersets"]["records"] == 3_568
    assert result.matched + result.rejected == result.records
    # The description holding a NUL: cleaned in its text column and in extra (PostgreSQL's
    # json operators refuse \u0000 for the whole table), counted, and reconciled as cleaned.
    powers = run.table("powers").collect()
    assert powers.filter(pl.col("desc_long").str.contains("\x00", literal=True)).height == 0
    assert powers.filter(pl.col("extra").str.contains("\\u0000", literal=True)).height == 0
    assert result.cleaned == 1 and result.levels["powers"]["cleaned"] == 1
    cleaned = [c for c in orjson.loads((run.path / "report.json").read_bytes())["cleaning"]
               if c["level"] == "powers" and c["column"] == "_extra"]
    assert [c["changed"] for c in cleaned] == [0]  # counted at its column, desc_long

@pytest.mark.parametrize(("dataset", "sample", "levels"), [
    ("aodb", "aodb/items_100.json", {"items": 100, "stat_values": 1_490, "spells": 691}),
    ("licenses", "licenses", {"searches": 10, "licenses": 10}),
])
def test_other_samples_reconcile(tmp_path: Path, dataset: str, sample: str,
                                 levels: dict[str, int]) -> None:
    """aodb (lookup tables, spells kept whole) and licenses (cleaned values, screenshots):
    every record rebuilt from its row equals the export's."""
    src = require_shared(SHARED / sample)
    staged = stage(get_dataset(dataset), [src], settings=Settings(staging_dir=tmp_path))
    assert validate(staged.run, dataset_of(staged.run)).passed
    run = transform(staged.run, dataset_of(staged.run)).run
    result = reconcile(run, get_dataset(dataset))
    assert result.ok, result.mismatches
    assert {k: result.levels[k]["matched"] for k in levels} == levels
    assert result.records == result.matched
    if dataset == "aodb":
        # values deduplicated into lookup rows are not repeated in the junction rows' extra:
        # reconcile reads them back through the reference
        for table in ("item_stats", "action_criteria", "spell_criteria", "attack_defense"):
            assert set(run.table(table).collect()["extra"]) == {"{}"}, table


def test_reconcile_from_the_loaded_rows(sample_run: Run, pg_url: str) -> None:
    """`etl reconcile --database-url` rebuilds from what PostgreSQL holds; a changed value in
    the database is found and named."""
    import psycopg

    from etl.load import load

    fresh = _transformed([require_shared(SHARED / "mids")], sample_run.path.parents[2] / "db")
    load(fresh, dataset_of(fresh), database_url=pg_url)
    result = reconcile(fresh, get_dataset("mids"), database_url=pg_url)
    assert result.ok, result.mismatches
    assert result.matched == result.records > 8_000
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE mids.power_effects SET extra = json_build_object('Tampered', 1) "
                     "WHERE effect_id = 7")
    out = CliRunner().invoke(main, ["reconcile", str(fresh.path), "--database-url", pg_url,
                                    "--json"])
    assert out.exit_code == 1, out.output
    found = json.loads(out.stdout)
    assert found["mismatched"] == 1 and found["mismatches"][0]["path"].startswith("Powers[")


def test_a_sample_leaves_out_files_too_large_to_parse_in_the_load(sample_run: Run,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The verify step's sample never parses a huge file (a 500 MB array export) in Python:
    such files are listed as left out; ``etl reconcile`` (no sample) reads them."""
    import etl.load.reconcile as rc

    monkeypatch.setattr(rc, "SAMPLE_MAX_FILE", 1 << 20)  # EnhDB.json is 1.9 MB
    picked = {s["relpath"] for s in rc.sample_files(sample_run, 1 / 32)}
    assert "EnhDB.json" not in picked and "I12.json" in picked
    result = reconcile(sample_run, get_dataset("mids"), sample=1 / 32)
    assert result.ok and "EnhDB.json" in result.too_large
    assert all((SHARED / "mids" / f).stat().st_size > 1 << 20 for f in result.too_large)
    assert result.levels["enhancements"]["records"] == 0
    assert reconcile(sample_run, get_dataset("mids")).levels["enhancements"]["records"] == 1_288


def test_groups_of_files_reconcile_alike_and_leave_no_temporary_files(
        tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Memory is bounded by a group of files, not by the export: the rows are spread over groups
    (temporary Arrow files) and each group is reconciled alone. With groups of a few kilobytes
    (one file each), staged and loaded rows reconcile exactly as in one group, a tampered row is
    still found in its file, and the temporary files are gone afterwards."""
    import tempfile

    import psycopg

    import etl.load.reconcile as rc
    from etl.datasets.mids.gen import generate_mids
    from etl.load import load

    export = tmp_path / "export"
    generate_mids(export, powersets=12, seed=5)
    run = _transformed([export], tmp_path / "staging")
    whole = reconcile(run, get_dataset("mids"))
    assert whole.ok and whole.records > 100

    spill_root = tmp_path / "tmp"
    spill_root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spill_root))
    monkeypatch.setattr(rc, "GROUP_BYTES", 4 << 10)
    assert len(rc._groups(rc.sample_files(run, None))) > 5
    held: dict[str, list[int]] = {}
    rows = rc._Spill.rows
    monkeypatch.setattr(rc._Spill, "rows", lambda self, table, group: (
        lambda frame: (held.setdefault(table, []).append(frame.height), frame)[1])(
            rows(self, table, group)))
    grouped = reconcile(run, get_dataset("mids"))
    assert grouped.to_dict() == whole.to_dict()
    # never a whole table at once: each read holds one group's rows of one table
    effects = held["power_effects"]  # rows of every powerset file
    assert sum(effects) == run.manifest["tables"]["power_effects"]["rows"]
    assert 0 < max(effects) < sum(effects) / 3
    assert list(spill_root.iterdir()) == []

    load(run, dataset_of(run), database_url=pg_url)
    assert reconcile(run, get_dataset("mids"), database_url=pg_url).to_dict() == whole.to_dict()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE mids.powers SET extra = json_build_object('Tampered', 1) "
                     "WHERE power_id = (SELECT max(power_id) FROM mids.powers)")
    bad = reconcile(run, get_dataset("mids"), database_url=pg_url)
    assert bad.mismatched == 1 and bad.records == whole.records
    assert list(spill_root.iterdir()) == []


def test_a_sample_is_a_run_of_adjacent_files_from_the_lowest_hash(sample_run: Run) -> None:
    """The verify step's sample of a source is that many adjacent files in path order, starting
    at the file of the lowest content hash (so the same files every time, and their rows
    together in the key-sorted tables); a small source is taken whole."""
    import etl.load.reconcile as rc

    sources = sample_run.manifest["sources"]
    by_source: dict[str, list[dict]] = {}
    for src in sources:
        by_source.setdefault(src["source"], []).append(src)
    big = max(by_source.values(), key=len)
    assert len(big) > rc.SMALL_SOURCE
    files = sorted(big, key=lambda f: f["relpath"])
    picked = [s["relpath"] for s in rc.sample_files(sample_run, 1 / 4)]
    first = min(range(len(files)), key=lambda i: files[i]["sha256"])
    want = [files[(first + i) % len(files)]["relpath"] for i in range(round(len(files) / 4))]
    assert sorted(p for p in picked if p in {f["relpath"] for f in files}) == sorted(want)
    for group in by_source.values():  # small sources whole
        if len(group) <= rc.SMALL_SOURCE:
            assert {g["relpath"] for g in group} <= set(picked) | set(rc.sampled_out(sample_run, 1 / 4))
    assert rc.sample_files(sample_run, 1 / 4) == rc.sample_files(sample_run, 1 / 4)
