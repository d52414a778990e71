"""The aodb dataset on the real sample: stage → validate → transform, then into PostgreSQL.

Every count is computed from the source file itself (parsed here with the standard library), not
taken from constants: junction rows equal list entries, lookup rows equal distinct values.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import polars as pl
import psycopg
import pytest
from click.testing import CliRunner

from etl import Settings, get_dataset, open_run
from etl.cli import main
from etl.datasets import dataset_of
from etl.errors import InputError
from etl.stage import stage
from etl.transform import transform
from etl.validate import validate
from tests.conftest import SHARED, require_shared

AODB = get_dataset("aodb")
SAMPLE = SHARED / "aodb" / "items_100.json"
TRUNCATED = SHARED / "aodb" / "items_truncated_invalid.json"


def _items() -> list[dict[str, Any]]:
    return json.loads(require_shared(SAMPLE).read_text())


def _criteria_of(item: dict[str, Any]) -> tuple[list[Any], list[Any]]:
    actions = [c for a in ((item.get("ActionData") or {}).get("Actions") or []) for c in a["Criteria"]]
    spells = [c for sd in item.get("SpellData") or [] for s in sd["Items"] for c in s["Criteria"]]
    return actions, spells


def source_counts(items: list[dict[str, Any]]) -> dict[str, int]:
    """What each table must hold, from the export (see the dataset's notes)."""
    stats = [(sv["Stat"], sv["RawValue"]) for it in items for sv in it["StatValues"]]
    action_crit, spell_crit = [], []
    for it in items:
        a, s = _criteria_of(it)
        action_crit += a
        spell_crit += s
    triples = {(c["Value1"], c["Value2"], c["Operator"]) for c in action_crit + spell_crit}
    adef = [it["AttackDefenseData"] for it in items if it["AttackDefenseData"]]
    return {
        "items": len(items),
        "stat_values": len(set(stats)),
        "item_stats": len(stats),
        "criteria": len(triples),
        "actions": sum(len((it.get("ActionData") or {}).get("Actions") or []) for it in items),
        "action_criteria": len(action_crit),
        "spell_data": sum(len(it["SpellData"]) for it in items),
        "spells": sum(len(sd["Items"]) for it in items for sd in it["SpellData"]),
        "spell_criteria": len(spell_crit),
        "attack_defense": sum(len(a["Attack"]) + len(a["Defense"]) for a in adef),
        "animation_mesh": sum(1 for it in items if it["AnimationMesh"]),
        "shop_hash": 0,
    }


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory: pytest.TempPathFactory):
    require_shared(SAMPLE)
    settings = Settings(staging_dir=tmp_path_factory.mktemp("st"), chunk_rows=500)
    staged = stage(AODB, [SAMPLE], settings=settings)
    checked = validate(staged.run, AODB)
    built = transform(checked.run, AODB)
    return dataclasses.replace(staged, run=built.run), checked, built


def test_counts_reconcile_with_source(sample_run) -> None:
    _, checked, built = sample_run
    assert checked.passed
    expected = source_counts(_items())
    assert built.rows == expected
    # The figures the sample's README states, as a second anchor.
    assert expected["items"] == 100 and expected["item_stats"] == 1490


def test_lookup_tables_are_deduplicated_and_shared(sample_run) -> None:
    staged, _, _ = sample_run
    run = staged.run
    stat_values = run.table("stat_values").collect()
    item_stats = run.table("item_stats").collect()
    # Ids are the rank of the value in sorted order: 1..n, no gaps.
    assert stat_values["stat_value_id"].to_list() == list(range(1, stat_values.height + 1))
    assert stat_values.sort("stat", "value").equals(stat_values)
    assert stat_values.select(pl.struct("stat", "value").is_unique().all()).item()
    # Shared: fewer lookup rows than uses; every item's stats resolve to its own pairs, in order.
    assert stat_values.height < item_stats.height
    first = _items()[0]
    got = (item_stats.filter(pl.col("aoid") == first["AOID"]).sort("position")
           .join(stat_values, on="stat_value_id").sort("position"))
    assert list(zip(got["stat"], got["value"], strict=True)) == [
        (sv["Stat"], sv["RawValue"]) for sv in first["StatValues"]]
    items = run.table("items").collect()
    ql = {it["AOID"]: next(sv["RawValue"] for sv in it["StatValues"] if sv["Stat"] == 54)
          for it in _items()}
    assert dict(zip(items["aoid"], items["ql"], strict=True)) == ql
    assert not items["is_nano"].any()  # the sample holds items only (DBType 1000020)


def test_criteria_order_is_kept(sample_run) -> None:
    staged, _, _ = sample_run
    t = staged.run.tables()
    criteria = t["criteria"].collect()
    ac = (t["action_criteria"].collect().join(t["actions"].collect(), on="action_id")
          .join(criteria, on="criterion_id").sort("aoid", "position_right", "position"))
    want = [(it["AOID"], a["Action"], c["Value1"], c["Value2"], c["Operator"])
            for it in sorted(_items(), key=lambda i: i["AOID"])
            for a in ((it.get("ActionData") or {}).get("Actions") or []) for c in a["Criteria"]]
    assert list(zip(ac["aoid"], ac["action"], ac["value1"], ac["value2"], ac["operator"],
                    strict=True)) == want


def _write(path: Path, items: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(items, indent=1))
    return path


def _tables(root: Path, sources: list[Path]) -> dict[str, pl.DataFrame]:
    settings = Settings(staging_dir=root)
    run = stage(AODB, sources, settings=settings).run
    assert validate(run, dataset_of(run)).passed
    run = transform(run, dataset_of(run)).run
    return {name: lf.collect() for name, lf in run.tables().items()}


def test_ids_do_not_depend_on_file_order(sample_run, tmp_path: Path) -> None:
    """The same items reversed and split over two files (one NDJSON) give the same rows."""
    staged, _, _ = sample_run
    items = _items()[::-1]
    a = _write(tmp_path / "in" / "part1.json", items[:40])
    b = tmp_path / "in" / "part2.ndjson"
    b.write_text("".join(json.dumps(it) + "\n" for it in items[40:]))
    again = _tables(tmp_path / "st", [a, b])
    for name, lf in staged.run.tables().items():
        want = lf.collect()
        if name == "items":  # lineage differs by construction
            want, again[name] = (df.drop("source_file", "source_record") for df in (want, again[name]))
        assert again[name].equals(want), name


def test_rules_reject_with_reasons(tmp_path: Path) -> None:
    items = _items()[:10]
    dup = json.loads(json.dumps(items[1]))                 # a second item with the same AOID
    items.append(dup)
    items[2]["AOID"] = None                                # no AOID
    next(sv for sv in items[3]["StatValues"] if sv["Stat"] == 54)["RawValue"] = 5000  # QL
    with_actions = next(it for it in items[4:] if it["ActionData"])
    with_actions["ActionData"]["Actions"][0]["Criteria"][0]["Operator"] = 999
    src = _write(tmp_path / "broken.json", items)
    run = stage(AODB, [src], settings=Settings(staging_dir=tmp_path / "st")).run
    result = validate(run, dataset_of(run))
    assert not result.passed
    failed = {r["name"]: r for r in result.report["rules"] if r["failed"]}
    assert failed["items.aoid.unique"]["failed"] == 1
    assert failed["items.aoid.unique"]["examples"][0]["record"] == 10
    assert failed["items.aoid.required"]["examples"][0]["record"] == 2
    assert failed["stat_values.ql_range"]["examples"][0]["record"] == 3
    assert failed["action_criteria.operator.range"]["examples"][0]["values"] == {"operator": 999}
    # The item without an AOID takes its stats and spells with it, each with its reason.
    rejects = pl.read_parquet(run.path / "rejects" / "stat_values.parquet")
    assert set(rejects.filter(pl.col("_record") == 2)["_rules"].explode()) == {
        "stat_values.aoid.required", "stat_values.parent"}
    # The duplicate's (record 10) go with it: the item they sit in was rejected.
    assert set(rejects.filter(pl.col("_record") == 10)["_rules"].explode()) == {"stat_values.parent"}
    items_rejected = pl.read_parquet(run.path / "rejects" / "items.parquet")
    assert sorted(items_rejected["_record"]) == [2, 10]
    reasons = items_rejected.sort("_record")["_reasons"].to_list()
    # (A NULL AOID could not be stored either: the built-in storable rule says so too.)
    assert reasons[0] == ["aoid must be present",
                          "aoid must not be NULL to be stored in items.aoid (bigint NOT NULL)"]
    assert reasons[1] == ["(aoid) must be unique"]

    # Allowed through, the rejected rows are gone and the duplicate's children are not
    # attached to the accepted item of the same AOID.
    validate(run, dataset_of(run), max_reject_ratio=1.0)
    run = transform(run, dataset_of(run)).run
    t = {name: lf.collect() for name, lf in run.tables().items()}
    assert t["items"].height == 9
    dup_stats = t["item_stats"].filter(pl.col("aoid") == dup["AOID"])
    assert dup_stats.height == len(dup["StatValues"])


def test_shop_hash_object_or_list(tmp_path: Path) -> None:
    items = _items()[:3]
    entry = {"Hash": {"Text": "ABCD"}, "MinLevel": 1, "MaxLevel": 200, "BaseAmount": 3,
             "RegenAmount": 1, "RegenInterval": 600, "SpawnChance": 50, "Extra": [1]}
    items[0]["ShopHashData"] = {"Items": [entry, {**entry, "Hash": {"Text": "EFGH"}}]}
    items[1]["ShopHashData"] = [entry]
    t = _tables(tmp_path / "st", [_write(tmp_path / "shop.json", items)])
    shop = t["shop_hash"].sort("aoid", "position")
    assert shop.select("aoid", "position", "hash", "spawn_chance").rows() == sorted([
        (items[0]["AOID"], 0, "ABCD", 50), (items[0]["AOID"], 1, "EFGH", 50),
        (items[1]["AOID"], 0, "ABCD", 50)])
    assert json.loads(shop["entry"][0]) == entry


def test_truncated_real_file_is_a_clear_input_error(tmp_path: Path) -> None:
    require_shared(TRUNCATED)
    with pytest.raises(InputError) as info:
        stage(AODB, [TRUNCATED], settings=Settings(staging_dir=tmp_path / "st"))
    err = info.value
    assert Path(str(err.file)) == TRUNCATED
    assert "truncated" in str(err) and err.hint
    assert not list((tmp_path / "st").rglob("manifest.json"))


# ------------------------------------------------------------------------------ into PostgreSQL


def test_run_into_postgres_and_spell_round_trip(pg_url: str, tmp_path: Path) -> None:
    require_shared(SAMPLE)
    staging = tmp_path / "st"
    result = CliRunner().invoke(main, ["--staging-dir", str(staging), "run", "aodb", str(SAMPLE),
                                       "--database-url", pg_url])
    assert result.exit_code == 0, result.output
    run = open_run(next((staging / "aodb").glob("aodb-*")))
    expected = source_counts(_items())
    # The jsonb columns (spells.params, ...) were staged as PostgreSQL prints them: the tables
    # read back hash equal to the staged ones as plain text, with no comparison by meaning.
    from etl.load import table_checksums

    assert table_checksums(pg_url, AODB, run=run) == {
        n: e["checksum"] for n, e in run.manifest["tables"].items()}
    with psycopg.connect(pg_url) as conn:
        for table in AODB.tables:
            n = conn.execute(f"SELECT count(*) FROM aodb.{table.name}").fetchone()
            assert n is not None
            assert n[0] == run.manifest["tables"][table.name]["rows"] == expected[table.name], table.name
        # Every spell, whatever its keys, comes back as it was exported (less Criteria, which
        # are rows of spell_criteria), with the common keys typed.
        rows = conn.execute(
            "SELECT d.aoid, d.position, s.position, s.params, s.spell_id, s.target, s.tick_count, "
            "s.tick_interval, s.spell_format, s.stat, s.amount "
            "FROM aodb.spells s JOIN aodb.spell_data d USING (spell_data_id)").fetchall()
        crit = conn.execute(
            "SELECT d.aoid, d.position, s.position, sc.position, c.value1, c.value2, c.operator "
            "FROM aodb.spell_criteria sc JOIN aodb.spells s USING (spell_entry_id) "
            "JOIN aodb.spell_data d USING (spell_data_id) JOIN aodb.criteria c USING (criterion_id)"
        ).fetchall()
    got = {(r[0], r[1], r[2]): r[3:] for r in rows}
    got_crit = {(r[0], r[1], r[2], r[3]): r[4:] for r in crit}
    seen_keys: set[str] = set()
    for item in _items():
        for i, sd in enumerate(item["SpellData"]):
            for j, spell in enumerate(sd["Items"]):
                params, spell_id, target, ticks, interval, fmt, stat, amount = got[(item["AOID"], i, j)]
                # a non-empty Criteria list is rows of spell_criteria; an empty one stays
                assert params == {k: v for k, v in spell.items()
                                  if k != "Criteria" or not spell["Criteria"]}
                assert (spell_id, target, ticks, interval, fmt) == (
                    spell["SpellID"], spell["Target"], spell["TickCount"], spell["TickInterval"],
                    spell["SpellFormat"])
                assert (stat, amount) == (spell.get("Stat"), spell.get("Amount"))
                for k, c in enumerate(spell["Criteria"]):
                    assert got_crit[(item["AOID"], i, j, k)] == (c["Value1"], c["Value2"], c["Operator"])
                seen_keys.update(spell)
    assert len(got) == expected["spells"] and len(got_crit) == expected["spell_criteria"]
    # The sample's spells really are heterogeneous.
    assert {"Stat", "Amount", "Texture", "Location", "A", "B", "C"} <= seen_keys


# ------------------------------------------------------------------------------ the generator


def _distinct_criteria(items: list[dict[str, Any]]) -> int:
    found = set()
    for it in items:
        for a in (it.get("ActionData") or {}).get("Actions") or []:
            found |= {(c["Value1"], c["Value2"], c["Operator"]) for c in a.get("Criteria") or []}
        for sd in it.get("SpellData") or []:
            for sp in sd.get("Items") or []:
                found |= {(c["Value1"], c["Value2"], c["Operator"]) for c in sp.get("Criteria") or []}
    return len(found)


def test_generator_is_deterministic_and_passes_validation(tmp_path: Path) -> None:
    from etl.datasets.aodb.gen import generate_aodb

    template = require_shared(SAMPLE).parent
    a = generate_aodb(tmp_path / "a", items=300, template=template, seed=7, files=2)
    generate_aodb(tmp_path / "b", items=300, template=template, seed=7, files=2)
    assert a.files == 2 and a.items == 300
    for name in ("items-000.json", "items-001.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    items = [it for n in ("items-000.json", "items-001.json")
             for it in json.loads((tmp_path / "a" / n).read_text())]
    assert len({it["AOID"] for it in items}) == 300
    t = _tables(tmp_path / "st", [tmp_path / "a"])
    assert {k: v.height for k, v in t.items()} == source_counts(items)
    # Lookup values stay shared, as in the real export; some items are nanos.
    assert t["stat_values"].height < t["item_stats"].height / 4
    assert 0 < t["items"]["is_nano"].sum() < 300
    # ...but QL scaling makes new ones too: not just the sample's own pairs and criteria.
    real = json.loads(SAMPLE.read_text())
    real_pairs = {(sv["Stat"], sv["RawValue"]) for it in real for sv in it.get("StatValues") or []}
    assert t["stat_values"].height > 2 * len(real_pairs)
    real_crit = _distinct_criteria(real)
    assert t["criteria"].height > 2 * real_crit

    result = CliRunner().invoke(main, ["generate", "aodb", str(tmp_path / "c"), "--items", "50",
                                       "--ndjson", "--seed", "7", "--template", str(template)])
    assert result.exit_code == 0, result.output
    lines = (tmp_path / "c" / "items.ndjson").read_text().splitlines()
    assert len(lines) == 50
