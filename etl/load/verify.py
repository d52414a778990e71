"""Verification: every table read back from the database and checksummed, compared with the
staged tables (row counts and content checksums), and a sample of the source files rebuilt from
the staged rows (:mod:`etl.load.reconcile`). A difference stops the load before the swap."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl
import pyarrow as pa

from etl.dataset import Dataset, Table
from etl.infra import pg
from etl.infra.pg import quote_ident
from etl.load import forked
from etl.load._utils import json_columns
from etl.load.errors import VerificationFailed
from etl.load.tables import JsonbForm, frames, table_reader
from etl.run import CHECKSUM_FORM, Run, frames_checksum

if TYPE_CHECKING:
    from etl.load.state import Load

log = logging.getLogger(__name__)

#: The share of source files the verify step reconciles (see :func:`etl.load.load`).
RECONCILE_SAMPLE = 1 / 32
#: The key of the verify step's reconciliation in its ledger detail.
RECONCILED = "_reconciled"


def verify(load: Load, conn: Any) -> dict[str, Any]:
    """The ``verify`` step: each table's rows and checksum as read back (by its ``keys`` step,
    or now) must equal the staged ones; then the sample's reconciliation."""
    results: dict[str, tuple[int, str]] = {}
    for name in load.tables:
        detail = load.steps.get(f"keys:{name}") or {}
        if "checksum" in detail:
            results[name] = (int(detail["rows"]), str(detail["checksum"]))
        else:
            results[name] = verify_table(load, name)
    problems = []
    for name, (rows, checksum) in results.items():
        want_rows = int(load.entries[name]["rows"])
        want = _staged_checksum(load, name)
        if rows != want_rows:
            problems.append(f"{name}: {rows:,} rows in the database, {want_rows:,} staged")
        elif checksum != want and not _same_by_meaning(load, name):
            problems.append(f"{name}: content checksum {checksum} differs from the staged {want}")
    if problems:
        raise VerificationFailed(
            "the loaded tables differ from the staged ones; nothing was swapped in: "
            + "; ".join(problems), dataset=load.dataset.name, run=load.run.id,
            hint=f"inspect schema {load.build} (the next load drops it); report it with the "
                 "run directory")
    out: dict[str, Any] = {name: {"rows": r, "checksum": c} for name, (r, c) in results.items()}
    out[RECONCILED] = _reconcile(load)
    return out


def verify_table(load: Load, name: str, jsonb: JsonbForm = "as-is") -> tuple[int, str]:
    """Table ``name`` of the build schema read back (in this thread's worker): rows, checksum
    (jsonb columns hashed as PostgreSQL prints them, or by meaning: see :func:`frames`)."""
    table = load.tables[name]
    cols = ", ".join(quote_ident(c.name) for c in table.columns)

    def attempt() -> tuple[int, str]:
        batches = load.stream_in_worker(
            _read_back, f"SELECT {cols} FROM {quote_ident(load.build)}.{quote_ident(name)}")
        checksum = frames_checksum(frames(batches, table, load.entries[name].get("json_dtypes"),
                                          jsonb=jsonb))
        rows = int(checksum.rsplit("-", 1)[1]) if "-" in checksum else 0
        return rows, checksum

    return load.retry(f"verification of {name}", attempt)


def _read_back(load: Load, query: str) -> Iterator[pa.RecordBatch]:
    """In a worker: ``query``'s rows as Arrow batches (checked by the loading process)."""
    conn = load.adbc()
    try:
        yield from _query_batches(conn, query)
        conn.rollback()
    except BaseException:
        load.drop_adbc()
        raise


def _query_batches(conn: Any, query: str) -> Iterator[pa.RecordBatch]:
    """``query``'s rows through an ADBC connection, as Arrow batches."""
    cur = conn.cursor()
    cur.execute(query)
    yield from cur.fetch_record_batch()
    cur.close()


def _staged_checksum(load: Load, name: str, jsonb: JsonbForm | None = None) -> str:
    """The staged table's checksum, recomputed when it was made by another Polars version
    (the row hash is Polars' own and may change between versions) or an older transform (whose
    jsonb texts are not in PostgreSQL's form), or when ``jsonb`` asks for another form."""
    entry = load.entries[name]
    tag = load.tag_of(name)
    written: JsonbForm = "as-is" if entry.get("checksum_form") == CHECKSUM_FORM else "pg"
    if (jsonb is None and written == "as-is" and entry.get("checksum_polars") == pl.__version__
            and tag is None):
        return str(entry["checksum"])
    reader, _ = table_reader(load.run, load.tables[name], entry, tag=tag)
    return frames_checksum(frames(reader, load.tables[name], entry.get("json_dtypes"),
                                  jsonb=jsonb or written))


def _same_by_meaning(load: Load, name: str) -> bool:
    """Whether table ``name``'s jsonb values, read back and staged, are the same values when
    their texts are not (a value PostgreSQL prints in a form :mod:`etl.jsonb` did not foresee):
    both sides decoded and compared by meaning, slower. False for a table without jsonb."""
    if not json_columns(load.tables[name]):
        return False
    log.warning("table %s: the jsonb texts read back differ from the staged ones; comparing "
                "the values by meaning", name)
    _, read = verify_table(load, name, jsonb="meaning")
    return read == _staged_checksum(load, name, jsonb="meaning")


def _reconcile(load: Load) -> dict[str, Any]:
    """The loaded rows equal the staged tables (checked above); here the staged tables are
    proven to rebuild the export: a sample of its files (chosen by content hash), every
    record of them rebuilt and compared (see :mod:`etl.load.reconcile`). ``etl reconcile RUN``
    does all files."""
    from etl.load.reconcile import reconcile, sample_files

    homed = {lvl.table for lvl in load.dataset.levels.values() if lvl.table}
    if load.reconcile_sample <= 0 or not homed:
        return {"skipped": "off"}
    if any(not load.entries.get(t, {}).get("lineage_chunks") and int(load.entries.get(t, {})
           .get("rows", 0)) for t in homed):
        return {"skipped": "the run's tables carry no lineage (transformed by an older version)"}
    missing = [s["path"] for s in sample_files(load.run, load.reconcile_sample)
               if not Path(s["path"]).is_file()]
    if missing:
        log.warning("reconciliation skipped: %d source file(s) are not where they were staged "
                    "(e.g. %s)", len(missing), missing[0])
        return {"skipped": f"{len(missing)} source file(s) not found, e.g. {missing[0]}"}
    found = reconcile(load.run, load.dataset, sample=load.reconcile_sample)
    summary = {k: v for k, v in found.to_dict().items() if k not in ("levels", "run")}
    if not found.ok:
        first = found.mismatches[0] if found.mismatches else {}
        raise VerificationFailed(
            f"{found.mismatched + found.missing:,} of {found.records:,} source records in "
            f"{found.files:,} file(s) are not rebuilt by the staged rows; nothing was swapped "
            f"in (first: {first.get('file')} record {first.get('record')} "
            f"{first.get('path') or ''} {first.get('key') or ''}: {first.get('difference')})",
            dataset=load.dataset.name, run=load.run.id,
            hint=f"run `etl reconcile {load.run.path}` for the full list; report it with the "
                 "run directory")
    return summary


class _ReadBack:
    """What a forked worker of :func:`table_checksums` serves: queries read through ADBC."""

    def __init__(self, url: str) -> None:
        self.url = url

    def rows(self, query: str) -> Iterator[pa.RecordBatch]:
        conn = pg.connect_adbc(self.url, autocommit=True)
        try:
            yield from _query_batches(conn, query)
        finally:
            conn.close()


def table_checksums(url: str, dataset: Dataset, *, schema: str | None = None,
                    run: Run | None = None, by_meaning: bool = False) -> dict[str, str]:
    """Content checksums of the dataset's tables as they are in the database: what a run's
    manifest records for the tables it loaded. ``by_meaning``: jsonb columns decoded into the
    types ``run``'s transform recorded (see :func:`etl.load.tables.frames`)."""
    entries = (run.manifest.get("tables") or {}) if run is not None else {}
    names: Sequence[Table] = dataset.tables
    out = {}
    pg.preload_adbc()
    worker = forked.Worker(_ReadBack(url), lambda target, send: None)
    try:
        for table in names:
            cols = ", ".join(quote_ident(c.name) for c in table.columns)
            batches = worker.stream(
                "rows", f"SELECT {cols} FROM {quote_ident(schema or dataset.name)}.{quote_ident(table.name)}")
            out[table.name] = frames_checksum(frames(
                batches, table, entries.get(table.name, {}).get("json_dtypes"),
                jsonb="meaning" if by_meaning else "as-is"))
    finally:
        worker.close()
    return out
