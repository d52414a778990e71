"""Put each row's ``_extra`` text into a table written in key order, a chunk at a time.

The transform builds a table without the staged ``_extra`` texts (the widest data of an export),
carrying for each row where its text sits (:data:`etl.dataset.XREF`: the level and the row's
number among the level's staged rows) and, where a cleaning step changed a typed value, the
export's originals (:data:`etl.dataset.PATCH`). Once the table's key order is known:

1. every staged chunk of the levels involved is read once, a row group at a time (``_extra``
   only), and each text that belongs to the table is appended, with its place in key order, to
   the bucket of the output chunk it goes to (Arrow IPC files in a temporary folder);
2. each output chunk then reads its one bucket and orders the texts by place, merging the
   originals in where there are any.

So the texts are read and written once more, in order, and memory holds one row group and one
output chunk's texts, whatever the size of the export.

Both steps run in C where it is built (etl/transform/_reorder.c: a bucket is then a file of
``[place][length][text]`` records, appended to as the row groups go by): on the x5 copy of the
real export the Arrow IPC buckets, filled and read through Polars and Arrow's take, cost 1.5 s
of the effects table's 2.3 s. The Python version is what runs without the compiler.
"""

from __future__ import annotations

import shutil
import struct
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from etl.dataset import STAGED_EXTRA, XREF_SHIFT
from etl.errors import RunStateError
from etl.jsontext import add_keys, parse_record
from etl.metrics import release_free_memory
from etl.staging_fs import StagePath, parquet_source

try:
    from etl.transform import _reorder as _native  # type: ignore[attr-defined]
except ImportError:  # built by `pip install -e .`; the Python version is used without it
    _native = None

_ROW_MASK = (1 << XREF_SHIFT) - 1
#: Staged rows read at a time: each batch (its texts, their runs and the compressed runs) is
#: live at once; 16,384 rows of the effects held 45 MB of them at the transform's peak.
_BATCH = 4_096
_SCHEMA = pa.schema([("place", pa.int64()), ("text", pa.large_string())])


class ExtraFetcher:
    """The ``_extra`` texts of one table, bucketed by output chunk (see the module's doc).

    ``xref``: each table row's :data:`~etl.dataset.XREF`, in key order (null: the row has none,
    its ``extra`` is ``{}``). ``levels``: the dataset's level names in order (the number in
    ``xref``); ``level_chunks``: per level, its staged chunks (paths under ``root``, rows)."""

    def __init__(self, xref: pl.Series, *, chunk_rows: int, root: StagePath, tmp: Path,
                 levels: Sequence[str], level_chunks: Mapping[str, list[dict[str, Any]]]) -> None:
        self.n = xref.len()
        self.chunk_rows = chunk_rows
        self.tmp = tmp
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        refs = xref.to_numpy(allow_copy=True) if xref.null_count() == 0 else \
            xref.fill_null(-1).to_numpy(allow_copy=True)
        refs = np.asarray(refs, dtype=np.int64)
        self.native = _native is not None
        batches = _staged_texts(refs, root, levels, level_chunks)
        if self.native:
            self._fill_native(batches)
        else:
            self._fill_python(batches)

    def _fill_python(self, batches: Iterator[tuple[pa.Array, np.ndarray]]) -> None:
        """The buckets as Arrow IPC files (place, text), through Polars."""
        writers: dict[int, ipc.RecordBatchFileWriter] = {}
        try:
            for texts_in, places in batches:
                # an empty object is what a row gets by default: only others travel as Polars
                # strings (the staged chunks hold string views: no copy)
                column = pl.Series(texts_in)
                empty = (column == "{}").fill_null(False).to_numpy()
                keep = (places >= 0) & ~empty
                if not keep.any():
                    continue
                idx = np.nonzero(keep)[0]
                bucket = places[idx] // self.chunk_rows
                first, last = int(bucket.min()), int(bucket.max())
                # Rows come nearly in key order: mostly one bucket, taken in one go.
                for b in ([first] if first == last else np.unique(bucket).tolist()):
                    sel = idx if first == last else idx[bucket == b]
                    w = writers.get(b)
                    if w is None:
                        w = writers[b] = ipc.new_file(self._path(b), _SCHEMA)
                    # the one copy of the texts: gathered, as Arrow large strings
                    texts = column.gather(sel).to_arrow(compat_level=pl.CompatLevel.oldest())
                    w.write_batch(pa.record_batch([pa.array(places[sel]), texts], schema=_SCHEMA))
        finally:
            for w in writers.values():
                w.close()

    def _fill_native(self, batches: Iterator[tuple[pa.Array, np.ndarray]]) -> None:
        """The buckets as files of records (see etl/transform/_reorder.c), appended to as each
        staged row group goes by."""
        files: dict[int, Any] = {}
        try:
            for texts, places in batches:
                for bucket, records in _scatter(texts, places, self.chunk_rows):
                    f = files.get(bucket)
                    if f is None:
                        if len(files) >= _OPEN_BUCKETS:  # close the one open longest
                            files.pop(next(iter(files))).close()
                        f = files[bucket] = open(self._path(bucket), "ab")  # noqa: SIM115
                    raw = pa.py_buffer(records)
                    packed = pa.compress(raw, codec=_CODEC, asbytes=False)
                    f.write(_FRAME.pack(raw.size, packed.size))
                    f.write(packed)
        finally:
            for f in files.values():
                f.close()

    @property
    def nchunks(self) -> int:
        return max(1, -(-self.n // self.chunk_rows))

    def _path(self, bucket: int) -> Path:
        return self.tmp / f"bucket-{bucket:05d}"

    def chunk(self, index: int, length: int, patches: pl.Series | None = None) -> pl.Series:
        """The ``extra`` texts of output chunk ``index`` (``length`` rows), in key order; rows
        without a staged text get ``{}``; ``patches`` (the chunk's PATCH values) merged in."""
        path = self._path(index)
        base = index * self.chunk_rows
        if self.native:
            parts = []
            if path.exists():
                packed = path.read_bytes()
                path.unlink()
                at = 0
                while at < len(packed):
                    raw_size, size = _FRAME.unpack_from(packed, at)
                    at += _FRAME.size
                    parts.append(pa.decompress(memoryview(packed)[at:at + size], raw_size,
                                               codec=_CODEC, asbytes=False))
                    at += size
                del packed
            try:
                offsets, data = _native.gather(parts, base, length)
            except ValueError as exc:
                raise RunStateError(str(exc)) from None
            del parts
            out = pl.Series("extra", pa.Array.from_buffers(
                pa.large_string(), length, [None, pa.py_buffer(offsets), pa.py_buffer(data)]))
            return _patched(out, patches)
        slot = np.full(length, -1, dtype=np.int64)
        texts: pa.Array = pa.array([], pa.large_string())
        if path.exists():
            with pa.memory_map(str(path)) as source:
                table = ipc.open_file(source).read_all()
            places = table.column("place").to_numpy() - base
            if len(places) and (places.min() < 0 or places.max() >= length):
                raise RunStateError("an extra text belongs outside its chunk; a bug: report it")
            slot[places] = np.arange(len(places))
            texts = table.column("text").combine_chunks()
            del table
            path.unlink()
        taken = texts.take(pa.array(slot, mask=slot < 0)).fill_null("{}")
        return _patched(pl.Series("extra", taken), patches)

    def close(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def _staged_texts(refs: np.ndarray, root: StagePath, levels: Sequence[str],
                  level_chunks: Mapping[str, list[dict[str, Any]]]) -> Iterator[tuple[pa.Array, np.ndarray]]:
    """Each batch of :data:`_BATCH` staged ``_extra`` texts of the levels ``refs`` point into,
    with each text's place in key order (-1: not in this table); batches of no place skipped."""
    have = refs >= 0
    numbers = np.unique(refs[have] >> XREF_SHIFT) if have.any() else np.array([], np.int64)
    for number in numbers.tolist():
        name = levels[number]
        mine = np.nonzero(have & ((refs >> XREF_SHIFT) == number))[0]
        total = sum(int(c["rows"]) for c in level_chunks[name])
        place_of = np.full(total, -1, dtype=np.int64)
        place_of[refs[mine] & _ROW_MASK] = mine
        start = 0
        for chunk in level_chunks[name]:
            pf = pq.ParquetFile(parquet_source(root / chunk["path"]))
            for batch in pf.iter_batches(batch_size=_BATCH, columns=[STAGED_EXTRA]):
                places = place_of[start:start + batch.num_rows]
                start += batch.num_rows
                if (places >= 0).any():
                    yield batch.column(0), places
            del pf
            # the string views' 32 KiB blocks of the chunk just read stay in the heap
            release_free_memory()


#: Bucket files kept open while they are filled (rows come nearly in key order: few at a time).
_OPEN_BUCKETS = 64
#: A bucket file is a series of runs, each compressed: the texts of an export repeat (the x5
#: copy's effects: 46 times smaller in LZ4, compressed at 4 GB/s), and writing them out whole
#: through the page cache was most of the fetch's time (0.58 s of its 0.72 s there).
_CODEC = "lz4"
_FRAME = struct.Struct("<qq")  # a run's size, then its compressed size


def _scatter(column: pa.Array, places: np.ndarray, chunk_rows: int) -> list[tuple[int, Any]]:
    """:func:`etl.transform._reorder.scatter` of a staged ``_extra`` column: its Arrow buffers
    as they are when it holds string views, else as large strings."""
    if not pa.types.is_string_view(column.type):
        column = column.cast(pa.large_string())
    bufs = column.buffers()
    kind = "view" if pa.types.is_string_view(column.type) else "large"
    data = [b for b in bufs[2:] if b is not None] if kind == "view" else [bufs[2] or b""]
    return _native.scatter(kind, bufs[0], column.offset, len(column), bufs[1],
                           data, np.ascontiguousarray(places, dtype=np.int64), chunk_rows)


def _patched(out: pl.Series, patches: pl.Series | None) -> pl.Series:
    """``out`` (a chunk's ``extra`` texts) with ``patches`` (the export's originals of cleaned
    values, where there are any) merged in."""
    if patches is not None and patches.null_count() < patches.len():
        rows = np.nonzero(patches.is_not_null().to_numpy())[0]
        merged = [_merge(out[i], patches[i]) for i in rows.tolist()]
        out = out.scatter(rows, pl.Series(merged, dtype=pl.String()))
    return out


def _merge(text: str, patch: str) -> str:
    """``text`` (a record's ``_extra``) with the keys of ``patch`` it lacks added."""
    return add_keys(text, parse_record(patch))
