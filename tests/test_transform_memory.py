"""The transform writes each table sorted by its key without sorting the table itself: it keeps the
table in the plan's order, computes the order on the key columns and gathers one chunk at a time.
These tests hold that path to what a plain sort gives: same rows, same order within and across
chunks, same checksum and jsonb types, same key checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from etl import Settings, get_dataset
from etl.dataset import Column, Table
from etl.datasets import dataset_of
from etl.errors import RunStateError
from etl.jsonb import pg_texts
from etl.run import frames_checksum, json_dtypes
from etl.stage import stage
from etl.transform import ordered, transform
from etl.transform.ordered import KeyOrdered, _key_order, _rows
from etl.transform.transformer import _check_keys, _check_required, _shape
from etl.validate import validate
from tests.conftest import SHARED, require_shared

AODB = get_dataset("aodb")
CHUNK_ROWS = 300

TABLE = Table("t", (Column("a", "integer", False), Column("b", "integer", False),
                    Column("v", "text")), ("a", "b"))


@pytest.fixture(scope="module")
def reversed_run(tmp_path_factory: pytest.TempPathFactory):
    """The aodb sample with its items reversed (so plans do not come out in key order), staged
    and transformed in small chunks (so big tables span several)."""
    items = json.loads(require_shared(SHARED / "aodb" / "items_100.json").read_text())
    root = tmp_path_factory.mktemp("perm")
    export = root / "items.json"
    export.write_text(json.dumps(items[::-1]))
    run = stage(AODB, [export], settings=Settings(staging_dir=root / "st",
                                                  chunk_rows=CHUNK_ROWS)).run
    assert validate(run, dataset_of(run)).passed
    run = transform(run, dataset_of(run)).run
    return run


def test_tables_are_written_as_a_plain_sort_would(reversed_run) -> None:
    run = reversed_run
    levels = {name: run.accepted(name, AODB) for name in AODB.levels}
    frames = AODB.transform(levels)
    permuted = []
    for table in AODB.tables:
        pk = list(table.primary_key)
        unsorted = _shape(table, frames[table.name])[0].select(list(table.polars_schema)).collect()
        if _key_order(unsorted, pk) is not None:
            permuted.append(table.name)
        # jsonb columns are written as PostgreSQL prints them (etl.jsonb)
        json_cols = [c.name for c in table.columns if c.type == "jsonb"]
        expected = unsorted.sort(pk).with_columns(pg_texts(unsorted.sort(pk).get_column(c))
                                                  for c in json_cols)
        entry = run.manifest["tables"][table.name]
        chunks = [pl.read_parquet(run.path / c["path"]).cast(dict(table.polars_schema))
                  for c in entry["chunks"]]
        # Chunk by chunk: the sorted table's slices, in order, and nothing else.
        assert [c.height for c in chunks] == [
            min(CHUNK_ROWS, expected.height - s) for s in range(0, expected.height, CHUNK_ROWS)]
        for i, chunk in enumerate(chunks):
            assert chunk.equals(expected.slice(i * CHUNK_ROWS, CHUNK_ROWS)), (table.name, i)
        # The jsonb types are inferred from the same sample (the first values in key order),
        # and the checksum is that of the sorted table, its jsonb texts as they are.
        assert entry["json_dtypes"] == json_dtypes(expected, json_cols)
        assert entry["checksum"] == frames_checksum([expected])
        assert entry["checksum_form"] == "pg-jsonb-rows"
    # The permutation path was taken, for the wide jsonb table too, not only slices of a sorted
    # frame.
    assert {"items", "spells", "item_stats"} <= set(permuted)
    assert run.manifest["tables"]["spells"]["rows"] > CHUNK_ROWS


def test_chunks_go_to_the_writer_as_one_piece() -> None:
    """The Parquet bytes follow the Arrow chunking, so every written piece is one contiguous
    piece, however the collected frame was chunked."""
    parts = [pl.DataFrame({"a": [i, i + 1], "b": [0, 0], "v": ["x" * 20, None]})
             for i in range(0, 10, 2)]
    df = pl.concat(parts, rechunk=False)
    assert df.n_chunks() > 1
    assert _key_order(df, ["a", "b"]) is None  # already sorted: slices, no gather
    piece = _rows(df, None, 1, 6)
    assert piece.n_chunks("all") == [1, 1, 1]
    assert piece.equals(df.slice(1, 6))
    shuffled = pl.concat([df.slice(6), df.slice(0, 6)], rechunk=False)
    order = _key_order(shuffled, ["a", "b"])
    assert order is not None
    pieces = [_rows(shuffled, order, s, 3) for s in range(0, shuffled.height, 3)]
    assert all(p.n_chunks("all") == [1, 1, 1] for p in pieces)
    assert pl.concat(pieces).equals(df)


def test_key_checks_use_the_order_not_the_frame() -> None:
    # Duplicate keys far apart in the unsorted frame are still found.
    df = pl.DataFrame({"a": [2, 1, 3, 2], "b": [5, 5, 5, 5], "v": ["p", "q", "r", "s"]},
                      schema=dict(TABLE.polars_schema))
    with pytest.raises(RunStateError, match="share a primary key"):
        _check_keys(TABLE, df, _key_order(df, ["a", "b"]))
    _check_keys(TABLE, df.with_columns(b=pl.Series([5, 5, 5, 6], dtype=pl.Int32)),
                _key_order(df, ["a", "b"]))
    with pytest.raises(RunStateError, match="empty primary key"):
        nulls = df.with_columns(a=pl.Series([2, None, 3, 4], dtype=pl.Int32))
        _check_keys(TABLE, nulls, _key_order(nulls, ["a", "b"]))
    # Required columns: their null counts, taken as the rows went by.
    _check_required(TABLE, {"a": 0, "b": 0})
    with pytest.raises(RunStateError, match="1 row\\(s\\) without b"):
        _check_required(TABLE, {"a": 0, "b": 1})


@pytest.mark.parametrize("path", ["held", "in order", "windowed", "bucketed"])
def test_key_ordered_rows_are_a_plain_sort_whichever_way_they_are_read(
        path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The four ways a table's rows come back in key order (held whole and gathered; spilled
    and streamed back, the plan being in order already; spilled and held until each piece is
    complete, every row being near its place; spilled and sorted through bucket files outside
    memory) give the rows a plain sort gives, in contiguous pieces of the asked size."""
    n, step = 5_000, 300
    rng = np.random.default_rng(7)
    keys = {"in order": np.arange(n),
            # each run of 100 rows shuffled within itself: every row near its place
            "windowed": np.concatenate([s + rng.permutation(100) for s in range(0, n, 100)])
            }.get(path, rng.permutation(n))
    plan = pl.LazyFrame({"a": keys.astype(np.int32), "b": np.zeros(n, dtype=np.int32),
                         "v": [f"text {k}" * (k % 5) if k % 7 else None for k in keys]})
    # Many buckets, a few pieces each: the bucket and piece boundaries do not line up.
    monkeypatch.setattr(ordered, "MAX_BUCKETS", 7)
    # held: any size fits; windowed: the table does not, the rows read ahead of a piece do
    budget = {"held": 1 << 40, "windowed": 20_000}.get(path, 0)
    batched = pl.concat([plan.slice(s, 450) for s in range(0, n, 450)])  # many input batches
    assert len(list(batched.collect_batches())) > 10
    rows = KeyOrdered(batched, ["a", "b"],
                      tmp_path / "sort", keep=["v"], count_nulls=["v", "a"], in_memory_bytes=budget)
    try:
        assert rows.rows == n and (rows.order is None) == (path == "in order")
        assert rows.spilled == (path != "held")
        assert rows.nulls == {"v": len([k for k in keys if k % 7 == 0]), "a": 0}
        pieces = list(rows.pieces(step))
        assert rows.read_as == path
        expected = plan.sort("a").collect()
        assert [p.height for p in pieces] == [min(step, n - s) for s in range(0, n, step)]
        assert all(p.n_chunks("all") == [1, 1, 1] for p in pieces)
        assert pl.concat(pieces).equals(expected)
        assert rows.column("v").equals(expected.get_column("v"))
        if path == "bucketed":  # the bucket files are gone once read
            assert sorted(p.name for p in (tmp_path / "sort").iterdir()) == ["plan.arrow"]
    finally:
        rows.close()
    assert not (tmp_path / "sort").exists()


def test_written_files_do_not_depend_on_the_plan_order(reversed_run, tmp_path: Path) -> None:
    """The sample in its own order and reversed: byte-for-byte the same chunk files."""
    sample = require_shared(SHARED / "aodb" / "items_100.json")
    run = stage(AODB, [sample], settings=Settings(staging_dir=tmp_path,
                                                  chunk_rows=CHUNK_ROWS)).run
    assert validate(run, dataset_of(run)).passed
    run = transform(run, dataset_of(run)).run

    def files(r) -> dict[str, list[str]]:
        return {name: [c["sha256"] for c in entry["chunks"]]
                for name, entry in r.manifest["tables"].items()
                if name not in ("items",)}  # items records its source record numbers

    assert files(run) == files(reversed_run)


def test_the_c_and_python_fetchers_write_the_same_files(reversed_run, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The C version of the extra fetcher (etl/transform/_reorder.c) and the Python one put the
    same texts in the same rows: the same run transformed by each gives byte-identical chunks."""
    import os
    import shutil

    from etl.run import open_run
    from etl.transform import extra_fetch

    if extra_fetch._native is None:
        if os.environ.get("CI"):
            pytest.fail("etl.transform._reorder (the C fetcher) is not built: pip install -e . compiles it")
        pytest.skip("the C fetcher is not built here")
    copy = tmp_path / reversed_run.path.name
    shutil.copytree(reversed_run.path, copy)
    monkeypatch.setattr(extra_fetch, "_native", None)
    again = transform(open_run(copy), AODB).run
    for name, entry in reversed_run.manifest["tables"].items():
        assert [c["sha256"] for c in again.manifest["tables"][name]["chunks"]] == \
            [c["sha256"] for c in entry["chunks"]], name


def test_reorder_scatter_and_gather() -> None:
    """Texts inline in their view (12 bytes or less) and in data buffers, nulls and "{}" left
    out, places across buckets and out of order; a chunk's places without a text get "{}"."""
    import numpy as np
    import pyarrow as pa

    from etl.transform import extra_fetch

    if extra_fetch._native is None:
        pytest.skip("the C fetcher is not built here")
    texts = ['{"a":1}', '{"long":"' + "x" * 40 + '"}', None, "{}", '{"b":[1,2]}', '{"é":"ü"}']
    places = np.array([5, 0, 3, 2, 7, -1], dtype=np.int64)
    for column in (pa.array(texts, pa.string_view()), pa.array(texts, pa.string()),
                   pa.array(["pad", *texts], pa.string_view()).slice(1)):
        runs = extra_fetch._scatter(column, places, 4)
        buckets: dict[int, bytes] = {}
        for bucket, records in runs:
            buckets[bucket] = buckets.get(bucket, b"") + bytes(memoryview(records))
        assert sorted(buckets) == [0, 1]
        got = []
        for b in (0, 1):
            offsets, data = extra_fetch._native.gather([buckets[b]], b * 4, 4)
            got += pa.Array.from_buffers(pa.large_string(), 4, [None, pa.py_buffer(offsets),
                                                                 pa.py_buffer(data)]).to_pylist()
        assert got == [texts[1], "{}", "{}", "{}", "{}", texts[0], "{}", texts[4]]
    with pytest.raises(ValueError, match="outside its chunk"):
        extra_fetch._native.gather([buckets[1]], 0, 4)


def test_tables_are_built_largest_first(reversed_run) -> None:
    """Built while the process holds least: the table of the most staged rows first, tables no
    level is homed in last; the manifest keeps the dataset's order."""
    from etl.transform.transformer import _largest_first

    order = [t.name for t in _largest_first(reversed_run, AODB)]
    rows = {t: sum(int(e["rows"]) for n, e in reversed_run.manifest["levels"].items()
                   if AODB.levels[n].table == t) for t in order}
    assert sorted(order) == sorted(t.name for t in AODB.tables)
    assert [rows[t] for t in order] == sorted(rows.values(), reverse=True)
    assert list(reversed_run.manifest["tables"]) == [t.name for t in AODB.tables]
    # And the transform did build them in that order: each table's chunks were written no
    # earlier than those of the tables before it (the rename into tables/ keeps the times).
    written = [min(Path(reversed_run.path / c["path"]).stat().st_mtime_ns
                   for c in reversed_run.manifest["tables"][t]["chunks"])
               for t in order if reversed_run.manifest["tables"][t]["chunks"]]
    assert written == sorted(written) and written[0] < written[-1]


def test_tables_past_the_memory_budget_are_spilled_and_written_the_same(
        reversed_run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a budget no table fits, every table goes through the spill file (the permuted ones
    through the bucket sort) and the files written are byte for byte those held in memory."""
    from etl.transform import transformer

    def files(r) -> dict[str, list[str]]:
        return {name: [c["sha256"] for c in entry["chunks"]]
                for name, entry in r.manifest["tables"].items()}

    held = files(reversed_run)
    sample = require_shared(SHARED / "aodb" / "items_100.json")
    items = json.loads(sample.read_text())
    export = tmp_path / "items.json"
    export.write_text(json.dumps(items[::-1]))
    run = stage(AODB, [export], settings=Settings(staging_dir=tmp_path / "st",
                                                  chunk_rows=CHUNK_ROWS)).run
    assert validate(run, dataset_of(run)).passed
    seen: dict[str, tuple[bool, bool, int]] = {}

    class Watched(KeyOrdered):
        def close(self) -> None:
            seen[self.folder.name] = (self.spilled, self.order is not None, self.rows)
            super().close()

    monkeypatch.setattr(transformer, "TABLE_SHARE", 1 << 40)
    monkeypatch.setattr(transformer, "KeyOrdered", Watched)
    spilled = transform(run, dataset_of(run)).run
    assert files(spilled) == held
    assert len(seen) == len(AODB.tables)
    assert all(spill for spill, _, rows in seen.values() if rows)  # (an empty table has nothing)
    assert seen[".sort-spells"][:2] == (True, True)  # permuted: sorted through the buckets
    assert not list(spilled.path.rglob(".sort-*"))
