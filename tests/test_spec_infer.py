"""etl.spec.infer on the real samples (read in place) and on hostile exports written to tmp_path."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from etl.spec import LevelSpec, SourceSpec, Spec, SpecError, infer
from etl.spec.infer import pg_name, snake

DATA = Path("/work/shared/data")
needs_data = pytest.mark.skipif(not (DATA / "mids").is_dir(), reason="shared sample data not present")


def _source_with(spec: Spec, level_path: str) -> SourceSpec:
    return next(s for s in spec.sources if any(lv.path == level_path for lv in s.levels))


def _level(src: SourceSpec, path: str) -> LevelSpec:
    return next(lv for lv in src.levels if lv.path == path)


def _col(lv: LevelSpec, *json_path: str):
    return next(c for c in lv.columns if c.json == list(json_path))


def _round_trip(spec: Spec) -> None:
    assert Spec.from_toml(spec.to_toml()) == spec


@needs_data
def test_mids_sources_levels_and_keys() -> None:
    spec = infer("mids", [DATA / "mids"])
    assert spec.skipped == []
    singles = sorted(s.patterns[0] for s in spec.sources if s.files == 1)
    assert singles == ["EnhDB.json", "I12.json", "Salvage.json"]
    powersets = _source_with(spec, "Powers[].Effects[]")
    assert powersets.files == 32 and powersets.kind == "object"
    assert sorted(powersets.patterns) == ["db/Other/*.json", "db/Player/*.json"]
    root, powers, effects = (_level(powersets, p) for p in ("", "Powers[]", "Powers[].Effects[]"))
    assert root.rows == 32 and powers.parent == "" and effects.parent == "Powers[]"
    assert powers.key.columns == ["full_name"] and not powers.key.surrogate
    assert _col(powers, "FullName").type == "text"
    assert _col(powers, "FullName").name == "full_name"
    assert _col(root, "nIDTrunkSet").name == "n_id_trunk_set"
    assert all(c.name == c.name.lower() and len(c.name.encode()) <= 63 for lv in powersets.levels
               for c in lv.columns)
    assert any(r.kind == "required" and r.inferred for r in powers.rules)
    assert any(r.kind == "one_of" and r.inferred and 0 < len(r.values) <= 12 for r in effects.rules)
    # the three root files are separate sources, each with its own levels
    assert _level(_source_with(spec, "Salvage[]"), "Salvage[]").rows == 108
    assert _level(_source_with(spec, "Enhancements[]"), "Enhancements[]").key.columns == ["uid"]
    _round_trip(spec)


@needs_data
def test_aodb_levels_and_the_broken_file_is_skipped_with_its_offset() -> None:
    spec = infer("aodb", [DATA / "aodb"])
    assert len(spec.skipped) == 1
    bad = spec.skipped[0]
    assert bad.file == "items_truncated_invalid.json" and bad.offset > 0
    with pytest.raises(SpecError, match=r"items_truncated_invalid\.json.*byte \d+"):
        infer("aodb", [DATA / "aodb"], strict=True)
    items = _source_with(spec, "StatValues[]")
    assert items.kind == "array" and items.patterns == ["items_100.json"]
    root = _level(items, "")
    assert root.rows == 100 and root.key.columns == ["aoid"]
    assert _level(items, "StatValues[]").rows > 100
    assert _level(items, "SpellData[].Items[]").parent == "SpellData[]"
    assert _col(root, "AOID").type == "bigint"
    _round_trip(spec)


@needs_data
def test_fl_licenses_ignores_pngs_and_flattens_nested_objects() -> None:
    spec = infer("fl", [DATA / "licenses" / "states_baseline" / "FL"])
    (src,) = spec.sources
    assert src.files == 10 and src.patterns == ["*.json"]
    root = _level(src, "")
    assert _col(root, "metadata", "pharmacy_name").name == "metadata_pharmacy_name"
    lic = _level(src, "search_result.licenses[]")
    assert lic.key.columns == ["license_number"]
    _round_trip(spec)


@needs_data
def test_mids_full_completes() -> None:
    start = time.perf_counter()
    spec = infer("mids_full", [DATA / "mids_full"])
    took = time.perf_counter() - start
    print(f"infer mids_full: {took:.2f} s")
    powersets = _source_with(spec, "Powers[].Effects[]")
    assert powersets.files > 3000
    assert {"", "Powers[]", "Powers[].Effects[]"} <= {lv.path for lv in powersets.levels}
    _round_trip(spec)


def _write(path: Path, doc: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))


def test_ragged_records_mixed_kinds_empty_lists_and_widening(tmp_path: Path) -> None:
    rows = [{"id": i, "n": i, "x": True, "tags": [], "kids": [], "bag": [1, 2]} for i in range(60)]
    rows[3]["n"] = 2.5  # int -> float
    rows[4]["x"] = 7  # bool and int -> jsonb
    rows[5]["extra"] = "only here"  # ragged
    del rows[6]["n"]
    rows[7]["kids"] = [{"k": 1}, {"k": 2}]
    rows[8]["kids"] = [{"k": 1}]
    rows[9]["big"] = 2**70  # beyond int64
    rows[10]["big"] = 5
    rows[11]["status"] = "a"
    _write(tmp_path / "items.json", rows)
    _write(tmp_path / "parts" / "a.json", {"pid": 1, "val": 1})
    _write(tmp_path / "parts" / "b.json", {"pid": 2, "val": {"deep": 1}})  # int in one file, object next
    spec = infer("hostile", [tmp_path])
    items = _source_with(spec, "kids[]")
    root = _level(items, "")
    assert _col(root, "n").type == "double precision" and _col(root, "n").nulls == 1
    assert _col(root, "x").type == "jsonb"  # bool and int: both kept as they are
    assert _col(root, "extra").nulls == 59
    assert _col(root, "big").type == "numeric"
    assert _col(root, "tags").type == "jsonb" and _col(root, "tags").note == "always an empty list"
    assert _col(root, "bag").type == "jsonb"
    assert root.key.columns == ["id"]
    kids = _level(items, "kids[]")
    assert kids.rows == 3 and kids.key.columns == ["k"] and kids.key.within_parent
    required = {r.column for r in root.rules if r.kind == "required"}
    assert "id" in required and "n" not in required
    one_of = {r.column: r.values for r in root.rules if r.kind == "one_of"}
    assert "x" not in one_of and "id" not in one_of and "extra" not in one_of  # bool+int; unique; rare
    parts = next(s for s in spec.sources if s.patterns == ["parts/*.json"])
    val = _col(_level(parts, ""), "val")
    assert val.type == "jsonb" and "object" in val.note
    assert not any(c.json[:1] == ["val"] and len(c.json) > 1 for c in _level(parts, "").columns)
    _round_trip(spec)


def test_deep_nesting_names_and_key_explosion(tmp_path: Path) -> None:
    deep: dict[str, object] = {"leaf": 1}
    for i in range(30):
        deep = {f"L{i}": deep, "list": [deep]} if i % 3 == 0 else {f"L{i}": deep}
    rec = {
        "ID": 1, "deep": deep,
        "First Name": "a", "first.name": "b", "FirstName": "c", "order": 1, "User": "u", "select": 2,
        "9lives": 1, "x" * 100: 1, "Ünïcode": 1,
        "by_id": {f"k{i}": {"v": i} for i in range(5000)},
    }
    _write(tmp_path / "one.json", [rec, {**rec, "ID": 2}])
    spec = infer("hostile", [tmp_path])
    root = _level(spec.sources[0], "")
    names = {tuple(c.json): c.name for c in root.columns}
    assert names[("First Name",)] == "first_name"
    assert names[("first.name",)] == "first_name_2"
    assert names[("FirstName",)] == "first_name_3"
    assert names[("order",)] == "order_" and names[("User",)] == "user_" and names[("select",)] == "select_"
    assert names[("9lives",)] == "_9lives"
    assert len(names[("x" * 100,)]) == 63
    assert len(set(names.values())) == len(names)
    by_id = _col(root, "by_id")
    assert by_id.type == "jsonb" and "distinct keys" in by_id.note
    assert any("by_id" in w and "jsonb" in w for w in spec.warnings)
    assert not any(c.json[0] == "by_id" and len(c.json) > 1 for c in root.columns)
    assert all(len(c.json) <= 3 for c in root.columns)
    assert any(c.type == "jsonb" and c.json[0] == "deep" for c in root.columns)
    assert max(lv.path.count("[]") for lv in spec.sources[0].levels) <= 5
    _round_trip(spec)


def test_ndjson_and_no_files(tmp_path: Path) -> None:
    lines = [json.dumps({"a": i, "b": "x"}) for i in range(5000)]
    (tmp_path / "recs.ndjson").write_text("\n".join(lines) + "\n")
    spec = infer("nd", [tmp_path / "recs.ndjson"])
    (src,) = spec.sources
    assert src.kind == "ndjson" and src.levels[0].rows == 5000 and src.levels[0].key.columns == ["a"]
    with pytest.raises(SpecError):
        infer("none", [tmp_path / "missing"])


def test_snake_and_pg_name() -> None:
    assert snake("PowerSetID") == "power_set_id" and snake("nID") == "n_id" and snake("EnhDB") == "enh_db"
    taken: set[str] = set()
    assert [pg_name([k], taken) for k in ("Table", "table", "TABLE")] == ["table_", "table__2", "table__3"]


def test_reads_the_files_staging_reads(tmp_path: Path) -> None:
    """The same files as ``etl stage``: gzipped JSON and NDJSON are read, hidden files and folders
    (an editor's backup, .git) are not."""
    import gzip

    (tmp_path / "a.ndjson.gz").write_bytes(gzip.compress(b'{"id": 1}\n{"id": 2}\n'))
    (tmp_path / "b.json.gz").write_bytes(gzip.compress(json.dumps([{"id": 3}, {"id": 4}]).encode()))
    (tmp_path / ".c.json").write_text('{"hidden": true}')
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "d.json").write_text('{"hidden": true}')
    spec = infer("gz", [tmp_path])
    assert not spec.skipped
    kinds = sorted((s.kind, s.files, s.levels[0].rows) for s in spec.sources)
    assert kinds == [("array", 1, 2), ("ndjson", 1, 2)]
    assert all("hidden" not in c.json for s in spec.sources for lv in s.levels for c in lv.columns)


def test_a_json_file_holding_ndjson_is_read_as_ndjson(tmp_path: Path) -> None:
    (tmp_path / "lines.json").write_text('{"a": 1, "b": [{"c": 1}]}\n{"a": 2, "b": []}\n')
    (tmp_path / "broken.json").write_text('{"a": 1}\n{"a": ')
    spec = infer("lines", [tmp_path])
    (src,) = spec.sources
    assert (src.kind, src.patterns, [lv.rows for lv in src.levels]) == ("ndjson", ["lines.json"], [2, 1])
    assert [(s.file, s.offset) for s in spec.skipped] == [("broken.json", 9)]


def _one_object_files(folder: Path, records: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, rec in enumerate(records):
        (folder / f"rec_{i:05d}.json").write_text(json.dumps(rec))


def test_ragged_records_stay_one_source_with_the_common_keys_typed(tmp_path: Path) -> None:
    """Every file has the same 120 keys and 30 of 1,000 rare ones: the source's keys grow with
    every file, so a Jaccard with them falls; the records are still one source, whose table types
    the keys most records have (at most MAX_COLUMNS) and leaves the rest to extra, as expected
    keys (an open level: not drift)."""
    import random

    from etl.spec.infer import MAX_COLUMNS

    rng = random.Random(7)
    rare = [f"Rare{i}" for i in range(1000)]
    _one_object_files(tmp_path / "recs", [
        {"ID": i, **{f"Common{j}": j for j in range(120)}, **dict.fromkeys(rng.sample(rare, 30), 1),
         "Parts": [{"N": n} for n in range(i % 3)]}
        for i in range(600)])
    (tmp_path / "index.json").write_text(json.dumps({"exported": "2026-11-29", "files": 600}))
    spec = infer("ragged", [tmp_path])
    assert sorted((s.name, s.files) for s in spec.sources) == [("index", 1), ("recs", 600)]
    recs = _level(spec.source("recs"), "")
    assert recs.open and len(recs.columns) == MAX_COLUMNS
    typed = {tuple(c.json) for c in recs.columns}
    assert {("ID",), *((f"Common{j}",) for j in range(120))} <= typed
    assert recs.key.columns == ["id"]
    assert _level(spec.source("recs"), "Parts[]").rows == sum(i % 3 for i in range(600))
    assert not _level(spec.source("index"), "").open
    _round_trip(spec)


def test_a_folder_of_records_whose_keys_are_data_is_one_source(tmp_path: Path) -> None:
    """Records drawing 20 of 5,000 keys each share only "id": file by file they look like 400
    kinds of file; a folder that splits into more than MAX_SHAPES sources is one source."""
    import random

    rng = random.Random(3)
    keys = [f"k{i}" for i in range(5000)]
    _one_object_files(tmp_path / "recs", [
        {"id": i, **{k: rng.randint(0, 9) for k in rng.sample(keys, 20)}} for i in range(400)])
    (tmp_path / "index.json").write_text(json.dumps({"exported": "x"}))
    spec = infer("keys_are_data", [tmp_path])
    assert sorted((s.name, s.files) for s in spec.sources) == [("index", 1), ("recs", 400)]
    recs = _level(spec.source("recs"), "")
    assert recs.rows == 400 and recs.open and recs.key.columns == ["id"]
    assert any("400 different sets of keys" in w for w in spec.warnings)


def test_sources_split_while_streaming_merge_with_their_profiles(tmp_path: Path) -> None:
    """Files alike only once all are seen are merged: rows, nulls, widened types, child levels and
    key candidates (unique across both parts) all come out as one pass over one source would."""
    recs = [{"a": 1, "b": 2}, {"c": 3, "d": 4}] + [
        {"id": i, "a": i, "b": float(i), "c": i, "d": "x", "kids": [{"k": 1}]} for i in range(10)]
    _one_object_files(tmp_path / "recs", recs)
    spec = infer("merged", [tmp_path])
    (src,) = spec.sources
    root = _level(src, "")
    assert src.files == 12 and root.rows == 12
    assert _col(root, "b").type == "double precision" and _col(root, "d").type == "text"
    assert _col(root, "a").nulls == 1 and _col(root, "id").nulls == 2
    assert _level(src, "kids[]").rows == 10


def test_a_large_array_file_is_read_an_element_at_a_time(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A top-level array past STREAM_ARRAY_BYTES is read by DuckDB's streaming reader, a batch of
    elements at a time, never parsed whole (a 533 MB aodb array held 4.1 GB as Python objects;
    streamed, 379 MB): the spec is the one a whole parse gives, and a broken array is skipped
    with the reason, not a crash."""
    import gzip
    import sys

    inf = sys.modules["etl.spec.infer"]  # the module (etl.spec.infer the name is the function)

    items = [{"id": i, "name": f"item {i}", "ql": i % 300,
              "stats": [{"k": j, "v": i * j} for j in range(i % 4)],
              **({"rare": {"x": i}} if i % 97 == 0 else {})} for i in range(5000)]
    (tmp_path / "export").mkdir()
    _write(tmp_path / "export" / "items.json", items)
    with gzip.open(tmp_path / "export" / "more.json.gz", "wt") as fh:
        json.dump(items[:50], fh)
    whole = infer("items", [tmp_path / "export"]).to_toml()

    monkeypatch.setattr(inf, "STREAM_ARRAY_BYTES", 0)
    parse = inf._parse

    def no_whole_arrays(path: Path) -> object:
        doc = parse(path)
        assert not isinstance(doc, list), f"{path} was parsed whole"
        return doc

    monkeypatch.setattr(inf, "_parse", no_whole_arrays)
    assert infer("items", [tmp_path / "export"]).to_toml() == whole

    (tmp_path / "export" / "broken.json").write_text('[{"id": 1}, {"id": 2,')
    spec = infer("items", [tmp_path / "export"])
    assert [s.file for s in spec.skipped] == ["broken.json"]
