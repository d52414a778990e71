"""A staged table as Arrow: the stream a COPY sends, and the frames a checksum is computed over.

:func:`table_reader` runs in forked workers too, so it uses PyArrow only (no Polars).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Literal

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from etl.dataset import Table
from etl.errors import RunStateError
from etl.jsonb import pg_texts
from etl.load._utils import json_columns
from etl.run import JSON_PIECE_ROWS, Run, comparable_json
from etl.staging_fs import parquet_source

#: How :func:`frames` gives jsonb columns.
JsonbForm = Literal["as-is", "pg", "meaning"]

#: Rows per Arrow batch read from a Parquet chunk.
_BATCH_ROWS = 65_536


def frames(batches: Iterable[pa.RecordBatch], table: Table,
           json_dtypes: Mapping[str, str] | None = None, *, jsonb: JsonbForm = "as-is"
           ) -> Iterator[pl.DataFrame]:
    """Arrow batches (staged or read back) as frames of the table's columns (any other column,
    such as the lineage ``_file``, ``_record``, ``_path``, left out), typed like the table,
    json columns as their text: what checksums are computed over.

    ``jsonb``: how jsonb columns are given. ``"as-is"``: their text (read back from the
    database, or staged by a transform that wrote them as PostgreSQL prints them, see
    :data:`etl.run.CHECKSUM_FORM`); ``"pg"``: rewritten into PostgreSQL's form first (staged by
    an older transform); ``"meaning"``: decoded into ``json_dtypes``, so values compare by
    meaning whatever their text (see :func:`etl.run.comparable_json`)."""
    schema = dict(table.polars_schema)
    names = list(schema)
    json_cols = json_columns(table)
    for batch in batches:
        if batch.schema.names != names:
            batch = batch.select(names)
        if any(isinstance(f.type, pa.BaseExtensionType) for f in batch.schema):  # jsonb: arrow.json
            batch = pa.RecordBatch.from_arrays(
                [c.storage if isinstance(c.type, pa.BaseExtensionType) else c for c in batch.columns],
                names=batch.schema.names)
        df = pl.from_arrow(batch)
        assert isinstance(df, pl.DataFrame)
        df = df.cast(schema)  # type: ignore[arg-type]
        if not json_cols or jsonb == "as-is":
            yield df
            continue
        if jsonb == "pg":
            yield df.with_columns(pg_texts(df.get_column(c)) for c in json_cols)
            continue
        for start in range(0, df.height, JSON_PIECE_ROWS):  # decoded jsonb is many times its text
            yield comparable_json(df.slice(start, JSON_PIECE_ROWS), json_cols, json_dtypes or {})


def table_reader(run: Run, table: Table, entry: dict[str, Any], *, for_copy: bool = False,
                 tag: tuple[str, str] | None = None, schema: pa.Schema | None = None
                 ) -> tuple[pa.RecordBatchReader, int]:
    """A stream of the table's staged rows (bounded memory), and its row count.

    Only the table's columns are read from each chunk, by name: lineage columns a chunk may
    carry beside them (``_file``, ``_record``, ``_path``: where each row came from, see
    :func:`etl.load.diagnostics.copy_error`) are never sent to PostgreSQL. ``json`` columns go
    as plain text (the binary COPY's json form is the text itself).

    ``for_copy``: jsonb columns are sent in jsonb's binary wire form, a version byte (1) and
    the JSON text, as Arrow binary: the binary COPY refuses plain text in a jsonb column, and
    bytes pass through every ADBC driver version unchanged (the pinned 1.8.0 does not know the
    Arrow JSON extension type; README, Performance, says why that version). ``tag``: (column,
    value): that column holds ``value`` in every row (``etl load --tag``). ``schema``: the
    table's Arrow schema, when the caller has it (a forked worker must not call Polars)."""
    schema = schema if schema is not None else table.polars_schema.to_arrow()
    paths = [run.path / c["path"] for c in entry.get("chunks", [])]
    for path in paths:  # a chunk without a column would otherwise fail mid-COPY, obscurely
        missing = [n for n in schema.names if n not in pq.read_schema(parquet_source(path)).names]
        if missing:
            raise RunStateError(f"table {table.name}'s chunk has no column(s) {missing}",
                                dataset=run.dataset_name, run=run.id, file=path,
                                hint=f"transform the run again: `etl transform {run.path}`")
    json_cols = set(json_columns(table)) if for_copy else set()
    out_schema = pa.schema([pa.field(f.name, pa.binary()) if f.name in json_cols else f
                            for f in schema])
    jsonb_version = pa.scalar(b"\x01")

    def tag_json(batch: pa.RecordBatch) -> pa.RecordBatch:
        arrays = [pc.binary_join_element_wise(jsonb_version, col.cast(pa.string()).cast(pa.binary()),
                                              b"")
                  if name in json_cols else col for name, col in zip(batch.schema.names, batch.columns,
                                                                      strict=True)]
        return pa.RecordBatch.from_arrays(arrays, schema=out_schema)

    def retag(batch: pa.RecordBatch) -> pa.RecordBatch:
        assert tag is not None
        i = batch.schema.get_field_index(tag[0])
        value = pa.array([tag[1]] * batch.num_rows, batch.schema.field(i).type)
        return batch.set_column(i, batch.schema.field(i), value)

    def batches() -> Iterator[pa.RecordBatch]:
        for path in paths:
            for batch in pq.ParquetFile(parquet_source(path)).iter_batches(batch_size=_BATCH_ROWS,
                                                           columns=schema.names):
                batch = batch if batch.schema == schema else batch.cast(schema)
                if tag is not None:
                    batch = retag(batch)
                yield tag_json(batch) if json_cols else batch

    return pa.RecordBatchReader.from_batches(out_schema, batches()), int(entry["rows"])

