"""etl.jsonb: staged JSON texts rewritten as PostgreSQL's jsonb prints them, checked against what
the real server prints for the same texts (the C version and the Python one alike)."""

from __future__ import annotations

import json
import random
from typing import Any

import polars as pl
import psycopg
import pytest

from etl import jsonb
from etl.jsonb import pg_form, pg_texts

HAND_PICKED = [
    '{"b":1,"a":2,"aa":[1,2.50,-0,-0.0,1e2,1.5e1,1.50e1,1e-2,0.000e5,-1.2E-3,123456789012345678901234]}',
    '{"x":"a\\u00e9\\n\\t\\"\\\\\\/\\u001f\\u007f\\ud83d\\ude00","x":3}',  # duplicate: last wins
    "[]", "{}", '"s"', "true", "false", "null", "0", "-0", "0.1e1", "123.456e-10", "1E+2",
    '  {"a" : { "z":1 , "y" : [ ] } }  ',
    '{"é":1,"e":2,"ee":3,"\\u0041":4,"":5}',  # keys by byte length, then bytes
    '{"k":"\x7f\u2028"}', '{"n":[1e131071]}', "1e-16383",
    # kept as they are: PostgreSQL refuses them, or prints them in a way not foreseen
    '{"a":"\\u0000"}', '"\\ud800"', "nope", '{"a":1,}', "1e131072", "1.5e-16383", "NaN",
]


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    r = rng.random()
    if depth > 3 or r < 0.35:
        return rng.choice([
            rng.randint(-10**20, 10**20), rng.uniform(-1e10, 1e10), rng.uniform(-1e-8, 1e-8),
            "t\n\x01" + chr(rng.randint(1, 0x2FFF)) + chr(rng.randint(0x10000, 0x10FFF)),
            None, True, False, 0.0, -0.0, 1e-7, 1e300, "",
        ])
    if r < 0.6:
        return [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    keys = ["a", "bb", "é", "ab", "ba", "c\t", "A", "ü", "", "\u2603"]
    return {rng.choice(keys) + str(rng.randint(0, 3)): _random_value(rng, depth + 1)
            for _ in range(rng.randint(0, 6))}


def _texts() -> list[str]:
    rng = random.Random(20261129)
    out = list(HAND_PICKED)
    for i in range(400):
        text = json.dumps(_random_value(rng), ensure_ascii=i % 2 == 0,
                          separators=(",", ":") if i % 3 else (", ", ": "))
        if i % 5 == 0 and text.startswith("{") and len(text) > 2:  # a key written twice
            text = '{"a0":"first",' + text[1:-1] + ',"a0":"last"}'
        out.append(text)
    return out


def _printed(texts: list[str]) -> list[str | None]:
    """What PostgreSQL prints for each text as jsonb (None: it refuses it)."""
    from tests.conftest import PG_ADMIN_URL

    out: list[str | None] = []
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        for text in texts:
            try:
                row = conn.execute("SELECT %s::jsonb::text", (text,)).fetchone()
                out.append(row[0] if row else None)
            except psycopg.Error:
                out.append(None)
    return out


def test_texts_are_rewritten_as_postgresql_prints_them() -> None:
    texts = _texts()
    printed = _printed(texts)
    native = pg_texts(pl.Series("j", texts)).to_list()
    python = [pg_form(t) for t in texts]
    assert native == python  # the C version and the Python one agree on every text
    rewritten = 0
    for text, ours, theirs in zip(texts, native, printed, strict=True):
        if ours != text or theirs == text:
            # rewritten: exactly what the server prints
            assert ours == theirs, (text, ours, theirs)
            rewritten += 1
        else:  # kept as it is: the server refuses it, or prints it otherwise (compared by meaning)
            assert theirs is None or theirs != text
    assert rewritten >= len(texts) - 12
    # the server refuses these; they are kept as they are
    for text in ('{"a":"\\u0000"}', '"\\ud800"', "nope", "1e131072", "NaN"):
        assert pg_form(text) == text


def test_nulls_slices_and_the_python_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    series = pl.Series("j", ['{"b":1,"a":2}', None, "[1.0e1]", '{"x":{"zz":1,"y":2}}'])
    want = ['{"a": 2, "b": 1}', None, "[10]", '{"x": {"y": 2, "zz": 1}}']
    assert pg_texts(series).to_list() == want
    assert pg_texts(series.slice(1, 3)).to_list() == want[1:]  # an offset into the buffers
    assert pg_texts(series.slice(0, 0)).to_list() == []
    monkeypatch.setattr(jsonb, "_native", None)
    assert pg_texts(series).to_list() == want


def test_numbers_print_as_numeric_does() -> None:
    cases = {"1.50e1": "15.0", "1e-2": "0.01", "-0.0": "0.0", "-0": "0", "1E+2": "100",
             "0.000e5": "0", "-1.2E-3": "-0.0012", "12.340": "12.340", "5e0": "5"}
    for token, printed in cases.items():
        assert jsonb.numeric_text(token) == printed
    assert _printed(list(cases)) == list(cases.values())
