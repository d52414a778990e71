"""The ``_extra`` walkers: the C one (etl/_extra.c) and the Python one give the same values, and
those values are exactly what the typed columns do not hold."""

from __future__ import annotations

import fnmatch
import json
import os
from pathlib import Path

import pyarrow as pa
import pytest

import etl.stage.extra as se
from etl.dataset import Column, Field, Level, Table
from etl.datasets import get_dataset

from .conftest import SHARED, require_shared


def _both(plan: se.ExtraPlan, texts: list[str]) -> tuple[dict, dict]:
    records = pa.table({"_file": pa.array(["f"] * len(texts)),
                        "_record": pa.array(range(len(texts)), pa.int64()),
                        "json": pa.array(texts)})
    native = se._native_extras(records, plan)
    assert native is not None, "the C walker refused the batch"
    python = plan.extras([se.parse_record(t) for t in texts])
    return native, python


def _same(native: dict, python: dict) -> None:
    assert native.keys() == python.keys()
    for name, (rows, positions, values) in python.items():
        n_rows, n_pos, n_values = native[name]
        assert n_rows.to_pylist() == rows, name
        assert n_pos.to_pylist() == [-1 if p is None else p for p in positions], name
        assert [se.parse_record(v) for v in n_values.to_pylist()] == \
            [se.parse_record(v) for v in values], name


def test_c_walker_is_built_in_ci() -> None:
    if os.environ.get("CI") and se._native is None:
        pytest.fail("etl._extra (the C walker) is not built: pip install -e . compiles it")


@pytest.mark.skipif(se._native is None, reason="the C walker is not built here")
@pytest.mark.parametrize("dataset", ["mids", "aodb", "licenses"])
def test_both_walkers_agree_on_the_real_samples(dataset: str) -> None:
    ds = get_dataset(dataset)
    root = require_shared(SHARED / {"mids": "mids", "aodb": "aodb", "licenses": "licenses"}[dataset])
    tables = {t.name: t for t in ds.tables}
    files = sorted(p for p in Path(root).rglob("*.json") if "truncated" not in p.name)
    for src in ds.sources:
        if not src.match:
            continue
        plan = se.ExtraPlan(src.levels, tables)
        texts = []
        for path in files:
            rel = path.relative_to(root).as_posix()
            if any(fnmatch.fnmatch(rel, m) or fnmatch.fnmatch(path.name, m) for m in src.match):
                doc = json.loads(path.read_text())
                texts.extend(json.dumps(d) for d in doc) if isinstance(doc, list) \
                    else texts.append(path.read_text())
        if texts:
            _same(*_both(plan, texts[:400]))


ODD_LEVELS = (
    Level("root", table="roots", fields=(Field("id", "Id", "BIGINT"), Field("name", "Name"),
                                         Field("ok", "Ok", "BOOLEAN"),
                                         Field("tags", "Tags", "VARCHAR[]"))),
    Level("items", path="A.Items", parent="root", table="items",
          fields=(Field("x", "X", "DOUBLE"), Field("n", "N", "INTEGER"))),
    Level("others", path="A.Others", parent="root", table="items",
          fields=(Field("x", "X", "DOUBLE"),)),
    Level("deep", path="Deep", parent="items", fields=(Field("y", "Y"),)),
)
ODD_TABLES = {
    "roots": Table("roots", (Column("id", "bigint"), Column("name", "text"),
                             Column("ok", "boolean"), Column("tags", "text[]"),
                             Column("extra", "json")), ("id",)),
    "items": Table("items", (Column("x", "double precision"), Column("n", "integer"),
                             Column("extra", "json")), ("x",)),
}
ODD_TEXTS = [
    '{"Id": 1, "Name": "a", "Ok": true, "Tags": ["x", null], "More": {"k": [1, 2]},'
    ' "A": {"Items": [{"X": 1.5, "N": 2, "Deep": [{"Y": "z"}], "Z": 1}, 7, null,'
    ' {"X": 9007199254740993, "N": 2147483648}], "Others": [], "Keep": 1}}',
    '{\n  "Id": "1",\n  "Name": 5,\n  "Ok": 1,\n  "Tags": [1],\n  "A": null,\n  "Key\\u0041": "e"\n}',
    '{"Id": 123456789012345678901234567890, "Name": null, "A": {"Items": [{"X": -0.0,'
    ' "N": -2147483648, "Deep": []}], "Others": [{"X": 1e400}]}, "Tags": []}',
    '{"Id": 2, "A": {"Items": "not a list", "Others": [{"X": "1.0"}]}, "Name": "\\u0000\\"q"}',
]


@pytest.mark.skipif(se._native is None, reason="the C walker is not built here")
def test_both_walkers_agree_on_odd_shapes() -> None:
    """Typed keys leave only with exact values; child lists leave only when non-empty; nested
    holders, escapes in keys, numbers beyond 64 bits, pretty text, non-object records."""
    plan = se.ExtraPlan(ODD_LEVELS, ODD_TABLES)
    native, python = _both(plan, ODD_TEXTS)
    _same(native, python)
    roots = [se.parse_record(v) for v in native["root"][2].to_pylist()]
    assert roots == [
        {"More": {"k": [1, 2]}, "A": {"Others": [], "Keep": 1}},  # Items (non-empty) left
        {"Id": "1", "Name": 5, "Ok": 1, "Tags": [1], "A": None, "KeyA": "e"},  # wrong types stay
        {"Id": 123456789012345678901234567890, "Name": None, "A": {}},  # Tags [] is exact
        {"A": {"Items": "not a list"}},
    ]
    items = [se.parse_record(v) for v in native["items"][2].to_pylist()]
    # Deep has no table: its list stays; 7 and null are records kept whole; X beyond 2^53 and
    # N beyond int32 are not held exactly by their columns
    assert items == [{"Deep": [{"Y": "z"}], "Z": 1}, 7, None,
                     {"X": 9007199254740993, "N": 2147483648}, {"Deep": []}]
    assert [se.parse_record(v) for v in native["others"][2].to_pylist()] == [{}, {"X": "1.0"}]


@pytest.mark.skipif(se._native is None, reason="the C walker is not built here")
def test_both_walkers_read_keys_with_escapes_as_decoded() -> None:
    """A key written with escapes is the key it decodes to, for a typed field and for a child
    list's path (the C walker compared them as written: a list at "A\\u002eItems"-like keys was
    not walked, and the batch's rows disagreed with the level query's)."""
    plan = se.ExtraPlan(ODD_LEVELS, ODD_TABLES)
    texts = ['{"\\u0049d": 1, "N\\u0061me": "a", "\\u0041": {"It\\u0065ms": [{"\\u0058": 1.5}]},'
             ' "caf\\u00e9": 1, "\\ud83d\\ude00": 2, "q\\"\\\\\\/": 3}',
             '{"Id": 2, "A": {"Ite\\u006ds": [{"X": 2.5, "N\\u0000": 1}, {"X": "s"}]}}']
    native, python = _both(plan, texts)
    _same(native, python)
    roots = [se.parse_record(v) for v in native["root"][2].to_pylist()]
    assert roots == [{"A": {}, "café": 1, "\U0001F600": 2, 'q"\\/': 3}, {"A": {}}]
    items = [se.parse_record(v) for v in native["items"][2].to_pylist()]
    assert items == [{}, {"N\u0000": 1}, {"X": "s"}]


def test_extra_nul_rows_counts_what_strip_nul_changes() -> None:
    """A ``\\u0000`` escape counts; an escaped backslash before ``u0000`` (text) does not."""
    texts = ['{"a":"x\\u0000"}', '{"b":"\\\\u0000"}', None, '{"k\\u0000":1}', "{}"]
    tables = {"lvl": pa.table({"_extra": pa.array(texts, pa.string())}),
              "plain": pa.table({"x": [1]}), "none": pa.table({"_extra": ["{}"]})}
    assert se.extra_nul_rows(tables) == {"lvl": 2}
