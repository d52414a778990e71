"""Hostile export shapes, end to end: ``etl init`` infers a spec, ``etl run`` loads it into the real
PostgreSQL, the rows are checked there, and ``etl reconcile`` rebuilds every source record from
its loaded rows (typed columns + ``extra``).

The shapes are generated here, each one a thing real exports do that our own samples do not:
escaped and case-colliding keys, empty structures, deep nesting, long keys, mixed file shapes,
numbers beyond int64 and double, NUL bytes, reserved words as keys, keys holding an object in one
record and a scalar in the next, duplicated keys (last wins, as every JSON library the users
know)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from etl.cli import main
from etl.spec import Spec


def _env(tmp_path: Path) -> dict[str, str]:
    return {"ETL_STAGING_DIR": str(tmp_path / "staging"), "ETL_DATASETS_DIR": str(tmp_path / "specs")}


def _invoke(args: list[str], env: dict[str, str]) -> dict[str, Any]:
    result = CliRunner().invoke(main, args, env=env)
    assert result.exit_code == 0, result.output
    out: dict[str, Any] = json.loads(result.stdout)
    return out


def _export(folder: Path, files: dict[str, str | bytes]) -> Path:
    for rel, text in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text.encode() if isinstance(text, str) else text)
    return folder


def _e2e(tmp_path: Path, pg_url: str, files: dict[str, str | bytes], name: str = "hostile"
         ) -> dict[str, Any]:
    """init → run → reconcile (from the loaded rows); the run's summary."""
    env = _env(tmp_path)
    export = _export(tmp_path / "export", files)
    _invoke(["init", name, str(export), "--json"], env)
    summary = _invoke(["run", name, "--database-url", pg_url, "--json"], env)
    rec = _invoke(["reconcile", summary["run"], "--database-url", pg_url, "--json"], env)
    assert rec["ok"], rec
    return summary


def _rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql).fetchall()


def _columns(url: str, schema: str, table: str) -> list[str]:
    return [r[0] for r in _rows(url, "SELECT column_name FROM information_schema.columns WHERE "
                                     f"table_schema = '{schema}' AND table_name = '{table}' "
                                     "ORDER BY ordinal_position")]


def _records(url: str, schema: str, table: str) -> list[dict[str, Any]]:
    """Each row as a dict, in key order (the ``id`` column when there is one)."""
    with psycopg.connect(url) as conn:
        cur = conn.execute(f'SELECT * FROM "{schema}"."{table}"')
        names = [d.name for d in cur.description or []]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


# ------------------------------------------------------------------------------ shapes that load


def _deep(n: int) -> Any:
    value: Any = 1
    for _ in range(n):
        value = {"k": value}
    return value


def _deep_lists(n: int) -> dict[str, Any]:
    value: dict[str, Any] = {"v": 1}
    for i in range(n):
        value = {"l": [value], "i": i}
    return value


SHAPES: dict[str, dict[str, str | bytes]] = {
    "empty structures": {"a.json": json.dumps(
        [{}, {"id": 1, "o": {}, "l": [], "kids": []}, {"id": 2, "kids": [], "o": {"p": {}}}])},
    "deeper than 64 levels": {"a.json": json.dumps(
        [{"id": 1, "deep": _deep(80)}, {"id": 2, "deep": [[[[[1]]]]]}, {"id": 3, "deep": _deep(200)}])},
    "arrays and lists of objects deeper than 64 levels": {"a.json": json.dumps(
        [{"id": 1, "a": json.loads("[" * 70 + "1" + "]" * 70), "o": _deep(70), **_deep_lists(70)},
         {"id": 2, "a": [], "o": {"k": {"k": 2}}, **_deep_lists(3)}])},
    "a long key column under a long list name (its children's reference over 63 bytes)": {
        "a.json": json.dumps([{"id": i, "items_" + "z" * 60: [
            {"code" + "c" * 55: j, "subs": [{"w": j}, {"w": j + 1}]} for j in range(2)]}
            for i in range(3)])},
    "mixed file shapes in one folder": {
        "arr.json": json.dumps([{"id": 1, "a": 1}, {"id": 2, "a": 2}]),
        "nd.ndjson": '{"id":3,"a":3}\n{"id":4,"a":4}\n',
        "sub/one.json": json.dumps({"id": 5, "a": 5})},
    "numbers beyond int64 and double": {"a.json": (
        '[{"id":1,"big":123456789012345678901234567890,"f":1.00000000000000000001,'
        '"e":1e400,"neg":-9223372036854775809,"i":9223372036854775807},'
        '{"id":2,"big":1,"f":0.1,"e":2,"neg":1,"i":-9223372036854775808}]')},
    "unicode, emoji and right-to-left text": {"a.json": json.dumps(
        [{"id": 1, "t": "héllo 👋 مرحبا \u202e rtl", "😀": "emoji key", "ключ": "значение"},
         {"id": 2, "t": "\U0001F600" * 100, "😀": "x", "ключ": "y"}], ensure_ascii=False)},
    "reserved words, spaces, dots and digits as keys": {"a.json": json.dumps(
        [{"id": i, "select": i, "order": "x", "user": True, "table": None, "my key": 1, "a.b": 2,
          "1st": 3, "": 4, "  ": 5, "-": 6} for i in range(3)])},
    "keys with . [ ] * holding values and lists of objects": {"a.json": json.dumps(
        [{"id": i, "a.b": [{"x": i}], "a": {"b": [{"y": i}]}, "c[]": [{"z": 1}], "c": [{"w": 2}],
          "*": i, "kids": [{"*": 1, "v": i}]} for i in range(3)])},
    "keys with line breaks, quotes, $ and 10,000 characters": {"a.json": json.dumps(
        [{"id": i, "k" * 10000: i, "it's": 1, "a\nb\tc": 2, "$x": 3, "Dollar": {"$ref": 1, "it's": [1]},
          "kids": [{"it's": 1, "K\nK": 2}], "Kids\n": [{"z": 1}]} for i in range(3)])},
    "an object in one record, a scalar in another": {"a.json": json.dumps(
        [{"id": 1, "v": {"a": 1}}, {"id": 2, "v": 5}, {"id": 3, "v": [1, {"a": 2}]}, {"id": 4, "v": "s"}])},
    "arrays of mixed scalars and objects": {"a.json": json.dumps(
        [{"id": 1, "arr": [1, "a", {"x": 1}, None, [2]]}, {"id": 2, "arr": [{"x": 2}, {"x": 3, "y": 1}]},
         {"id": 3, "arr": [True, 1.5]}])},
    "every child list empty": {"a.json": json.dumps([{"id": i, "kids": []} for i in range(3)])},
}


@pytest.mark.parametrize("shape", SHAPES)
def test_hostile_shape_loads_and_reconciles(shape: str, tmp_path: Path, pg_url: str) -> None:
    summary = _e2e(tmp_path, pg_url, SHAPES[shape])
    expected = sum(len(json.loads(t)) if t.lstrip().startswith("[") else
                   len(t.splitlines()) if "\n" in t else 1
                   for t in (v if isinstance(v, str) else v.decode() for v in SHAPES[shape].values()))
    # Every record is a row of its source's records table.
    assert sum(summary["tables"][t] for t in summary["tables"]) >= expected


def test_numbers_beyond_int64_and_double_keep_their_text(tmp_path: Path, pg_url: str) -> None:
    _e2e(tmp_path, pg_url, SHAPES["numbers beyond int64 and double"])
    rows = {r["id"]: r for r in _records(pg_url, "hostile", "a")}
    extra = rows[1]["extra"]
    # Nothing rounded: values no column holds exactly stay in extra as the export wrote them.
    big = rows[1].get("big") if rows[1].get("big") is not None else extra["big"]
    assert str(big) == "123456789012345678901234567890"
    assert rows[1]["i"] == 9223372036854775807 and rows[2]["i"] == -9223372036854775808
    assert str(rows[1].get("neg") or extra["neg"]) == "-9223372036854775809"
    # 1e400 reads as infinity, as Python's json reads it (and reconciles so).
    assert rows[1]["e"] == float("inf") and rows[2]["e"] == 2


def test_nul_in_strings_is_cleaned_counted_and_reported(tmp_path: Path, pg_url: str) -> None:
    summary = _e2e(tmp_path, pg_url, {"a.json": json.dumps(
        [{"id": 1, "t": "a\u0000b", "o": {"x": "c\u0000"}}, {"id": 2, "t": "ok"}])})
    rows = {r["id"]: r for r in _records(pg_url, "hostile", "a")}
    assert rows[1]["t"] == "ab" and rows[2]["t"] == "ok"
    report = json.loads((Path(summary["run"]) / "report.json").read_text())
    cleaned = {c["column"]: c["changed"] for c in report["cleaning"] if c["name"] == "strip_nul"}
    # the nested object, kept whole in extra, loses its NUL there too: json operators run
    assert cleaned == {"t": 1, "o_x": 1, "_extra": 1}
    with psycopg.connect(pg_url) as conn:
        values = conn.execute("SELECT extra->'o'->>'x' FROM hostile.a ORDER BY id").fetchall()
    assert values == [("c",), (None,)], values
    # counted as staged: validate takes the manifest's count and does not read _extra again
    manifest = json.loads((Path(summary["run"]) / "manifest.json").read_text())
    assert manifest["levels"]["a"]["extra_nul_rows"] == 1
    assert "\\u0000" not in str(rows[1].get("extra"))


def test_reserved_word_keys_are_quoted_columns(tmp_path: Path, pg_url: str) -> None:
    _e2e(tmp_path, pg_url, SHAPES["reserved words, spaces, dots and digits as keys"])
    cols = _columns(pg_url, "hostile", "a")
    # Reserved words get a trailing underscore (no quoting needed in hand-written SQL).
    assert {"select_", "order_", "user_", "my_key", "_1st"} <= set(cols), repr(cols)
    # A key a JSON path cannot name (a dot in it, or empty) stays in extra.
    assert all(r["extra"]["a.b"] == 2 and r["extra"][""] == 4 for r in _records(pg_url, "hostile", "a"))
    assert [r[0] for r in _rows(pg_url, "SELECT select_ FROM hostile.a ORDER BY id")] == [0, 1, 2]


def test_bool_in_some_records_number_in_others_loses_no_value(tmp_path: Path, pg_url: str) -> None:
    _e2e(tmp_path, pg_url, {"a.json": json.dumps(
        [{"id": 1, "f": True}, {"id": 2, "f": 3}, {"id": 3, "f": 2.5}, {"id": 4, "f": False}])})
    # Widened to jsonb, each value as it was: no boolean left out of a number column.
    assert _rows(pg_url, "SELECT data_type FROM information_schema.columns WHERE table_schema = "
                         "'hostile' AND table_name = 'a' AND column_name = 'f'") == [("jsonb",)]
    got = dict(_rows(pg_url, "SELECT id, f FROM hostile.a"))
    assert got == {1: True, 2: 3, 3: 2.5, 4: False}
    assert all(r["extra"] == {} for r in _records(pg_url, "hostile", "a"))


def test_many_distinct_shapes_init_as_one_source(tmp_path: Path, pg_url: str) -> None:
    """2,000 files, each with 30 keys of its own: one source (keys that are data), every value
    kept. Grouping scores a file only against sources sharing a key with it (it compared every
    file with every source, and every pair of sources, as sets: 30 s here for init alone)."""
    files: dict[str, str | bytes] = {
        f"f{i:04d}.json": json.dumps({"id": i, "common": "x", **{f"k{i}_{j}": j for j in range(30)}})
        for i in range(2000)}
    summary = _e2e(tmp_path, pg_url, files)
    assert summary["tables"] == {"records": 2000}
    assert _rows(pg_url, "SELECT count(*) FROM hostile.records WHERE extra::jsonb ? 'k1999_29'") == [(1,)]


# ------------------------------------------------------------------------------ escaped keys


def test_keys_written_with_json_escapes(tmp_path: Path, pg_url: str) -> None:
    """A key with escapes is the key it decodes to, for DuckDB and the C walker alike: the list
    at ``"kid\\u0073"`` is the child level ``kids`` (its rows walked, not kept twice), and keys
    holding quotes, backslashes, accents and NUL are kept whole."""
    text = ('[{"\\u0069d":1,"kid\\u0073":[{"v":1},{"v":2}],"a\\"b":1,"c\\\\d":2,"caf\\u00e9":3,'
            '"n\\u0000ul":4,"\\ud83d\\ude00":5},'
            '{"id":2,"kids":[{"v":3}],"a\\"b":5,"café":6}]')
    summary = _e2e(tmp_path, pg_url, {"a.json": text})
    assert summary["tables"] == {"a": 2, "kids": 3}
    rows = {r["id"]: r for r in _records(pg_url, "hostile", "a")}
    assert "kids" not in rows[1]["extra"]  # rows of their own, not kept twice
    assert rows[1]["extra"]["a\"b"] == 1 and rows[1]["extra"]["c\\d"] == 2
    # Keys a column can name are typed, the others (quotes, backslashes) kept in extra.
    assert (rows[1]["n_ul"], rows[1]["col"], rows[1]["caf"], rows[2]["caf"]) == (4, 5, 3, 6)


# ------------------------------------------------------------------------------ duplicate keys


def test_a_duplicated_key_keeps_its_last_value_and_is_counted(tmp_path: Path, pg_url: str) -> None:
    """Issue 17: ``{"a": 1, "a": 2}`` is ``{"a": 2}`` (as Python's json and orjson read it), at
    every depth; the records that had one are counted in the manifest and the run's summary."""
    text = ('[{"id":1,"a":1,"a":2,"n":1.00000000000000000001},'
            '{"id":2,"a":3,"b":{"c":1,"c":9},"kids":[{"v":1,"v":7}]},'
            '{"id":3,"a":4,"kids":[{"v":2}]}]')
    summary = _e2e(tmp_path, pg_url, {"a.json": text})
    rows = {r["id"]: r for r in _records(pg_url, "hostile", "a")}
    assert rows[1]["a"] == 2 and rows[2]["a"] == 3
    b = rows[2].get("b_c", rows[2]["extra"].get("b", {}).get("c"))
    assert b == 9
    assert sorted(r[0] for r in _rows(pg_url, "SELECT v FROM hostile.kids")) == [2, 7]
    manifest = json.loads((Path(summary["run"]) / "manifest.json").read_text())
    assert manifest["duplicate_keys"]["records"] == 2
    assert [(e["file"], e["record"]) for e in manifest["duplicate_keys"]["examples"]] == [
        ("a.json", 0), ("a.json", 1)]
    assert summary["duplicate_keys"] == 2
    assert 'id="duplicate-keys"' in Path(summary["report"]).read_text()


def test_a_duplicated_key_in_a_built_in_dataset_keeps_its_last_value(tmp_path: Path,
                                                                       pg_url: str) -> None:
    """The same in a built-in dataset (mids): a powerset file whose first power names itself twice
    loads the last name, reconciles, and is counted."""
    import shutil

    from tests.conftest import MIDS, require_shared

    export = tmp_path / "mids"
    shutil.copytree(require_shared(MIDS), export)
    path = next((export / "db").rglob("*.json"))
    text = path.read_text()
    name = json.loads(text)["Powers"][0]["DisplayName"]
    at = text.index('"DisplayName"', text.index('"Powers"'))
    path.write_text(text[:at] + '"DisplayName": "not this one", ' + text[at:])
    env = _env(tmp_path)
    summary = _invoke(["run", "mids", str(export), "--database-url", pg_url, "--json"], env)
    assert summary["duplicate_keys"] == 1
    rec = _invoke(["reconcile", summary["run"], "--database-url", pg_url, "--json"], env)
    assert rec["ok"], rec
    names = [r[0] for r in _rows(pg_url, "SELECT display_name FROM mids.powers")]
    assert name in names and "not this one" not in names


def test_duplicated_keys_are_found_at_any_depth_and_width() -> None:
    """The byte scan flags what a full parse finds: wide objects (hashed compare), deep nesting
    (no recursion), keys in strings that only look like keys; rewriting keeps number texts."""
    import pyarrow as pa

    from etl.stage.dupkeys import dedupe_text, last_wins

    wide = "{" + ",".join(f'"k{i}":{i}' for i in range(40))
    deep = '{"d":' * 300 + '{"x":1,"x":2}' + "}" * 300
    texts = [wide + ',"k7":"last"}', wide + "}", deep, '{"s":"\\"a\\":1,\\"a\\":2","t":["a","a"]}',
             '{"k\\u0061":1,"ka":2}', '{"a":{"x":1},"b":{"x":2}}', '{"a":1e400,"a":1.10}']
    records = pa.table({"_file": ["f"] * len(texts), "_record": list(range(len(texts))),
                        "json": texts})
    out, where = last_wins(records)
    assert where == [("f", 0), ("f", 2), ("f", 4), ("f", 6)]
    got = out.column("json").to_pylist()
    assert json.loads(got[0])["k7"] == "last" and len(json.loads(got[0])) == 40
    assert got[1] == texts[1] and got[3] == texts[3] and got[5] == texts[5]
    assert got[4] == '{"ka":2}' and got[6] == '{"a":1.10}'
    assert dedupe_text('{"a": 1}') is None
    # Very wide objects (the set of keys grows past its first size), the duplicate first and
    # last, and keys that differ only in their last byte or length.
    huge = [f'"key{i}":{i}' for i in range(1000)]
    huge_texts = ["{" + ",".join([*huge, '"key0":"last"']) + "}",
                  "{" + ",".join(['"key999":"first"', *huge]) + "}",
                  "{" + ",".join([*huge, '"key1000":0', '"key":1', '"ke":2']) + "}"]
    _, where = last_wins(pa.table({"_file": ["g"] * 3, "_record": [0, 1, 2], "json": huge_texts}))
    assert where == [("g", 0), ("g", 1)]
    # Written as ASCII: a lone surrogate stays an escape (staging names it), never a character
    # that UTF-8 cannot hold in the rewritten batch.
    assert dedupe_text('{"a": "x", "a": "\\ud800é"}') == '{"a":"\\ud800\\u00e9"}'


# ------------------------------------------------------------------------------ keys by case


def test_keys_differing_only_in_case(tmp_path: Path, pg_url: str) -> None:
    """``Name``, ``name`` and ``NAME`` are three keys: three columns (PostgreSQL folds case, DuckDB's
    structures ignore it), at the top, inside a flattened object and in a child level."""
    records = [{"id": i, "Name": f"N{i}", "name": f"n{i}", "NAME": i,
                "Stats": {"Damage": i, "damage": -i}, "stats": {"x": 1}, "Kids": None,
                "kids": [{"V": j, "v": f"s{j}"} for j in range(2)]} for i in range(3)]
    summary = _e2e(tmp_path, pg_url, {"a.json": json.dumps(records)})
    assert summary["tables"] == {"a": 3, "kids": 6}
    cols = _columns(pg_url, "hostile", "a")
    assert len(cols) == len(set(cols))
    rows = sorted(_records(pg_url, "hostile", "a"), key=lambda r: r["id"])
    for i, row in enumerate(rows):
        values = {v for k, v in row.items() if k != "extra"}
        assert {f"N{i}", f"n{i}", -i} <= values, row  # each case its own typed column
        assert not {"Name", "name", "NAME"} & set(row["extra"]), row  # typed, not kept twice
    kids = _records(pg_url, "hostile", "kids")
    assert sorted(str(v) for r in kids for k, v in r.items() if v in ("s0", "s1")) == ["s0", "s0", "s0",
                                                                                      "s1", "s1", "s1"]


# ------------------------------------------------------------------------------ long keys


def test_keys_longer_than_postgresql_identifiers(tmp_path: Path, pg_url: str) -> None:
    """Keys over 63 bytes (ASCII and multi-byte) that agree on their first 63 bytes are distinct
    columns; child tables named after long keys get distinct tables and constraint names (a
    name PostgreSQL would truncate is shortened with a hash instead)."""
    a, b = "x" * 70 + "A", "x" * 70 + "B"
    accents = "é" * 40  # 80 bytes
    kids1, kids2 = "kids" + "y" * 70 + "1", "kids" + "y" * 70 + "2"
    records = [{"id": i, a: i, b: i + 1, accents: f"e{i}", accents + "!": f"f{i}",
                kids1: [{"v": i}], kids2: [{"v": -i}, {"v": 100 + i}]} for i in range(3)]
    summary = _e2e(tmp_path, pg_url, {"a.json": json.dumps(records)})
    assert sorted(summary["tables"].values()) == [3, 3, 6]
    cols = _columns(pg_url, "hostile", "a")
    assert len(cols) == len(set(cols)) and all(len(c.encode()) <= 63 for c in cols)
    rows = sorted(_records(pg_url, "hostile", "a"), key=lambda r: r["id"])
    for i, row in enumerate(rows):
        assert {i, i + 1, f"e{i}", f"f{i}"} <= {v for k, v in row.items() if k != "extra"}
    names = [r[0] for r in _rows(pg_url, "SELECT conname FROM pg_constraint c JOIN pg_namespace n "
                                         "ON n.oid = c.connamespace WHERE n.nspname = 'hostile'")]
    assert len(names) == len(set(names)) and len(names) >= 5  # 3 primary keys, 2 references
    # A merge stages each table in a temporary table named after it: distinct too.
    records[0][kids2].append({"v": 1000})
    (tmp_path / "export" / "a.json").write_text(json.dumps(records))
    merged = _invoke(["run", "hostile", "--mode", "merge", "--database-url", pg_url, "--json"],
                     _env(tmp_path))
    assert sorted(merged["tables"].values()) == [3, 3, 7]
    rec = _invoke(["reconcile", merged["run"], "--database-url", pg_url, "--json"], _env(tmp_path))
    assert rec["ok"], rec


# ------------------------------------------------------------------------------ empty children


def test_a_child_level_with_no_rows_in_this_export(tmp_path: Path, pg_url: str) -> None:
    """A spec inferred from an export with child records, run on one where every list is empty,
    missing or null: the grandchild table is empty, the rest loads and
    every record reconciles, ``[]`` and ``null`` kept as they were."""
    env = _env(tmp_path)
    first = _export(tmp_path / "v1", {"a.json": json.dumps(
        [{"id": i, "kids": [{"v": j, "subs": [{"w": j}]} for j in range(2)]} for i in range(3)])})
    _invoke(["init", "hostile", str(first), "--json"], env)
    later = _export(tmp_path / "v2", {"a.json": json.dumps(
        [{"id": 1, "kids": []}, {"id": 2}, {"id": 3, "kids": None},
         {"id": 4, "kids": [{"v": 1, "subs": []}]}])})
    summary = _invoke(["run", "hostile", str(later), "--database-url", pg_url, "--json"], env)
    rec = _invoke(["reconcile", summary["run"], "--database-url", pg_url, "--json"], env)
    assert rec["ok"], rec
    assert sorted(summary["tables"].values()) == [0, 1, 4]
    extras = {r[0]: r[1] for r in _rows(pg_url, "SELECT id, extra FROM hostile.a")}
    assert extras[1] == {"kids": []} and extras[3] == {"kids": None}


# ------------------------------------------------------------------------------ keys inferred


@pytest.mark.parametrize("ids", [[1, "1", 2], ["a\u0000", "a", "b"]], ids=["int-and-text", "nul"])
def test_a_key_is_unique_as_the_column_holds_it(ids: list[Any], tmp_path: Path, pg_url: str) -> None:
    """1 and "1" are one value in a text column, "a\\0" and "a" one once NUL is stripped: neither
    is proposed as a key (the load would fail on it), at the top or within a parent."""
    records = [{"id": v, "kids": [{"k": v}, {"k": ids[(n + 1) % 3]}, {"k": ids[(n + 2) % 3]}]}
               for n, v in enumerate(ids)]
    summary = _e2e(tmp_path, pg_url, {"a.json": json.dumps(records)})
    assert summary["tables"] == {"a": 3, "kids": 9}
    spec = (tmp_path / "specs" / "hostile.toml").read_text()
    assert 'key = {columns = ["id"]}' not in spec


def test_nesting_deeper_than_python_reads_is_named_not_a_crash(tmp_path: Path, pg_url: str) -> None:
    """3,000 levels (DuckDB reads them; Python's json and orjson stop near 1,000): ``etl init``
    lists the file as skipped with the reason instead of dying with a RecursionError, and the
    rest of the export loads and reconciles."""
    deep = '{"id":9,"o":' + '{"k":' * 3000 + "1" + "}" * 3000 + "}"
    files: dict[str, str | bytes] = {"ok.json": json.dumps([{"id": 1, "a": 1}, {"id": 2, "a": 2}]),
                                     "deep/one.json": deep}
    _e2e(tmp_path, pg_url, files)
    spec = (tmp_path / "specs" / "hostile.toml").read_text()
    assert 'file = "deep/one.json"' in spec and "nested too deep" in spec
    assert [r[0] for r in _rows(pg_url, "SELECT a FROM hostile.ok ORDER BY id")] == [1, 2]


# ------------------------------------------------------------------------------ names


def test_folder_names_with_glob_characters_and_long_dataset_names(tmp_path: Path, pg_url: str) -> None:
    """Folders named ``… [final]``, with ``*``, ``?``, spaces, non-ASCII or 80 characters are
    matched as written (a ``[`` is no wildcard); a 40-character dataset name loads twice (its
    build and old schemas fit PostgreSQL's 63 bytes), a longer one or the ledger's is refused."""
    name = "d" * 40
    same = json.dumps([{"id": 1, "a": 1}, {"id": 2, "a": 2}])
    files: dict[str, str | bytes] = {
        "Export (v2.0) [final]/one.json": same, "Export (v2.0) [final]/two.json": same,
        "what*? ёжик 🚀/x.json": json.dumps({"id": 3, "b": 3}),
        "what*? ёжик 🚀/y.json": json.dumps({"id": 4, "b": 4}),
        ("a" * 80) + "/q.json": json.dumps({"id": 5, "c": 5}),
        ("a" * 80) + "b/q.json": json.dumps({"id": 6, "d": 6})}
    summary = _e2e(tmp_path, pg_url, files, name=name)
    assert sum(summary["tables"].values()) == 8
    again = _invoke(["run", name, "--database-url", pg_url, "--json", "--force"], _env(tmp_path))
    assert again["tables"] == summary["tables"]
    assert _rows(pg_url, "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'ddd%'") == [(1,)]
    for bad in ("d" * 41, "etl", "a__b"):
        result = CliRunner().invoke(main, ["init", bad, str(tmp_path / "export")], env=_env(tmp_path))
        assert result.exit_code == 2 and "dataset name" in result.output, result.output


def test_a_level_with_no_columns_stages_its_rows() -> None:
    """A level whose keys are all data (no columns, records whole in extra) has no structure of
    its own: DuckDB refuses an empty STRUCT ("Empty object in JSON structure"), so it is read as
    JSON values, at the top and as a child."""
    import duckdb
    import pyarrow as pa

    from etl.dataset import Field, Level
    from etl.stage.sql import source_plan

    records = pa.table({"_file": ["f", "f"], "_record": [0, 1],
                        "json": ['{"id":1,"kids":[{"x":1},{"y":2}]}', '{"id":2}']})
    for levels, want in (([Level("a", (Field("id", "id", "BIGINT"),)),
                           Level("kids", (), path="kids", parent="a")], {"a": 2, "kids": 2}),
                         ([Level("a", ())], {"a": 2})):
        plan = source_plan(levels)
        con = duckdb.connect()
        con.register("_records", records)
        con.execute(f"CREATE TEMP TABLE _parsed AS {plan.parse}")
        assert {n: len(con.execute(q).fetchall()) for n, q in plan.queries.items()} == want


def test_lists_of_objects_at_keys_differing_only_in_case(tmp_path: Path, pg_url: str) -> None:
    """``Kids`` and ``kids`` (and ``KIDS.Items`` beside ``KIDS.items``) are separate child
    levels, each with its own rows, none lost or taken for the other."""
    records = [{"id": i, "Kids": [{"v": i, "V": -i, "subs": [{"s": i}]}],
                "kids": [{"w": i}, {"w": i + 10}],
                "KIDS": {"Items": [{"q": i}], "items": [{"r": i}, {"r": -i}, {"r": 7}]}}
               for i in range(3)]
    summary = _e2e(tmp_path, pg_url, {"a.json": json.dumps(records)})
    assert sorted(summary["tables"].values()) == [3, 3, 3, 3, 6, 9]
    spec = Spec.from_toml((tmp_path / "specs" / "hostile.toml").read_text())
    table = {lv.path: lv.table for src in spec.sources for lv in src.levels}
    w = sorted(r[0] for r in _rows(pg_url, f"SELECT w FROM hostile.{table['kids[]']}"))
    assert w == [0, 1, 2, 10, 11, 12]
    r = sorted(x[0] for x in _rows(pg_url, f"SELECT r FROM hostile.{table['KIDS.items[]']}"))
    assert r == [-2, -1, 0, 0, 1, 2, 7, 7, 7]
    assert _rows(pg_url, f"SELECT count(*) FROM hostile.{table['Kids[].subs[]']}") == [(3,)]


# ------------------------------------------------------------------------------ drift


@pytest.mark.parametrize("policy", ["keep", "evolve"])
def test_drift_of_hostile_keys(policy: str, tmp_path: Path, pg_url: str) -> None:
    """A later export adds keys differing from declared ones only in case, an escaped key and a
    duplicated one: each is found as drift, kept (or given a column), and every record reconciles."""
    env = _env(tmp_path)
    first = _export(tmp_path / "v1", {"a.json": json.dumps(
        [{"id": i, "Name": f"n{i}", "kids": [{"v": 1}]} for i in range(3)])})
    _invoke(["init", "hostile", str(first), "--json"], env)
    spec = tmp_path / "specs" / "hostile.toml"
    spec.write_text(spec.read_text().replace('drift = "keep"', f'drift = "{policy}"'))
    later = _export(tmp_path / "v2", {"a.json": (
        '[{"id":1,"Name":"a","name":"b","NAME":1,"x\\u0041":5,"sel":{"a":1,"a":2},'
        '"kids":[{"v":1,"V":2}]},{"id":2,"Name":"c","name":"d","kids":[]}]')})
    summary = _invoke(["run", str(spec), str(later), "--database-url", pg_url, "--json"], env)
    assert {(d["level"], d["key"]) for d in summary["drift"]} == {
        ("a", "NAME"), ("a", "name"), ("a", "xA"), ("a", "sel"), ("kids", "V")}
    rec = _invoke(["reconcile", summary["run"], "--database-url", pg_url, "--json"], env)
    assert rec["ok"], rec
    rows = {r["id"]: r for r in _records(pg_url, "hostile", "a")}
    if policy == "keep":
        assert rows[1]["extra"] == {"name": "b", "NAME": 1, "xA": 5, "sel": {"a": 2}}
    else:
        values = [v for k, v in rows[1].items() if k != "extra"]
        assert all(v in values for v in ("b", 1, 5, {"a": 2})) and rows[1]["extra"] == {}


def test_empty_files_are_named_by_init_and_an_empty_array_loads(tmp_path: Path, pg_url: str) -> None:
    """A file of nothing (or white space) is skipped by ``etl init`` with the words staging
    refuses it with, so the user hears of it before a run; an empty array is a source of no
    records, which loads (an empty table) beside the others and reconciles."""
    env = _env(tmp_path)
    export = _export(tmp_path / "export", {"ok.json": json.dumps({"id": 1}), "arr.json": "[]",
                                           "blank.ndjson": "\n\n", "zero.json": "", "ws.json": " \n"})
    out = _invoke(["init", "hostile", str(export), "--json"], env)
    assert sorted(s["file"] for s in out["skipped"]) == ["blank.ndjson", "ws.json", "zero.json"]
    assert {s["error"] for s in out["skipped"]} == {"file is empty (no JSON records)"}
    for name in ("blank.ndjson", "zero.json", "ws.json"):
        (export / name).unlink()
    summary = _invoke(["run", "hostile", "--database-url", pg_url, "--json"], env)
    assert summary["tables"] == {"arr": 0, "ok": 1}
    rec = _invoke(["reconcile", summary["run"], "--database-url", pg_url, "--json"], env)
    assert rec["ok"], rec


def test_init_prints_names_that_look_like_markup_as_they_are(tmp_path: Path) -> None:
    """File and folder names such as ``[bold]bad.json`` are shown as named, not taken as the
    terminal's markup (they vanished from the "skipped:" line)."""
    export = _export(tmp_path / "export", {"[bold]bad.json": '{"id": 1', "[red]x/ok.json": '{"id": 1}',
                                           "[red]x/ok2.json": '{"id": 2}'})
    result = CliRunner().invoke(main, ["init", "hostile", str(export)], env=_env(tmp_path))
    assert result.exit_code == 0, result.output
    assert "skipped: [bold]bad.json at byte 8" in result.output
