"""Staging's record parsing: one ``from_json`` per record, levels unnested from it.

A small dataset of its own (nested levels, dotted keys and paths, every field type) is staged
from hand-written records, so each edge case is visible in the input next to what it gives.
Text fields are checked against DuckDB's ``json_extract_string`` on the source record, which is
what staging gave when it extracted every level with JSON paths.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pytest

from etl import Settings, get_dataset
from etl.dataset import Dataset, Field, Level, Source
from etl.datasets.mids.gen import generate_mids
from etl.errors import ConfigError, InputError
from etl.run import Run, level_schema
from etl.stage import stage
from etl.stage.sql import source_plan, source_structure

ITEMS = Level("items", fields=(
    Field("name", "Name"),
    Field("count", "Count", "INTEGER"),
    Field("big", "Big", "BIGINT"),
    Field("ratio", "Ratio", "DOUBLE"),
    Field("flag", "Flag", "BOOLEAN"),
    Field("tags", "Tags", "VARCHAR[]"),
    Field("ids", "Ids", "BIGINT[]"),
    Field("grid", "Grid", "VARCHAR[][]"),
    Field("extra", "Extra", "JSON"),
    Field("owner", "Meta.Owner.Name"),
    Field("owner_level", "Meta.Owner.Level", "INTEGER"),
    Field("owner_classes", "Meta.Classes", "VARCHAR[]"),
))
PARTS = Level("parts", path="Parts", parent="items", inherit=(("name", "item_name"), ("count", "item_count")),
              fields=(Field("label", "Label"), Field("weight", "Weight", "DOUBLE")))
BITS = Level("bits", path="Inner.Bits", parent="parts", inherit=(("label", "part_label"),),
             fields=(Field("value", "Value", "INTEGER"),))
#: A second root level, at a dotted path inside each record.
NOTES = Level("notes", path="Doc.Notes", fields=(Field("text", "Text"), Field("n", "N", "INTEGER")))

DATASET = Dataset(
    name="stagetest", version="1", description="staging edge cases",
    sources=(Source("things", ("*.json", "*.ndjson"), (ITEMS, PARTS, BITS, NOTES)),),
    transform=lambda frames: {}, tables=(),
)


def _stage(tmp_path: Path, records: list[Any], *, ndjson: bool = True) -> Run:
    return _stage_with(tmp_path, DATASET, records, ndjson=ndjson)


def _rows(run: Run, level: str) -> list[dict[str, Any]]:
    return run.raw(level).sort("_file", "_record", "_path").collect().to_dicts()


def test_schema_and_lineage(tmp_path: Path) -> None:
    records = [
        {"Name": "a", "Count": 3, "Parts": [
            {"Label": "p0", "Inner": {"Bits": [{"Value": 1}, {"Value": 2}]}},
            {"Label": "p1", "Inner": {"Bits": []}},
        ], "Doc": {"Notes": [{"Text": "n0", "N": 7}]}},
        {"Name": "b", "Parts": [{"Label": "q0", "Inner": {"Bits": [{"Value": 9}]}}]},
    ]
    run = _stage(tmp_path, records)
    for lvl in DATASET.levels.values():
        assert run.raw(lvl.name).collect_schema() == level_schema(lvl, DATASET.levels)
    items = _rows(run, "items")
    assert [(r["_record"], r["_path"], r["_index"]) for r in items] == [(0, "", None), (1, "", None)]
    parts = _rows(run, "parts")
    assert [(r["_record"], r["_path"], r["_index"], r["item_name"], r["item_count"]) for r in parts] == [
        (0, "Parts[0]", 0, "a", 3), (0, "Parts[1]", 1, "a", 3), (1, "Parts[0]", 0, "b", None)]
    bits = _rows(run, "bits")
    assert [(r["_record"], r["_path"], r["_index"], r["part_label"], r["value"]) for r in bits] == [
        (0, "Parts[0].Inner.Bits[0]", 0, "p0", 1), (0, "Parts[0].Inner.Bits[1]", 1, "p0", 2),
        (1, "Parts[0].Inner.Bits[0]", 0, "q0", 9)]
    notes = _rows(run, "notes")
    assert [(r["_record"], r["_path"], r["_index"], r["text"], r["n"]) for r in notes] == [
        (0, "Doc.Notes[0]", 0, "n0", 7)]
    # Inherited columns are typed like the parent's field.
    assert run.raw("parts").collect_schema()["item_count"] == pl.Int32()


@pytest.mark.parametrize("ndjson", [True, False], ids=["ndjson", "object-files"])
def test_missing_null_and_odd_lists(tmp_path: Path, ndjson: bool) -> None:
    """Missing, null, empty or non-list child arrays give no rows; elements that are not objects
    give a row of NULLs (from_json cannot tell them from ``{}``)."""
    records = [
        {"Name": "missing"},
        {"Name": "null", "Parts": None},
        {"Name": "empty", "Parts": []},
        {"Name": "object", "Parts": {"Label": "x"}},
        {"Name": "string", "Parts": "x"},
        {"Name": "odd", "Parts": [1, None, "s", [1], {"Label": "ok", "Inner": None}, {}]},
        {"Name": "odd bits", "Parts": [{"Label": "b", "Inner": {"Bits": [True, {"Value": "7"}]}}]},
    ]
    run = _stage(tmp_path, records, ndjson=ndjson)
    assert len(_rows(run, "items")) == 7
    parts = _rows(run, "parts")
    assert [(r["item_name"], r["_path"], r["label"], r["_type_errors"]) for r in parts] == [
        ("odd", "Parts[0]", None, []), ("odd", "Parts[1]", None, []), ("odd", "Parts[2]", None, []),
        ("odd", "Parts[3]", None, []), ("odd", "Parts[4]", "ok", []), ("odd", "Parts[5]", None, []),
        ("odd bits", "Parts[0]", "b", []),
    ]
    bits = _rows(run, "bits")
    assert [(r["_path"], r["value"], r["_type_errors"]) for r in bits] == [
        ("Parts[0].Inner.Bits[0]", None, []), ("Parts[0].Inner.Bits[1]", 7, [])]


def test_null_and_missing_values(tmp_path: Path) -> None:
    """A JSON null and a missing key are NULL for every type (never the text 'null'), and are
    not type errors; empty arrays stay empty arrays."""
    records = [
        {"Name": None, "Count": None, "Big": None, "Ratio": None, "Flag": None, "Tags": None,
         "Ids": None, "Grid": None, "Extra": None, "Meta": {"Owner": None, "Classes": None}},
        {},
        {"Meta": None},
        {"Meta": "not an object"},
        {"Tags": [], "Ids": [], "Grid": [], "Meta": {"Owner": {"Name": None}, "Classes": []}},
    ]
    run = _stage(tmp_path, records)
    rows = _rows(run, "items")
    fields = [f.name for f in ITEMS.fields]
    for r in rows[:4]:
        assert {k: r[k] for k in fields} == dict.fromkeys(fields), r
        assert r["_type_errors"] == []
    last = rows[4]
    assert (last["tags"], last["ids"], last["grid"], last["owner_classes"]) == ([], [], [], [])
    assert last["owner"] is None and last["_type_errors"] == []


def test_numbers_in_typed_fields(tmp_path: Path) -> None:
    """Integers take whole numbers however written; anything else is NULL and a type error."""
    cases: list[tuple[Any, int | None]] = [
        (12, 12), (12.0, 12), (1e3, 1000), ("12", 12), (-0.0, 0), (12.5, None), (1e-7, None),
        (3e9, None),  # over INTEGER
        ("abc", None), (True, None), ([1], None), ({"a": 1}, None),
    ]
    records = [{"Count": v, "Big": v} for v, _ in cases]
    records += [{"Big": 1e16}, {"Big": 9007199254740993}, {"Big": 1e20}, {"Big": 2**63}]
    run = _stage(tmp_path, records)
    rows = _rows(run, "items")
    for (value, want), r in zip(cases, rows, strict=False):
        assert r["count"] == want, (value, r["count"])
        assert ("count" in r["_type_errors"]) == (want is None), (value, r["_type_errors"])
    assert [r["big"] for r in rows[len(cases) - 5:len(cases)]] == [3_000_000_000, None, None, None, None]
    assert [r["big"] for r in rows[len(cases):]] == [10**16, 9007199254740993, None, None]
    assert [r["_type_errors"] for r in rows[len(cases):]] == [[], [], ["big"], ["big"]]


def test_other_types(tmp_path: Path) -> None:
    records = [
        {"Ratio": 1e-7, "Flag": True, "Tags": ["a", 1, None], "Ids": [1, 2.0, 3],
         "Grid": [["a"], []], "Extra": {"k": [1, "x"]}},
        {"Ratio": "2.5", "Flag": "false", "Tags": "[\"a\"]", "Ids": [1, "x"], "Grid": 5, "Extra": 5},
        {"Ratio": "x", "Flag": 1, "Tags": {"a": 1}, "Ids": "1", "Extra": "s"},
    ]
    rows = _rows(_stage(tmp_path, records), "items")
    got = [{k: r[k] for k in ("ratio", "flag", "tags", "ids", "grid", "extra", "_type_errors")}
           for r in rows]
    assert got == [
        {"ratio": 1e-7, "flag": True, "tags": ["a", "1", None], "ids": [1, 2, 3],
         "grid": [["a"], []], "extra": '{"k":[1,"x"]}', "_type_errors": []},
        # An array field holding a string is a type error, even if the string reads as an array.
        {"ratio": 2.5, "flag": False, "tags": None, "ids": [1, None], "grid": None, "extra": "5",
         "_type_errors": ["tags", "grid"]},
        {"ratio": None, "flag": None, "tags": None, "ids": None, "grid": None, "extra": '"s"',
         "_type_errors": ["ratio", "flag", "tags", "ids"]},
    ]


def test_text_fields_match_json_extract_string(tmp_path: Path) -> None:
    """Text fields hold what DuckDB's json_extract_string gives for the same key, for every
    scalar (numbers keep the export's spelling, e.g. 1e-7 stays 1e-7); an array or an object is
    no text: NULL and a type error (a level with a home table keeps it whole in _extra)."""
    values = ["plain", "é\n\t\"q\"\\ \u2603", "", 12, 12.0, 1e-7, 1e16, 1.5e300, -0.0,
              123456789012345678901234, True, False, [1, "a", None], {"b": {"c": [1]}}, None]
    records = [{"Name": v, "Meta": {"Owner": {"Name": v}}} for v in values]
    rows = _rows(_stage(tmp_path, records), "items")
    con = duckdb.connect()
    for value, r in zip(values, rows, strict=True):
        if isinstance(value, list | dict):
            assert r["name"] is None and r["owner"] is None, (value, r["name"])
            assert {"name", "owner"} <= set(r["_type_errors"])
            continue
        text = json.dumps({"Name": value})
        want = con.execute("SELECT json_extract_string(?, '$.Name')", [text]).fetchall()[0][0]
        assert r["name"] == want and r["owner"] == want, (value, r["name"], want)
        assert "name" not in (r["_type_errors"] or [])
    con.close()


def test_structure_merges_levels() -> None:
    record, where = source_structure(DATASET.sources[0].levels)
    assert record["Meta"] == {"Owner": {"Name": "JSON", "Level": "VARCHAR"}, "Classes": "JSON"}
    assert record["Parts"] == [{"Label": "JSON", "Weight": "VARCHAR",
                                "Inner": {"Bits": [{"Value": "VARCHAR"}]}}]
    assert record["Doc"] == {"Notes": [{"Text": "JSON", "N": "VARCHAR"}]}
    assert where["bits"] == {"Value": "VARCHAR"}
    # Two levels may read the same list, and a text and a JSON field the same key.
    a = Level("a", fields=(Field("x", "X"), Field("x_json", "X", "JSON"), Field("y", "Y", "INTEGER")))
    b = Level("b", path="L", parent="a", fields=(Field("p", "P"),))
    c = Level("c", path="L", parent="a", fields=(Field("q", "Q", "DOUBLE"),))
    record, _ = source_structure((a, b, c))
    assert record == {"X": "JSON", "Y": "VARCHAR", "L": [{"P": "JSON", "Q": "VARCHAR"}]}


@pytest.mark.parametrize("levels, message", [
    ((Level("a", fields=(Field("p", "Parts"),)),
      Level("b", path="Parts", parent="a", fields=(Field("x", "X"),))),
     "'Parts' as a list of records"),
    ((Level("a", fields=(Field("r", "Requires"), Field("rc", "Requires.Class"))),),
     "'Requires' as a value"),
    ((Level("a", fields=(Field("rc", "Requires.Class"),)),
      Level("b", path="Requires", parent="a", fields=(Field("x", "X"),))),
     "'Requires' to be an object, .* as a list of records"),
    ((Level("a", fields=(Field("x", "X"),)),
      Level("b", path="X.Y", parent="a", fields=(Field("y", "Y"),))),
     "'X' as a value"),
    ((Level("a", fields=(Field("x", "X"),)),
      Level("b", path="L", parent="a", inherit=(("nope", "n"),), fields=(Field("y", "Y"),))),
     "inherits nope"),
])
def test_conflicting_levels_are_config_errors(levels: tuple[Level, ...], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        source_plan(levels)
    assert "level " in str(info.value)


def test_conflict_is_reported_before_reading(tmp_path: Path) -> None:
    bad = Dataset(name="bad", version="1", description="", transform=lambda frames: {}, tables=(),
                  sources=(Source("s", ("*.json",), (
                      Level("a", fields=(Field("p", "Parts"),)),
                      Level("b", path="Parts", parent="a", fields=(Field("x", "X"),)))),))
    (tmp_path / "r.json").write_text("{}")
    with pytest.raises(ConfigError, match="level a: field p reads 'Parts'"):
        stage(bad, [tmp_path / "r.json"], settings=Settings(staging_dir=tmp_path / "st"))
    assert not list((tmp_path / "st").rglob("manifest.json"))


def test_malformed_object_file_is_named_by_full_path(tmp_path: Path) -> None:
    """A one-object file is only parsed by the level worker: its error names the file as given."""
    src = tmp_path / "export"
    generate_mids(src, powersets=2, seed=0)
    broken = src / "db" / "Player" / "Broken.json"
    broken.write_text('{"FullName": "x", "Powers": [{"Level": 1,,}]}')
    with pytest.raises(InputError) as info:
        stage(get_dataset("mids"), [src], settings=Settings(staging_dir=tmp_path / "st"))
    err = info.value
    assert Path(str(err.file)) == broken
    assert err.record == 0 and err.offset is not None


# ------------------------------------------------------------------------------ whole records


SPELLBOOK = Dataset(
    name="wholetest", version="1", description="records staged whole, keys inherited down",
    sources=(Source("books", ("*.json", "*.ndjson"), (
        Level("books", fields=(Field("id", "Id", "BIGINT"), Field("doc", "*", "JSON"))),
        Level("chapters", path="Chapters", parent="books", inherit=(("id", "book_id"),),
              fields=(Field("event", "Event", "INTEGER"),)),
        Level("spells", path="Spells", parent="chapters", inherit=(("book_id", "book_id"),),
              fields=(Field("spell_id", "SpellID", "BIGINT"), Field("params", "*", "JSON"))),
        Level("criteria", path="Req.Criteria", parent="spells",
              inherit=(("book_id", "book"), ("spell_id", "spell")),
              fields=(Field("op", "Op", "INTEGER"), Field("raw", "*", "JSON"))),
        Level("tags", path="Tags", fields=(Field("tag", "*", "JSON"),)),
    )),),
    transform=lambda frames: {}, tables=(),
)


@pytest.mark.parametrize("ndjson", [True, False], ids=["ndjson", "object-files"])
def test_whole_records_and_chained_inherit(tmp_path: Path, ndjson: bool) -> None:
    """A ``"*"`` field keeps every key of its record (less the lists its child levels are staged
    from), whatever keys each record has; keys inherited by a parent reach its children."""
    spells = [
        {"SpellID": 1, "Stat": 93, "Amount": 62, "Patch": None, "Nested": {"A": [1, {"B": "x"}]},
         "Req": {"Criteria": [{"Op": 2, "V": 1}, {"Op": 4}], "Keep": True}},
        {"SpellID": 2, "Texture": 9266, "Location": "Arms", "Req": None},
        {"SpellID": 3, "Req": {"Criteria": []}, "Text": "ünïcode \"quoted\""},
        7,
    ]
    records = [{"Id": 10, "Chapters": [{"Event": 14, "Spells": spells}], "Tags": ["a", {"b": 1}]},
               {"Id": 11, "Chapters": [{"Event": 0, "Spells": []}]}]
    run = _stage_with(tmp_path, SPELLBOOK, records, ndjson=ndjson)
    for lvl in SPELLBOOK.levels.values():
        assert run.raw(lvl.name).collect_schema() == level_schema(lvl, SPELLBOOK.levels)
    got = run.raw("spells").sort("_record", "_path").collect().to_dicts()
    assert [r["book_id"] for r in got] == [10, 10, 10, 10]
    assert [r["spell_id"] for r in got] == [1, 2, 3, None]
    expected = [{k: v for k, v in s.items() if k != "Req"} | {"Req": {"Keep": True}} for s in spells[:1]]
    # an empty list of child records stays in the text (lossless): only non-empty ones leave
    expected += [spells[1], spells[2], 7]
    assert [json.loads(r["params"]) for r in got] == expected
    crit = run.raw("criteria").sort("_path").collect().to_dicts()
    assert [(r["book"], r["spell"], r["op"], json.loads(r["raw"])) for r in crit] == [
        (10, 1, 2, {"Op": 2, "V": 1}), (10, 1, 4, {"Op": 4})]
    assert run.raw("criteria").collect_schema()["spell"] == pl.Int64()
    # The top-level record, less its child lists (Chapters under books, Tags a root level).
    docs = run.raw("books").sort("_record").collect()["doc"].to_list()
    assert [json.loads(d) for d in docs] == [{"Id": 10}, {"Id": 11}]
    tags = run.raw("tags").sort("_path").collect()["tag"].to_list()
    assert [json.loads(t) for t in tags] == ["a", {"b": 1}]


def _stage_with(tmp_path: Path, dataset: Dataset, records: list[Any], *, ndjson: bool) -> Run:
    src = tmp_path / "export"
    src.mkdir()
    if ndjson:
        (src / "things.ndjson").write_text("".join(json.dumps(r) + "\n" for r in records))
    else:
        for i, r in enumerate(records):
            (src / f"r{i:03d}.json").write_text(json.dumps(r))
    return stage(dataset, [src], settings=Settings(staging_dir=tmp_path / "st")).run


def test_whole_record_field_must_be_json() -> None:
    with pytest.raises(ConfigError, match="must be of type JSON"):
        source_plan((Level("a", fields=(Field("x", "*", "VARCHAR"),)),))
    with pytest.raises(ConfigError, match="neither has nor inherits"):
        source_plan((Level("a", fields=(Field("x", "X"),)),
                     Level("b", path="L", parent="a", fields=(Field("y", "Y"),)),
                     Level("c", path="M", parent="b", inherit=(("x", "x"),), fields=())))


def test_a_batch_too_big_for_duckdb_is_unpacked_in_halves(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    """How much memory DuckDB takes for a batch depends on its records' shapes, not only on its
    bytes: a batch it cannot fit under its limit (the x5 bench hit it once, at random) is unpacked
    in halves, down to one record, and the staged rows are those of an unsplit run. Here DuckDB
    is made to refuse any batch of more than 3 records, as its memory limit would."""
    import pyarrow.parquet as pq

    import etl.stage.stager as stager

    export = tmp_path / "export"
    generate_mids(export, powersets=12, seed=4)
    whole = stage(get_dataset("mids"), [export], settings=Settings(staging_dir=tmp_path / "a")).run

    real = stager._LevelWorker._run

    def tight(self: Any, records: Any) -> Any:
        if records.num_rows > 3:
            raise duckdb.OutOfMemoryException("Out of Memory Error: could not allocate block")
        return real(self, records)

    monkeypatch.setattr(stager._LevelWorker, "_run", tight)
    with caplog.at_level("DEBUG", logger="etl.stage.stager"):
        split = stage(get_dataset("mids"), [export], settings=Settings(staging_dir=tmp_path / "b")).run
    assert any("unpacking it in halves" in r.getMessage() for r in caplog.records)
    assert split.id == whole.id
    for name, entry in whole.manifest["levels"].items():
        theirs = split.manifest["levels"][name]
        assert theirs["rows"] == entry["rows"], name
        for mine, other in zip(entry["chunks"], theirs["chunks"], strict=True):
            assert pq.read_table(split.path / other["path"]).equals(pq.read_table(whole.path / mine["path"]))


def test_the_stream_reader_opens_only_when_a_file_needs_it() -> None:
    """A DuckDB instance is ~25 MB before it reads anything: an export of one-object files
    (read whole, never streamed) does not open one for the reader."""
    from etl.stage.stager import LazyReader

    reader = LazyReader({"threads": 1})
    assert reader.con is None
    reader.close()  # nothing to close
    con = reader()
    assert reader() is con and con.execute("SELECT 41 + 1").fetchone() == (42,)
    reader.close()
    assert reader.con is None
