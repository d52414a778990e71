"""A table's rows in primary-key order, a piece at a time, in memory bounded by a budget.

The transform writes every table sorted by its primary key. A table's plan is run once, its
batches taken as the streaming engine gives them; the key columns are kept aside to find the
order and check the keys. Then:

* a table that fits the budget (:data:`IN_MEMORY_BYTES`, Polars' estimate) is held whole and
  each piece gathered through a slice of the order;
* a bigger one goes on, batch by batch, into an Arrow IPC file beside the table's chunks, and
  is read back from it: in pieces, when its rows came in key order already; held only until
  their piece is complete, when every row is near its place (the rows read ahead of a piece fit
  the budget: a file's rows whose keys sort "#10" before "#2"); otherwise sorted outside memory:
  each row is appended to the bucket file of the output pieces it goes to (its rank in the order
  tells which), then each bucket, a few pieces' rows, is read, sorted by rank and cut into
  pieces.

So memory holds the budget, the key columns (a few bytes a row) and one bucket, whatever the
table's size — a bucket is one piece, or a :data:`MAX_BUCKETS`-th of a table of more pieces than
that (at most that many bucket files are open: raise it for tables of millions of wide rows).
Files are read with plain reads, never memory-mapped: mapped pages would count in the peak.
"""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.ipc as ipc

#: Tables bigger than this (Polars' estimate) are spilled and read back; the transform gives a
#: share of the memory limit instead (:data:`etl.transform.transformer.TABLE_SHARE`).
IN_MEMORY_BYTES = 64 << 20
#: At most this many bucket files are open at once (a bucket takes several pieces if needed).
MAX_BUCKETS = 128
_RANK = "__rank"


def _key_order(keys: pl.DataFrame, pk: list[str]) -> pl.Series | None:
    """The row order that sorts ``keys`` by ``pk`` (computed on the key columns alone), or None
    when they are in that order already. With a unique key any sort gives this one order."""
    if keys.height < 2:
        return None
    order = keys.select(pl.arg_sort_by(pk).alias("order")).get_column("order")
    return None if order.is_sorted() else order  # a sorted permutation is 0, 1, 2…


def _rows(df: pl.DataFrame, order: pl.Series | None, start: int, length: int) -> pl.DataFrame:
    """Rows ``start``… (``length`` of them) of ``df`` in key order: a slice of the order, so
    only this piece is copied. Always one contiguous piece: the Parquet writer's page layout
    follows the Arrow chunks it is given, so the same rows give the same file bytes whatever
    the engine's internal chunking was (which varied with the thread count)."""
    piece = df.slice(start, length) if order is None else df[order.slice(start, length)]
    return piece.rechunk()


class _Spill:
    """An Arrow IPC file the table's batches are appended to (in Polars' own Arrow layout, so
    they go and come back without conversion)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer: Any = None
        self._schema: pa.Schema | None = None

    def write(self, df: pl.DataFrame) -> None:
        table = df.to_arrow(compat_level=pl.CompatLevel.newest())
        if self._schema is None:
            self._schema = table.schema
            self._writer = ipc.new_file(str(self.path), table.schema)
        elif table.schema != self._schema:  # (one plan, one schema; to be sure)
            table = table.cast(self._schema)
        self._writer.write_table(table)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def _frame(batches: list[pa.RecordBatch]) -> pl.DataFrame:
    df = pl.from_arrow(pa.Table.from_batches(batches))
    assert isinstance(df, pl.DataFrame)
    return df.rechunk()


class KeyOrdered:
    """The rows ``plan`` gives, in ``pk`` order (see the module's doc). Owns ``folder`` (its
    spill file, if the table outgrows the budget) until :meth:`close`.

    ``keep``: columns besides the key that :meth:`column` gives (held whole, like the key);
    ``count_nulls``: columns whose nulls are counted on the way (:attr:`nulls`).

    >>> rows = KeyOrdered(plan, ["power_id"], tmp / ".sort-powers")   # doctest: +SKIP
    >>> for piece in rows.pieces(16_384): ...                          # doctest: +SKIP
    """

    def __init__(self, plan: pl.LazyFrame, pk: list[str], folder: Path, *,
                 keep: Sequence[str] = (), count_nulls: Sequence[str] = (),
                 in_memory_bytes: int = IN_MEMORY_BYTES) -> None:
        self.folder = folder
        self.budget = in_memory_bytes
        self._path = folder / "plan.arrow"
        narrow = [*pk, *(c for c in keep if c not in pk)]
        #: Per column of ``count_nulls``, its null count.
        self.nulls = dict.fromkeys(count_nulls, 0)
        held: list[pl.DataFrame] = []
        kept: list[pl.DataFrame] = []
        size = 0
        sink: Any = None
        try:
            for batch in plan.collect_batches(maintain_order=True, engine="streaming"):
                kept.append(batch.select(narrow))
                for c in self.nulls:
                    self.nulls[c] += batch.get_column(c).null_count()
                size += int(batch.estimated_size())
                if sink is None:
                    held.append(batch)
                    if size <= in_memory_bytes:
                        continue
                    shutil.rmtree(folder, ignore_errors=True)
                    folder.mkdir(parents=True)
                    sink = _Spill(self._path)
                    for b in held:
                        sink.write(b)
                    held = []
                else:
                    sink.write(batch)
        finally:
            if sink is not None:
                sink.close()
        schema = plan.collect_schema()
        self._kept = (pl.concat(kept) if kept
                      else pl.DataFrame(schema={c: schema[c] for c in narrow}))
        #: The key columns, in the plan's order (for the key checks).
        self.keys = self._kept.select(pk)
        self.rows = self.keys.height
        #: The order that sorts the plan's rows by key; None: they are sorted already.
        self.order = _key_order(self.keys, pk)
        #: The whole table, in the plan's order, when it fits the budget (else: spilled).
        self._whole: pl.DataFrame | None = None
        #: The rows' size in memory (Polars' estimate, summed over the plan's batches).
        self.bytes = size
        #: How :meth:`pieces` read the rows: held, in order, windowed or bucketed.
        self.read_as = ""
        if sink is None:
            self._whole = (pl.concat(held, rechunk=False) if held
                           else pl.DataFrame(schema=schema))

    @property
    def spilled(self) -> bool:
        return self._whole is None

    def column(self, name: str) -> pl.Series:
        """Column ``name`` (of the key or ``keep``) in key order."""
        values = self._kept.get_column(name)
        return values if self.order is None else values.gather(self.order)

    def pieces(self, step: int) -> Iterator[pl.DataFrame]:
        """The rows in key order, ``step`` rows a piece (the last one shorter)."""
        if self._whole is not None:
            self.read_as = "held"
            for start in range(0, self.rows, step):
                yield _rows(self._whole, self.order, start, step)
        elif self.order is None:
            self.read_as = "in order"
            yield from self._in_order(step)
        else:
            rank = np.empty(self.rows, dtype=np.int64)
            rank[self.order.to_numpy()] = np.arange(self.rows, dtype=np.int64)
            # The rows read before each piece is complete: the last place any of its rows
            # (or an earlier piece's) has, less the rows already given out.
            reach = np.maximum.accumulate(self.order.to_numpy())
            starts = np.arange(0, self.rows, step)
            ends = np.minimum(starts + step, self.rows)
            window = int((reach[ends - 1] + 1 - starts).max())
            if window * self.bytes <= self.rows * self.budget:
                self.read_as = "windowed"
                yield from self._windowed(step, rank, reach)
            else:
                self.read_as = "bucketed"
                yield from self._sorted(step, rank)

    def close(self) -> None:
        self._whole = None
        shutil.rmtree(self.folder, ignore_errors=True)

    # -- reading the spill file --------------------------------------------------------------

    def _batches(self, path: Path | None = None) -> Iterator[pa.RecordBatch]:
        with pa.OSFile(str(path or self._path)) as f:
            if path is None:
                reader: Any = ipc.open_file(f)
                for i in range(reader.num_record_batches):
                    yield reader.get_batch(i)
            else:
                yield from ipc.open_stream(f)

    def _in_order(self, step: int) -> Iterator[pl.DataFrame]:
        held: list[pa.RecordBatch] = []
        have = 0
        for batch in self._batches():
            while batch.num_rows:
                take = min(step - have, batch.num_rows)
                held.append(batch.slice(0, take))
                have += take
                batch = batch.slice(take)
                if have == step:
                    yield _frame(held)
                    held, have = [], 0
        if held:
            yield _frame(held)

    def _grouped(self, rows: int) -> Iterator[pa.Table]:
        """The spill file's batches, joined into tables of about ``rows`` rows (a bucket's
        worth): each is then written to the buckets in a few large appends, not many small."""
        held: list[pa.RecordBatch] = []
        have = 0
        for batch in self._batches():
            held.append(batch)
            have += batch.num_rows
            if have >= rows:
                yield pa.Table.from_batches(held)
                held, have = [], 0
        if held:
            yield pa.Table.from_batches(held)

    def _windowed(self, step: int, rank: np.ndarray, reach: np.ndarray) -> Iterator[pl.DataFrame]:
        """A table whose rows are near their places (every piece complete within the budget's
        rows of reading, e.g. keys that sort "#10" before "#2" within each file): the spill file
        read once, the rows held until their piece is complete, each piece sorted by rank."""
        held: pl.DataFrame | None = None
        start = done = 0
        for batch in self._batches():
            read = _frame([batch]).with_columns(pl.Series(_RANK, rank[start:start + batch.num_rows]))
            start += batch.num_rows
            held = read if held is None else pl.concat([held, read], rechunk=False)
            while done < self.rows and reach[min(done + step, self.rows) - 1] < start:
                end = min(done + step, self.rows)
                now = pl.col(_RANK) < end
                yield held.filter(now).sort(_RANK).drop(_RANK).rechunk()
                held = held.filter(~now)
                done = end

    def _sorted(self, step: int, rank: np.ndarray) -> Iterator[pl.DataFrame]:
        assert self.order is not None
        pieces = -(-self.rows // step)
        span = step * -(-pieces // MAX_BUCKETS)  # rows a bucket holds: whole pieces
        buckets: dict[int, Path] = {}
        writers: dict[int, Any] = {}
        start = 0
        try:
            for batch in self._grouped(span):
                ranks = rank[start:start + batch.num_rows]
                start += batch.num_rows
                which = ranks // span
                idx = np.argsort(which, kind="stable")
                which = which[idx]
                # gathered by Polars (Arrow's take has no kernel for string views)
                ranked = _frame(batch.to_batches())[idx].with_columns(pl.Series(_RANK, ranks[idx]))
                arrow = ranked.to_arrow(compat_level=pl.CompatLevel.newest())
                del ranked
                cuts = [0, *(np.flatnonzero(np.diff(which)) + 1).tolist(), len(which)]
                for lo, hi in itertools.pairwise(cuts):
                    k = int(which[lo])
                    if k not in writers:
                        buckets[k] = self.folder / f"bucket-{k:05d}.arrow"
                        writers[k] = ipc.new_stream(str(buckets[k]), arrow.schema)
                    writers[k].write_table(arrow.slice(lo, hi - lo))
            for w in writers.values():
                w.close()
            writers.clear()
            for k in sorted(buckets):
                bucket = _frame(list(self._batches(buckets[k]))).sort(_RANK).drop(_RANK)
                buckets.pop(k).unlink()
                for lo in range(0, bucket.height, step):
                    yield bucket.slice(lo, step).rechunk()
                del bucket
        finally:
            for w in writers.values():
                w.close()
