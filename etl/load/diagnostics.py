"""Why a COPY was refused, and where the refused row came from (see :func:`copy_error`).

Runs in forked workers: PyArrow only (no Polars), and what it returns crosses back pickled.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from etl.errors import EtlError
from etl.run import Run
from etl.staging_fs import RemotePath, StagePath, parquet_source

log = logging.getLogger(__name__)


#: Lineage columns a table chunk may carry beside the table's columns (see etl.transform):
#: the source file (path under the input root), record number in it (0-based) and JSON path of
#: the nested record inside it. Read for errors only; never loaded.
_LINEAGE = ("_file", "_record", "_path")
#: Characters of a refused value shown either side of its offending part.
_EXCERPT = 24

#: Why PostgreSQL refuses a value, by SQLSTATE, for an error's hint.
_REFUSAL_WHY = {
    "22001": "the text is longer than the column allows",
    "22003": "the number is beyond the column's type",
    "22007": "the date or time is not valid",
    "22008": "the date or time is out of PostgreSQL's range",
    "22021": "the text is not valid UTF-8",
    "22P02": "the value is not valid input for the column's type",
    "22P05": "the text holds a character PostgreSQL cannot store",
    "23502": "the column is NOT NULL",
    "23514": "the value breaks a CHECK constraint",
}


def _diagnostics(exc: BaseException) -> dict[str, str]:
    """What PostgreSQL said about a refused statement, by field: ``sqlstate``, ``message``,
    ``detail``, ``context``, ``column``. ADBC's errors carry the server's fields
    (``exc.details``: ``PG_DIAG_*`` pairs, ``exc.sqlstate``); anything else is parsed from
    its text (``... ERROR:  <message>\nDETAIL: ...\nCONTEXT:  COPY t, line N, column c``)."""
    import re

    keys = {"PG_DIAG_SQLSTATE": "sqlstate", "PG_DIAG_MESSAGE_PRIMARY": "message",
            "PG_DIAG_MESSAGE_DETAIL": "detail", "PG_DIAG_CONTEXT": "context",
            "PG_DIAG_COLUMN_NAME": "column"}
    out: dict[str, str] = {}
    for key, value in getattr(exc, "details", None) or []:
        key = key.decode() if isinstance(key, bytes) else str(key)
        if key in keys:
            out[keys[key]] = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    text = str(exc)
    state = getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)
    if not state and (m := re.search(r"SQLSTATE:? ([0-9A-Z]{5})", text)):
        state = m.group(1)
    if state:
        out.setdefault("sqlstate", str(state))
    if "message" not in out and (m := re.search(r"ERROR:\s+(.+)", text)):
        out["message"] = m.group(1).strip()
    if "detail" not in out and (m := re.search(r"DETAIL:\s+(.+)", text)):
        out["detail"] = m.group(1).strip()
    if "context" not in out and (m := re.search(r"CONTEXT:\s+(.*?)(?:\n\. SQLSTATE|\Z)", text, re.S)):
        out["context"] = m.group(1).strip()
    return out


def _copy_position(context: str, columns: Sequence[str]) -> tuple[int | None, str | None]:
    """The row (0-based, over the whole COPY) and column a COPY's error context names: a
    binary COPY says ``COPY <table>, line <N>, column <name>``. The column is matched against
    the table's own names (the longest that fits), so names with commas or colons work too."""
    import re

    m = re.search(r"COPY [^\n]*?, line (\d+)(, column ([^\n]*))?", context)
    if m is None:
        return None, None
    row = int(m.group(1)) - 1
    said = m.group(3)
    if said is None:
        return row, None
    known = [c for c in columns if said == c or said.startswith((c + ":", c + " "))]
    if known:
        return row, max(known, key=len)
    return row, said.split(":", 1)[0].strip() or None


def _show(text: str) -> str:
    """``text`` for a message: control characters (NUL first of all) escaped, quoted."""
    return '"' + "".join(ch if ch.isprintable() or ch == " " else ch.encode("unicode_escape").decode()
                         for ch in text) + '"'


def _offending_part(value: pa.Scalar | None) -> str:
    """What in a refused value PostgreSQL could not take, in a few words: for text, where its
    NUL or its first invalid UTF-8 byte is, with the text around it; otherwise the value."""
    if value is None or not value.is_valid:
        return "the value is null"
    t = value.type
    if (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)
            or pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t)):
        raw = value.cast(pa.binary()).as_py()
        assert isinstance(raw, bytes)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as bad:
            before = raw[:bad.start].decode("utf-8", "replace")
            around = (raw[max(0, bad.start - _EXCERPT):bad.start + _EXCERPT]
                      .decode("utf-8", "backslashreplace"))
            return (f"the text is not valid UTF-8 at byte offset {bad.start} (character "
                    f"{len(before)}) of {len(raw)} bytes: {_show(around)}")
        at = text.find("\x00")
        if at >= 0:
            count = text.count("\x00")
            lo, hi = max(0, at - _EXCERPT), at + _EXCERPT + 1
            excerpt = ("…" if lo else "") + _show(text[lo:hi]) + ("…" if hi < len(text) else "")
            return (f"the text holds NUL (\\x00) at offset {at} of {len(text)} characters"
                    + (f" ({count} NULs in all)" if count > 1 else "") + f": {excerpt}")
        head = text[:4 * _EXCERPT]
        return (f"the value ({len(text)} characters) begins {_show(head)}"
                + ("…" if len(head) < len(text) else ""))
    shown = repr(value.as_py())
    return f"the value is {shown[:120]}{'…' if len(shown) > 120 else ''}"


def _locate(chunks: Sequence[Mapping[str, Any]], row: int) -> tuple[str, int] | None:
    """The chunk (its path in the run) and row in it of row ``row`` (0-based) of a table."""
    for c in chunks:
        if row < int(c["rows"]):
            return str(c["path"]), row
        row -= int(c["rows"])
    return None


def _failing_row(file: StagePath, row: int, columns: Sequence[str]) -> dict[str, pa.Scalar]:
    """Row ``row`` of a Parquet chunk, the given columns it has, read one row group only."""
    pf = pq.ParquetFile(parquet_source(file))
    have = [c for c in columns if c in pf.schema_arrow.names]
    first = 0
    for i in range(pf.metadata.num_row_groups):
        rows = pf.metadata.row_group(i).num_rows
        if row < first + rows:
            group = pf.read_row_group(i, columns=have)
            return {c: group.column(c)[row - first] for c in have}
        first += rows
    return {}


def copy_error(exc: BaseException, run: Run, name: str, entry: Mapping[str, Any]) -> EtlError:
    """A refused COPY (a permanent error: a bad value, a constraint) as an error that names
    where the row came from: the source file and record (and the JSON path of a nested
    record) from the failing row's lineage (``_file``, ``_record``, ``_path``: columns of the
    chunk, or of the table's ``lineage_chunks`` beside it, row for row), or, for a table without
    lineage, its ``source_file`` column, or else the chunk file and row;
    the column PostgreSQL named, with the part of the value it refused (a NUL's position and
    the text around it, an invalid UTF-8 byte, a number, a null); the SQLSTATE; and always the
    staged chunk file and row. The error's ``file`` and ``record`` are the source's, when known.

    Runs in a forked worker: PyArrow only (no Polars), and what it returns crosses back pickled.
    """
    diag = _diagnostics(exc)
    chunks = entry.get("chunks", [])
    chunk: StagePath | None = run.path / chunks[0]["path"] if chunks else None
    row: int | None = None
    column = diag.get("column")
    columns: list[str] = []
    try:
        if chunk is not None:
            columns = list(pq.ParquetFile(parquet_source(chunk)).schema_arrow.names)
    except Exception:  # best effort: the error itself matters more
        log.debug("cannot read the chunk's schema", exc_info=True)
    line, said = _copy_position(diag.get("context", ""), columns)
    column = column or said
    if line is not None and (found := _locate(chunks, line)) is not None:
        chunk, row = run.path / found[0], found[1]
    values: dict[str, pa.Scalar] = {}
    if row is not None and chunk is not None:
        try:
            values = _failing_row(chunk, row, [*_LINEAGE, "source_file", *([column] if column else [])])
            # Lineage kept in files of its own beside the chunks: the same rows, in order.
            beside = _locate(entry.get("lineage_chunks") or [], line) if line is not None else None
            if "_file" not in values and beside is not None:
                values |= _failing_row(run.path / beside[0], beside[1], _LINEAGE)
        except Exception:
            log.debug("cannot read the failing row", exc_info=True)

    def lineage(col: str) -> Any:
        v = values.get(col)
        return v.as_py() if v is not None and v.is_valid else None

    file: str | Path | None = chunk if not isinstance(chunk, RemotePath) else str(chunk)
    record: int | None = row
    at = ""
    if lineage("_file") is not None:
        rel = str(lineage("_file"))
        paths = {s.get("relpath"): s.get("path") for s in run.manifest.get("sources") or []}
        file = paths.get(rel) or rel
        record = lineage("_record")
        at = f" of {lineage('_path')}" if lineage("_path") else ""
    elif lineage("source_file") is not None:
        file, record = str(lineage("source_file")), None
    state = diag.get("sqlstate")
    if not state and "message" not in diag:  # not PostgreSQL's refusal: reading the rows failed
        text = str(exc).strip()
        if "Python exception:" in text:  # the reader's own error, quoted by the driver
            text = text.rstrip().rsplit("\n", 1)[-1]
        return EtlError(f"COPY of table {name} failed: {text}", dataset=run.dataset_name,
                        run=run.id, file=file,
                        hint="check the run's table files (`etl rebuild` checks them) or transform "
                             "the run again, then run the load again")
    said_text = diag.get("message") or str(exc).strip()
    lines = [f"COPY of table {name} refused the row{at}: {said_text}"
             + (f" (SQLSTATE {state})" if state else "")]
    if diag.get("detail"):
        lines.append(f"  detail: {diag['detail']}")
    if column is not None:
        part = (_offending_part(values.get(column)) if column in values
                else "the value could not be read back from the chunk")
        lines.append(f"  column {column}: {part}")
    if row is not None:
        lines.append(f"  staged as: {chunk}, row {row}")
    why = _REFUSAL_WHY.get(state or "", "PostgreSQL refused the value")
    if state == "22021" and "0x00" in said_text:
        why = "PostgreSQL text cannot hold NUL (\\u0000)"
    return EtlError("\n".join(lines), dataset=run.dataset_name, run=run.id, file=file,
                    record=record,
                    hint=f"{why}: fix the source record, or the dataset's rules and cleaning so that "
                         "validate catches it, then run validate, transform and the load again "
                         "(a permanent error: not retried)")

