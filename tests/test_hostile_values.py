"""What validate passes, load accepts: hostile values through stage → validate → transform → load.

A small mids export (the synthetic generator, trimmed) and the real aodb sample get, from a
seeded generator, values PostgreSQL or the staged types cannot take, at random keys of random
records of every level: NUL in text, integers of 2^31 and 2^63, floats of 1e308 and 1e400,
"NaN" and "Infinity" where numbers are declared (and as bare NaN/Infinity tokens, which DuckDB's
JSON reader takes), huge strings, unicode escapes, wrong JSON types, empty names, numbers beyond
jsonb's range. Then, on the real PostgreSQL (a database per test):

* the load never fails (no COPY error): whatever PostgreSQL would refuse was decided before it;
* every row validation accepted is loaded: its lineage is in its home table, and the database
  holds exactly the transformed rows (keys and counts);
* every row it rejected is in ``rejects/`` with its rules and reasons, and is not loaded.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import orjson
import polars as pl
import psycopg
import pytest

from etl import Settings, get_dataset
from etl.dataset import Dataset
from etl.datasets import dataset_of
from etl.datasets.mids.gen import generate_mids
from etl.errors import InputError
from etl.load import load
from etl.run import Run
from etl.stage import stage
from etl.transform import transform
from etl.validate import validate
from tests.conftest import SHARED, require_shared

MIDS = get_dataset("mids")


class Raw(str):
    """JSON text written as it is (numbers Python's json cannot write: 1e400, 2^63 as a token)."""


def dumps(value: Any) -> str:
    """Compact JSON with :class:`Raw` parts written verbatim and non-ASCII text as it is."""
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, dict):
        return "{" + ",".join(json.dumps(k) + ":" + dumps(v) for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(dumps(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


TEXTS: list[Any] = [
    "a\x00b", "\x00", "\x00\x00lead and trail\x00", "", "   ", "NaN", "Infinity", "-Infinity",
    "1e400", "9223372036854775808", "null", "true", "[1, 2]", '{"a": 1}', "\\u0000 as text",
    "ünïcødé ✓ 😀 \u2028\u2029 \ufeff", Raw('"escaped pair \\ud83d\\ude00 and \\u00e9"'),
    Raw('"escaped nul \\u0000 inside"'), "\t\n\r\x01\x1f control", "x" * 100_000,
]
NUMBERS: list[Any] = [Raw(t) for t in (
    "2147483647", "2147483648", "-2147483649", "9223372036854775807", "9223372036854775808",
    "-9223372036854775809", "18446744073709551616", "123456789012345678901234567890",
    "1e308", "1e400", "-1e400", "1e-400", "1E+2", "-0.0", "1.5", "-1", "0",
    "1e131072", "1e-20000", "NaN", "-Infinity", "inf")]  # (DuckDB reads the last three; not JSON)
OTHERS: list[Any] = [
    True, False, None, {}, [], [1, "x", None], [["a\x00", None], []], [Raw("1e400")],
    {"a": [1, "\x00"], "big": Raw("1e999999"), "tiny": Raw("1e-99999")},
    {"nested": {"deeper": ["\x00", Raw("9223372036854775808")]}},
]
POOLS = (TEXTS, NUMBERS, OTHERS)


def hostile(rng: random.Random) -> Any:
    return rng.choice(rng.choice(POOLS))


def mutate(rng: random.Random, record: dict[str, Any], declared: list[str], rate: float) -> None:
    """Give ``record`` hostile values: at declared keys (staged columns), at its other keys
    (kept in ``extra``) and at new keys."""
    if rng.random() > rate:
        return
    for _ in range(rng.randint(1, 3)):
        roll = rng.random()
        if roll < 0.6 and declared:
            key = rng.choice(declared)
        elif roll < 0.9 and record:
            key = rng.choice(list(record))
        else:
            key = f"Hostile_{rng.randrange(1000)}"
        record[key] = hostile(rng)


def _keys(level: str, dataset: Dataset = MIDS) -> list[str]:
    """The top-level JSON keys ``level``'s fields read (dotted keys: their first part)."""
    return sorted({f.key.split(".")[0] for f in dataset.levels[level].fields if f.key != "*"})


def _mutate_list(rng: random.Random, holder: Any, key: str, level: str, rate: float,
                 dataset: Dataset = MIDS) -> list[Any]:
    items = holder.get(key) if isinstance(holder, dict) else None
    if not isinstance(items, list):
        return []
    for item in items:
        if isinstance(item, dict):
            mutate(rng, item, _keys(level, dataset), rate)
    return [i for i in items if isinstance(i, dict)]


def hostile_mids(out: Path, seed: int, *, powersets: int = 5, rate: float = 0.35) -> Path:
    """A small mids export (synthetic, trimmed) with hostile values in every level."""
    generate_mids(out, powersets=powersets, seed=seed)
    rng = random.Random(seed)
    header = orjson.loads((out / "I12.json").read_bytes())
    header["Archetypes"] = header["Archetypes"][:6]
    _mutate_list(rng, header, "Archetypes", "archetypes", rate)
    (out / "I12.json").write_text(dumps(header))

    enh = orjson.loads((out / "EnhDB.json").read_bytes())
    enh["EnhancementSets"] = enh["EnhancementSets"][:6]
    enh["Enhancements"] = [e for e in enh["Enhancements"] if e["nIDSet"] < 6]
    _mutate_list(rng, enh, "Enhancements", "enhancements", rate)
    for s in _mutate_list(rng, enh, "EnhancementSets", "enhancement_sets", rate):
        _mutate_list(rng, s, "Bonus", "set_bonuses", rate)
        _mutate_list(rng, s, "SpecialBonus", "set_special_bonuses", rate)
    (out / "EnhDB.json").write_text(dumps(enh))

    salvage = orjson.loads((out / "Salvage.json").read_bytes())
    salvage["Salvage"] = salvage["Salvage"][:12]
    _mutate_list(rng, salvage, "Salvage", "salvage", rate)
    (out / "Salvage.json").write_text(dumps(salvage))

    for path in sorted((out / "db").rglob("*.json")):
        ps = orjson.loads(path.read_bytes())
        mutate(rng, ps, _keys("powersets"), rate)
        for power in _mutate_list(rng, ps, "Powers", "powers", rate):
            _mutate_list(rng, power, "Effects", "power_effects", rate / 3)
        path.write_text(dumps(ps))
    return out


AODB = get_dataset("aodb")
SHOP_HASH = {"Items": [{"Hash": {"Text": "AAAA"}, "MinLevel": 1, "MaxLevel": Raw("2147483648"),
                        "BaseAmount": 3, "RegenAmount": Raw("1e400"), "SpawnChance": 50}]}


def hostile_aodb(sample: Path, out: Path, seed: int, *, rate: float = 0.3) -> Path:
    """The real 100-item sample (read in place) with hostile values in every level, written
    to ``out``: items, stat values, attack/defense, actions and their criteria, spell data,
    spells (their parameters land in jsonb) and their criteria, shop hashes."""
    rng = random.Random(seed)
    items = orjson.loads(sample.read_bytes())
    for item in items:
        mutate(rng, item, _keys("items", AODB), rate)
        if rng.random() < 0.1:
            item["ShopHashData"] = rng.choice([SHOP_HASH, {"Items": [{"MinLevel": 5, "Hash": "B\x00"}]}])
        _mutate_list(rng, item, "StatValues", "stat_values", rate / 4, AODB)
        add = item.get("AttackDefenseData")
        _mutate_list(rng, add, "Attack", "attacks", rate, AODB)
        _mutate_list(rng, add, "Defense", "defenses", rate, AODB)
        for action in _mutate_list(rng, item.get("ActionData"), "Actions", "actions", rate, AODB):
            _mutate_list(rng, action, "Criteria", "action_criteria", rate / 2, AODB)
        for data in _mutate_list(rng, item, "SpellData", "spell_data", rate, AODB):
            for spell in _mutate_list(rng, data, "Items", "spells", rate, AODB):
                _mutate_list(rng, spell, "Criteria", "spell_criteria", rate / 2, AODB)
                if rng.random() < rate:
                    spell[rng.choice(["Amount", "Stat", "Hostile"])] = hostile(rng)
    path = out / "items.json"
    out.mkdir(parents=True, exist_ok=True)
    path.write_text("[" + ",\n".join(dumps(i) for i in items) + "]")
    return path


# ------------------------------------------------------------------------------ checks

LINEAGE = ["_file", "_record", "_path"]


def _lineage(df: pl.DataFrame) -> set[tuple[str, int, str]]:
    return set(df.select(LINEAGE).iter_rows())  # type: ignore[arg-type]


def _db_keys(pg_url: str, schema: str, table: str, key: list[str]) -> list[tuple[Any, ...]]:
    cols = ", ".join(f'"{c}"' for c in key)
    with psycopg.connect(pg_url) as conn:
        return sorted(conn.execute(f'SELECT {cols} FROM "{schema}"."{table}"').fetchall())


def assert_accepted_loaded_rejected_kept(run: Run, dataset: Dataset, pg_url: str) -> dict[str, int]:
    """The contract, level by level and table by table. Returns rejected rows per level."""
    report = run.report()
    assert report is not None
    rejected_counts = {}
    for name, level in dataset.levels.items():
        raw = run.raw(name).collect()
        rejects = run.rejects(name)
        rejected = rejects.collect() if rejects is not None else pl.DataFrame(schema=raw.schema)
        accepted = run.accepted(name, dataset).collect()
        rejected_counts[name] = rejected.height
        assert rejected.height == report["levels"][name]["rejected"]
        # Each staged row is accepted or rejected, never both, never lost.
        assert accepted.height + rejected.height == raw.height
        assert _lineage(accepted) | _lineage(rejected) == _lineage(raw)
        assert not _lineage(accepted) & _lineage(rejected)
        if rejected.height:
            # Every rejected row says which rule(s) it broke and why.
            assert rejected.select(pl.col("_rules").list.len().min()).item() >= 1
            assert rejected.select(pl.col("_reasons").list.len().min()).item() >= 1
            failing = {r["name"] for r in report["rules"] if r["failed"] and r["severity"] == "error"}
            assert set(rejected.get_column("_rules").explode().unique().to_list()) <= failing
        if level.table is not None and set(LINEAGE) <= set(run.table(level.table, lineage=True)
                                                           .collect_schema()):
            home = run.table(level.table, lineage=True).select(LINEAGE).collect()
            # Every accepted row reached its home table; no rejected row did.
            assert _lineage(accepted) <= _lineage(home), name
            assert not _lineage(rejected) & _lineage(home), name
    for table in dataset.tables:
        key = list(table.primary_key)
        staged = sorted(run.table(table.name).select(key).collect().iter_rows())
        # The database holds exactly the transformed rows.
        assert _db_keys(pg_url, dataset.name, table.name, key) == staged, table.name
    return rejected_counts


def _pipeline(export: Path, staging: Path, pg_url: str, dataset: Dataset = MIDS) -> Run:
    staged = stage(dataset, [export], settings=Settings(staging_dir=staging))
    checked = validate(staged.run, dataset, max_reject_ratio=1.0)
    assert checked.passed
    run = transform(checked.run, dataset).run
    load(run, dataset_of(run), database_url=pg_url)  # the contract: this never fails on the data
    return run


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_hostile_values_are_rejected_or_loaded_never_refused_at_copy(
        seed: int, tmp_path: Path, pg_url: str) -> None:
    export = hostile_mids(tmp_path / "export", seed)
    run = _pipeline(export, tmp_path / "staging", pg_url)
    rejected = assert_accepted_loaded_rejected_kept(run, MIDS, pg_url)
    report = run.report()
    assert report is not None
    # The generator is hostile enough to matter: rows were rejected, and NULs were stripped.
    assert sum(rejected.values()) > 0
    nul = sum(c["changed"] for c in report["cleaning"] if c["name"] == "strip_nul")
    assert nul > 0
    with psycopg.connect(pg_url) as conn:
        loaded = conn.execute("SELECT count(*) FROM mids.powers").fetchone()
    assert loaded is not None and loaded[0] == run.table("powers").select(pl.len()).collect().item()


@pytest.mark.parametrize("seed", [1, 2])
def test_hostile_aodb_values_are_rejected_or_loaded(seed: int, tmp_path: Path, pg_url: str) -> None:
    sample = require_shared(SHARED / "aodb" / "items_100.json")
    export = hostile_aodb(sample, tmp_path / "export", seed)
    run = _pipeline(export, tmp_path / "staging", pg_url, AODB)
    rejected = assert_accepted_loaded_rejected_kept(run, AODB, pg_url)
    assert sum(rejected.values()) > 0
    report = run.report()
    assert report is not None
    failed = {r["name"] for r in report["rules"] if r["failed"]}
    # jsonb's limits (spell parameters beyond numeric's range) were met before the database.
    assert "spells.params.storable" in failed


def test_storable_rules_reject_what_postgresql_refuses(tmp_path: Path, pg_url: str) -> None:
    """One record per hazard, each named by its rule and reason in rejects/."""
    export = tmp_path / "export"
    generate_mids(export, powersets=2, seed=7)
    first, second = sorted((export / "db").rglob("*.json"))[:2]
    ps = orjson.loads(first.read_bytes())
    ps["SetName"] = None                        # NOT NULL column: powersets.set_name
    first.write_text(dumps(ps))
    ps = orjson.loads(second.read_bytes())
    ps["Powers"][0]["DescLong"] = "before\x00after"  # NUL: cleaned, then loaded
    second.write_text(dumps(ps))
    enh = orjson.loads((export / "EnhDB.json").read_bytes())
    enh["Enhancements"][0]["Name"] = None       # NOT NULL column: enhancements.name
    (export / "EnhDB.json").write_text(dumps(enh))
    run = _pipeline(export, tmp_path / "staging", pg_url)
    assert_accepted_loaded_rejected_kept(run, MIDS, pg_url)
    sets = run.rejects("powersets")
    assert sets is not None
    row = sets.collect().row(0, named=True)
    assert "powersets.set_name.storable" in row["_rules"]
    assert any("powersets.set_name (text NOT NULL)" in r for r in row["_reasons"])
    enhs = run.rejects("enhancements")
    assert enhs is not None and "enhancements.name.storable" in enhs.collect().row(0, named=True)["_rules"]
    with psycopg.connect(pg_url) as conn:
        text = conn.execute("SELECT desc_long, extra->>'DescLong' FROM mids.powers "
                            "WHERE desc_long LIKE 'before%'").fetchone()
        # extra holds the original without its NUL too, so PostgreSQL's json operators run over
        # the whole table (one \u0000 in any row's extra would stop them)
        keys = conn.execute("SELECT count(DISTINCT k) FROM mids.powers, json_object_keys(extra) k"
                            ).fetchone()
    assert text == ("beforeafter", "beforeafter")
    assert keys is not None and keys[0] > 0


def test_a_lone_surrogate_is_refused_at_staging_naming_the_file(tmp_path: Path) -> None:
    """Text that is not Unicode (a lone UTF-16 surrogate escape) never reaches validation:
    the JSON reader refuses the file, and the error names it."""
    export = tmp_path / "export"
    generate_mids(export, powersets=1, seed=3)
    path = sorted((export / "db").rglob("*.json"))[0]
    ps = orjson.loads(path.read_bytes())
    ps["Description"] = Raw('"lone \\ud800 surrogate"')
    path.write_text(dumps(ps))
    with pytest.raises(InputError) as err:
        stage(MIDS, [export], settings=Settings(staging_dir=tmp_path / "staging"))
    assert path.name in str(err.value)
    # the reason says what is wrong and where, not "no error found"
    assert "lone UTF-16 surrogate" in err.value.message and "\\ud800" in err.value.message
    assert err.value.offset == path.read_bytes().index(b"\\ud800")
    assert err.value.record == 0


def test_extra_is_screened_natively_and_only_true_refusals_reject(tmp_path: Path, pg_url: str) -> None:
    """`<level>.extra.storable` flags suspects with a native test (NaN and Infinity look-alikes;
    for jsonb also long texts, big exponents, \\u0000) and parses only those again: a suspect the
    column takes is loaded, a NaN token in an untyped key is rejected, and the load accepts
    everything validate accepted."""
    export = tmp_path / "export"
    generate_mids(export, powersets=2, seed=9)
    files = sorted((export / "db").rglob("*.json"),
                   key=lambda p: -len(orjson.loads(p.read_bytes())["Powers"]))  # the most powers first
    ps = orjson.loads(files[0].read_bytes())
    ps["Powers"][0]["LongNote"] = "x" * 40_000                    # suspect by length: valid
    ps["Powers"][1]["VersionNote"] = "ratio: infinite,nan-free"  # looks like NaN/Infinity: valid
    ps["Powers"][2]["Odd"] = Raw("NaN")                          # jsonb refuses NaN
    files[0].write_text(dumps(ps))
    run = _pipeline(export, tmp_path / "staging", pg_url)
    assert_accepted_loaded_rejected_kept(run, MIDS, pg_url)
    rejects = run.rejects("powers")
    assert rejects is not None
    rejected = rejects.collect()
    assert rejected.height == 1 and "powers.extra.storable" in rejected.row(0, named=True)["_rules"]
    with psycopg.connect(pg_url) as conn:
        kept = conn.execute("SELECT count(*) FROM mids.powers WHERE extra::jsonb ? 'LongNote' "
                            "OR extra::jsonb ? 'VersionNote'").fetchone()
    assert kept == (2,)
