"""Transform: accepted staged rows → target tables as Parquet under ``tables/<table>/``.

The dataset's transform turns LazyFrames of accepted, cleaned levels into one LazyFrame per
target table. Here every table is cast to its declared columns, checked (primary key present and
unique), sorted by its primary key — so the same input always gives the same files — and written
in chunks. Only rows that passed validation are read.

The sort never copies a whole table, and a table is never held whole beyond a budget (an eighth
of the memory limit the run was staged with): the table is built in whatever order its plan
gives, the order by primary key is computed on the key columns alone, and each chunk gathers its
rows through a slice of that order; a table past the budget is spilled to a file as the plan
gives it and read back in key order, sorted outside memory if need be
(:mod:`etl.transform.ordered`). Sorting the frame itself would gather a full second copy of
every column (a wide text column such as a jsonb ``params`` doubles) while the first is alive.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from etl.config import Settings, memory_bytes
from etl.dataset import EXTRA, PATCH, STAGED_EXTRA, XREF, Dataset, Table, strip_json_nul_texts
from etl.errors import ConfigError, RunStateError
from etl.jsonb import pg_texts
from etl.metrics import Phase, release_free_memory, timed
from etl.run import (
    CHECKSUM_FORM,
    JSON_SAMPLE,
    TABLE_COMPRESSION,
    Checksum,
    ChunkWriter,
    Run,
    frames_checksum,
    json_dtypes,
    locks_staging,
    replace_dir,
    run_folder,
    schema_to_json,
)
from etl.staging_fs import RemotePath, remove_tree, work_dir
from etl.transform.errors import KeyViolation
from etl.transform.extra_fetch import ExtraFetcher
from etl.transform.ordered import KeyOrdered

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True, slots=True)
class TransformResult:
    run: Run
    rows: dict[str, int]
    phase: Phase
    #: What this step added to the run's manifest (written by :meth:`Run.advance`).
    additions: Mapping[str, Any] = field(default_factory=dict)


def table_checksum(df: pl.DataFrame) -> str:
    """The content checksum of a whole table (see :func:`etl.run.frames_checksum`)."""
    return frames_checksum([df])


#: Lineage columns a table's chunks keep (beside its own columns) where its rows come one to one
#: from staged records: where each row came from, for errors and ``etl reconcile``. They are not
#: loaded.
TABLE_LINEAGE = ("_file", "_record", "_path")
#: A table is held whole while it takes at most this share of the memory limit the run was
#: staged with (``--memory-limit``, 256MB by default); a bigger one is spilled to a file beside
#: the table and read back (sorted outside memory if need be: :mod:`etl.transform.ordered`).
TABLE_SHARE = 8
#: Rows per piece (and row group) of a table whose ``extra`` texts are fetched into place.
EXTRA_PIECE_ROWS = 16_384


def _shape(table: Table, lf: pl.LazyFrame) -> tuple[pl.LazyFrame, pl.Schema]:
    """The table's columns, typed, then the lineage columns the plan has; and their schema.
    A table's ``extra`` column is the staged ``_extra`` when the plan does not name it."""
    have = lf.collect_schema()
    if EXTRA in (c.name for c in table.columns) and EXTRA not in have and STAGED_EXTRA in have:
        lf = lf.with_columns(pl.col(STAGED_EXTRA).alias(EXTRA))
        have = lf.collect_schema()
    # extra comes later, fetched by each row's XREF (see etl.transform.extra_fetch), when the plan has it
    fetched = {EXTRA} if XREF in have and EXTRA not in have else set()
    missing = [c.name for c in table.columns if c.name not in have and c.name not in fetched]
    if missing:
        raise RunStateError(f"transform for table {table.name} gives no column(s) {missing}",
                            hint="fix the dataset's transform")
    schema = dict(table.polars_schema)
    lineage = ({c: have[c] for c in TABLE_LINEAGE}
               if all(c in have for c in TABLE_LINEAGE) and not set(TABLE_LINEAGE) & set(schema)
               else {})
    cols = [pl.col(c.name).cast(schema[c.name]) for c in table.columns if c.name in have]
    hidden = {c: have[c] for c in (XREF, PATCH) if c in have and EXTRA not in have}
    out = lf.select(cols + list(lineage) + list(hidden))
    return out, pl.Schema({**{c: schema[c] for c in schema if c in have}, **lineage, **hidden})


#: Chunks go to Arrow in Polars' own string layout (string_view), which is what the tables'
#: Arrow schema declares: no conversion to large_string and back. The Parquet bytes are the same.
_ARROW_LEVEL = pl.CompatLevel.newest()


def _read_chunks(folder: Path, table: Table, batch_rows: int = 100_000,
                 columns: list[str] | None = None) -> Iterator[pl.DataFrame]:
    """A table's written chunks (or some of their ``columns``), read back a file at a time,
    typed like the table, in pieces of ``batch_rows``."""
    schema = {name: dtype for name, dtype in table.polars_schema.items()
              if columns is None or name in columns}
    for path in sorted(folder.glob("*.parquet")):
        df = pl.read_parquet(path, columns=list(schema)).cast(schema)  # type: ignore[arg-type]
        for start in range(0, df.height, batch_rows):
            yield df.slice(start, batch_rows)
        del df


def _json_columns(table: Table) -> list[str]:
    return [c.name for c in table.columns if c.type == "jsonb"]


def _written_json_dtypes(folder: Path, table: Table, columns: list[str]) -> dict[str, str]:
    """:func:`etl.run.json_dtypes` of a written table: the same sample (the first values in key
    order), read back from its first chunk(s) once the table itself is dropped, so the decoding
    the inference does is not added to the table's memory."""
    if not columns:
        return {}
    found: dict[str, list[pl.Series]] = {c: [pl.Series(c, [], dtype=pl.String)] for c in columns}
    have = dict.fromkeys(columns, 0)
    for part in _read_chunks(folder, table, JSON_SAMPLE, columns):
        for col in columns:
            if have[col] < JSON_SAMPLE:
                values = part.get_column(col).drop_nulls()
                found[col].append(values)
                have[col] += values.len()
        if min(have.values()) >= JSON_SAMPLE:
            break
    out: dict[str, str] = {}
    for col in columns:
        out.update(json_dtypes(pl.DataFrame(pl.concat(found[col])), [col]))
    return out


def _check_keys(table: Table, df: pl.DataFrame, order: pl.Series | None = None) -> None:
    """Primary key present and unique (``df``: at least the key columns). ``order`` sorts ``df``
    by its key (None: ``df`` is sorted already)."""
    pk = list(table.primary_key)
    keys = df.select(pk) if order is None else df.select(pk)[order]
    nulls = keys.select(pl.any_horizontal([pl.col(c).is_null() for c in pk]).sum()).item()
    if nulls:
        raise KeyViolation(f"table {table.name}: {nulls} row(s) with an empty primary key {pk}",
                            hint="the dataset's transform or rules miss a case; report it")
    # ``keys`` are sorted, so duplicates sit next to each other: comparing each row with the
    # one before costs a pass, where is_duplicated() hashed every key (~450 MB at 2.5M rows).
    same_as_previous = pl.all_horizontal([pl.col(c) == pl.col(c).shift(1) for c in pk])
    dups = keys.select(same_as_previous.fill_null(False).sum()).item()
    if dups:
        raise KeyViolation(f"table {table.name}: {dups} row(s) share a primary key {pk}",
                            hint="add a unique rule for the key to the dataset's rules")


def _check_required(table: Table, nulls: Mapping[str, int]) -> None:
    """Required columns filled: ``nulls`` are their null counts (extra is fetched later: never
    null)."""
    for name, n in nulls.items():
        if n:
            raise KeyViolation(f"table {table.name}: {n} row(s) without {name}",
                                hint="add a required rule for it to the dataset's rules")


def build_table(run: Run, dataset: Dataset, table: Table, plan: pl.LazyFrame, chunk_schema: pl.Schema,
                 tmp: Path, chunk_rows: int, *, written: Callable[[], None] | None = None
                 ) -> dict[str, Any]:
    """Table ``table`` built from its ``plan`` and written in chunks under ``tmp/<table>/``
    (lineage beside them), checked and checksummed; its manifest entry (chunk paths as they will
    be once ``tmp`` is renamed to ``tables``). ``written`` is called after each piece is written
    (the ray engine's fault point). A table a task: see :mod:`etl.transform.on_ray`."""
    have = plan.collect_schema()
    required = [c.name for c in table.columns if not c.nullable and c.name in have]
    staged_with = run.manifest.get("settings", {}).get("memory_limit") or Settings().memory_limit
    limit = memory_bytes(staged_with)
    rows = KeyOrdered(plan, list(table.primary_key), tmp / f".sort-{table.name}",
                      keep=[XREF] if XREF in have else [], count_nulls=required,
                      in_memory_bytes=limit // TABLE_SHARE)
    try:
        return _write_table(run, dataset, table, rows, chunk_schema, tmp, chunk_rows, written)
    finally:
        rows.close()


def _write_table(run: Run, dataset: Dataset, table: Table, rows: KeyOrdered, chunk_schema: pl.Schema,
                 tmp: Path, chunk_rows: int, written: Callable[[], None] | None) -> dict[str, Any]:
    _check_keys(table, rows.keys, rows.order)
    _check_required(table, rows.nulls)
    writer = ChunkWriter(tmp / table.name, tmp.parent, chunk_rows=chunk_rows,
                         schema=table.polars_schema.to_arrow(),
                         compression=TABLE_COMPRESSION)
    # Lineage goes to files of its own beside the chunks (same rows, same order), so a
    # table's chunks hold exactly what is loaded and do not depend on file names.
    lineage = [c for c in chunk_schema if c in TABLE_LINEAGE and c not in table.polars_schema]
    hidden = [c for c in chunk_schema if c in (XREF, PATCH)]
    fetcher = None
    if XREF in hidden:
        xref = rows.column(XREF)
        fetcher = ExtraFetcher(
            xref, chunk_rows=EXTRA_PIECE_ROWS, root=run.path,
            tmp=tmp / f".extra-{table.name}",
            levels=list(dataset.levels),
            level_chunks={n: e["chunks"] for n, e in run.manifest["levels"].items()})
        del xref
    lineage_writer = ChunkWriter(tmp / table.name / "lineage", tmp.parent,
                                 chunk_rows=chunk_rows, schema=pl.Schema(
                                     {c: chunk_schema[c] for c in lineage}).to_arrow(),
                                 compression=TABLE_COMPRESSION) if lineage else None
    # To Arrow a chunk at a time; a table whose extra texts are fetched, a smaller piece
    # at a time (each piece a row group), so only that many texts are in memory.
    step = EXTRA_PIECE_ROWS if fetcher is not None else chunk_rows
    json_cols = _json_columns(table)
    target = table.polars_schema
    summed = Checksum()
    for i, piece in enumerate(rows.pieces(step)):
        if fetcher is not None:
            patches = piece.get_column(PATCH) if PATCH in hidden else None
            piece = piece.with_columns(fetcher.chunk(i, piece.height, patches))
        piece = piece.select([*table.polars_schema, *lineage])
        if EXTRA in target:  # _extra's own strip_nul (etl.dataset.STRIP_NUL_EXTRA_DESCRIPTION)
            piece = piece.with_columns(strip_json_nul_texts(piece.get_column(EXTRA)))
        if json_cols:  # in the form PostgreSQL prints: checksums compare as plain text
            piece = piece.with_columns(pg_texts(piece.get_column(c)) for c in json_cols)
        out = piece.drop(lineage)
        # hashed as it goes out (typed like the table, as the chunks read back)
        summed.add(out if out.schema == target else out.cast(target))
        writer.write(out.to_arrow(compat_level=_ARROW_LEVEL))
        del out
        if lineage_writer is not None:
            lineage_writer.write(piece.select(lineage).to_arrow(compat_level=_ARROW_LEVEL))
        del piece
        if written is not None:
            written()
    chunks = writer.close()
    if fetcher is not None:
        fetcher.close()
    lineage_chunks = lineage_writer.close() if lineage_writer is not None else []
    # jsonb columns were written as PostgreSQL prints them, so the checksum hashed their text
    # as it is, and so does the load's read-back. The types their values decode into are
    # recorded for the comparison by meaning a mismatch falls back to.
    dtypes = _written_json_dtypes(tmp / table.name, table, json_cols)
    checksum = summed.value
    for c in (*chunks, *lineage_chunks):  # paths as they will be after the rename
        c["path"] = c["path"].replace(f"{tmp.name}/", "tables/", 1)
    return {
        "rows": rows.rows,
        "schema": schema_to_json(table.polars_schema),
        "lineage": schema_to_json(pl.Schema({c: chunk_schema[c] for c in lineage})),
        "lineage_chunks": lineage_chunks,
        "primary_key": list(table.primary_key),
        "checksum": checksum,
        "json_dtypes": dtypes,
        "checksum_polars": pl.__version__,
        "checksum_form": CHECKSUM_FORM,
        "chunks": chunks,
    }


def plans(run: Run, dataset: Dataset) -> dict[str, tuple[pl.LazyFrame, pl.Schema]]:
    """Each target table's plan (LazyFrames over the run's accepted rows; nothing read yet) and
    the schema of its chunks, by table name."""
    levels = {name: run.accepted(name, dataset, narrow=True) for name in dataset.levels}
    frames = dataset.transform(levels)
    unknown = set(frames) - {t.name for t in dataset.tables}
    if unknown:
        raise RunStateError(f"transform gives tables the dataset does not declare: {unknown}")
    return {t.name: _shape(t, frames[t.name]) for t in dataset.tables}


def _largest_first(run: Run, dataset: Dataset) -> list[Table]:
    """The dataset's tables, those whose home levels staged the most rows first (tables no
    level is homed in, e.g. ones exploded from lists, last; ties in the dataset's order)."""
    staged: dict[str, int] = {}
    for name, lvl in dataset.levels.items():
        if lvl.table is not None:
            rows = int(run.manifest["levels"].get(name, {}).get("rows") or 0)
            staged[lvl.table] = staged.get(lvl.table, 0) + rows
    return sorted(dataset.tables, key=lambda t: -staged.get(t.name, 0))


def _check_validated(run: Run) -> None:
    validation = run.manifest.get("validation")
    if validation is None:
        raise RunStateError(f"run {run.id} has not been validated", run=run.id,
                            hint=f"run `etl validate {run.path}` first")
    if validation["status"] != "passed":
        raise RunStateError(f"run {run.id} failed validation; nothing is transformed", run=run.id,
                            hint=f"see {run.path / 'report.json'}; fix the input or validate again "
                                 "with --max-reject-ratio")


#: The folder a transform writes its tables into, renamed to ``tables`` at the end.
TABLES_TMP = ".tables.tmp"


@locks_staging(run_folder)
def transform(run: Run, dataset: Dataset, *, progress: Progress | None = None,
              settings: Settings | None = None) -> TransformResult:
    """Build the dataset's target tables from the accepted rows of a validated run.

    ``settings.engine == "ray"``: the tables are built as tasks on a Ray cluster, a table a task
    (:mod:`etl.transform.on_ray`), with the same files and checksums as here."""
    run = run.current()
    run.check_dataset(dataset)
    _check_validated(run)
    chunk_rows = int(run.manifest.get("settings", {}).get("chunk_rows", 100_000))
    for leftover in run.path.glob(f"{TABLES_TMP}*"):  # a killed transform's, on either engine
        remove_tree(leftover)
    with timed("transform") as phase:
        if settings is not None and settings.engine == "ray":
            from etl.transform.on_ray import transform_on_ray

            if isinstance(run.path, RemotePath):
                raise ConfigError(f"--engine ray transforms a run on a path every node sees; "
                                  f"{run.path} is on an object store",
                                  hint="transform it with --engine local")

            tmp = run.path / f"{TABLES_TMP}-ray-{secrets.token_hex(4)}"
            entries, phase.extra["ray"] = transform_on_ray(run, dataset, tmp, chunk_rows=chunk_rows,
                                                           settings=settings, progress=progress)
        else:
            tmp = work_dir(run.path, TABLES_TMP)  # local; moved (uploaded) into place below
            entries = {}
            shaped = plans(run, dataset)
            # One table at a time, written and dropped before the next is built: peak memory is
            # the largest table, not all of them (collect_all would share work but hold them all).
            # The largest first, while the process holds least (x5 copy: 435 -> 410 MB).
            built = {}
            for i, table in enumerate(_largest_first(run, dataset)):
                plan, chunk_schema = shaped[table.name]
                built[table.name] = build_table(run, dataset, table, plan, chunk_schema, tmp, chunk_rows)
                release_free_memory()
                if progress:
                    progress("transform", i + 1, len(dataset.tables))
            entries = {t.name: built[t.name] for t in dataset.tables}
        rows = {name: int(e["rows"]) for name, e in entries.items()}
        tmp.mkdir(parents=True, exist_ok=True)
        replace_dir(tmp, run.path / "tables")
        phase.rows = sum(rows.values())
    additions = {"tables": entries, "phases": {"transform": phase.to_dict()}}
    run = run.advance(additions)
    log.info("transformed %s into %d tables, %d rows", run.id, len(rows), phase.rows)
    return TransformResult(run, rows, phase, additions)
