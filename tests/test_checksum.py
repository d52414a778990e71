"""Content checksums: order- and chunk-independent, and jsonb compared by meaning."""

from __future__ import annotations

import polars as pl

from etl.run import comparable_json, frames_checksum, json_dtypes


def _checksum(texts: list[str | None], dtypes: dict[str, str]) -> str:
    df = pl.DataFrame({"id": list(range(len(texts))), "params": texts})
    return frames_checksum([comparable_json(df, ["params"], dtypes)])


def test_checksum_ignores_row_order_and_chunking() -> None:
    df = pl.DataFrame({"a": [1, 2, 3, 4], "b": ["w", None, "y", "z"]})
    assert frames_checksum([df]) == frames_checksum([df[2:], df[:2]])
    assert frames_checksum([df]) != frames_checksum([df.with_columns(b=pl.lit("w"))])


def test_jsonb_compared_by_meaning_not_text() -> None:
    staged = ['{"Stat": 12, "Amount": -3}', '{"Texture": 7, "Location": 2.5}', None]
    # What PostgreSQL gives back for the same values: keys reordered, spacing changed.
    from_db = ['{"Amount": -3,"Stat":12}', '{"Texture":7, "Location":2.50}', None]
    dtypes = json_dtypes(pl.DataFrame({"params": staged}), ["params"])
    assert "params" in dtypes
    assert _checksum(staged, dtypes) == _checksum(from_db, dtypes)
    changed = ['{"Stat": 12, "Amount": -4}', '{"Texture": 7, "Location": 2.5}', None]
    assert _checksum(staged, dtypes) != _checksum(changed, dtypes)


def test_mixed_json_shapes_fall_back_to_canonical_text() -> None:
    staged = ['{"b": 1, "a": [1, 2]}', "[1, 2, 3]"]
    dtypes = json_dtypes(pl.DataFrame({"params": staged}), ["params"])
    assert "params" not in dtypes
    assert _checksum(staged, dtypes) == _checksum(['{"a":[1,2],"b":1}', "[1,2,3]"], dtypes)
    assert _checksum(staged, dtypes) != _checksum(['{"a":[1,2],"b":2}', "[1,2,3]"], dtypes)
