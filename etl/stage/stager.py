"""Stage: JSON export(s) → Parquet chunks under ``staging/<dataset>/<run>/raw/<level>/``.

DuckDB's streaming JSON reader (``read_json_objects``) reads every file of a source as a stream
of raw records, a bounded batch at a time. Each batch is numbered (file, record) and parsed once,
with ``from_json`` and a declared structure holding only the fields the source's levels stage
(much faster than letting DuckDB detect full STRUCT types for wide objects); each level's rows
are then unnested from the parsed records, cast to the declared types and written as Parquet
chunks of at most ``chunk_rows`` rows (the SQL is built in :mod:`etl.stage.sql`). Values that do
not fit their declared type are staged as NULL and named in the row's ``_type_errors``, for
``etl validate`` to judge.

Memory is bounded by the batch size (a 24th of the DuckDB memory limit) and the chunk size,
never by the input size.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import re
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import orjson
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from etl.config import Settings, memory_bytes
from etl.dataset import EXTRA_NUL_ROWS, Dataset, SideInput, Source
from etl.errors import ConfigError, DriftError, EtlError, InputError
from etl.metrics import Phase, peak_rss_bytes, timed
from etl.run import (
    MANIFEST,
    MANIFEST_FORMAT,
    RUN_SPEC,
    ChunkWriter,
    Run,
    level_schema,
    locks_staging,
    open_run,
    replace_dir,
    schema_to_json,
    sha256_file,
    write_manifest,
)
from etl.stage.dupkeys import EXAMPLES as DUP_EXAMPLES
from etl.stage.dupkeys import last_wins
from etl.stage.extra import ExtraPlan, attach, extra_nul_rows
from etl.stage.inputs import (
    InputFile,
    assign_sources,
    diagnose_json,
    inspect_file,
    resolve_inputs,
)
from etl.stage.sql import SourcePlan, source_plan, sql_str
from etl.staging_fs import RemotePath, StagePath, download, remove_tree, scratch, upload_tree
from etl.version import __version__

log = logging.getLogger(__name__)

#: Records fetched from DuckDB per Arrow batch (whole files can be large) before grouping by bytes.
_FETCH_ROWS = 16

Progress = Callable[[str, int, int], None]
@dataclass(frozen=True, slots=True)
class StageResult:
    run: Run
    skipped: bool
    phase: Phase
    #: The dataset the run was staged with: the one given, or for a spec dataset whose sources
    #: evolve on drift, the evolved spec's (the later stages must be given this one).
    dataset: Dataset | None = None


# ------------------------------------------------------------------------------ the stage


def compute_run_id(dataset: Dataset, files: Sequence[tuple[str, str, str]]) -> str:
    """Same input content and dataset version → same run id. ``files``: (source, relpath, sha256)."""
    h = hashlib.sha256()
    h.update(json.dumps(dataset.fingerprint(), sort_keys=True).encode())
    for source, relpath, sha256 in sorted(files):
        h.update(f"{source}\0{relpath}\0{sha256}\n".encode())
    return f"{dataset.name}-{h.hexdigest()[:12]}"


def _number_records(batch: pa.Table, state: dict[str, Any]) -> pa.Table:
    """Add ``_record`` (0-based, per file), continuing the count across batches of one file,
    and name files by their path under the input root (``state["relpath"]``), so staged rows do
    not depend on where the export sat."""
    files = batch.column("filename").to_numpy(zero_copy_only=False)
    n = len(files)
    record = np.empty(n, dtype=np.int64)
    if n:
        change = np.empty(n, dtype=bool)
        change[0] = True
        change[1:] = files[1:] != files[:-1]
        starts = np.flatnonzero(change)
        run_start = np.repeat(starts, np.diff(np.append(starts, n)))
        record[:] = np.arange(n) - run_start
        if files[0] == state.get("last_file"):
            record[run_start == 0] += state["next_record"]
        state["next_record"] = int(record[-1]) + 1
        state["last_file"] = files[-1]
    encoded = pc.dictionary_encode(batch.column("filename")).combine_chunks()
    rel = state["relpath"]
    names = pa.array([rel.get(v, v) for v in encoded.dictionary.to_pylist()], pa.string())
    file_col = pc.take(names, encoded.indices)
    return pa.table({"_file": file_col, "_record": record, "json": batch.column("json")})


def _duckdb_error(exc: Exception, files: Sequence[InputFile] = ()) -> EtlError:
    text = str(exc)
    if "Out of Memory" in text:
        return EtlError(f"DuckDB ran out of its memory limit: {text.splitlines()[0]}",
                        hint="raise --memory-limit (e.g. 512MB) or use fewer --threads")
    # read_json_objects quotes the path with "...", read_text (single-object files) with '...'.
    m = (re.search(r'in file "([^"]+)"', text) or re.search(r'[Ff]ile "([^"]+)"', text)
         or re.search(r"[Ff]ile '([^']+)'", text))
    if not m:
        return InputError(f"DuckDB could not read the input: {text}",
                          hint="check the files named above; rerun with --verbose for details")
    path = Path(m.group(1))
    record, offset, reason = diagnose_json(path)
    if record is None and offset is None:
        reason = text.split("Error: ", 1)[-1].strip()
        m2 = re.search(r"record/value (\d+)", text)
        record = int(m2.group(1)) if m2 else None
    return InputError(f"malformed JSON: {reason}", file=path, record=record, offset=offset,
                      hint="fix or remove this file, then stage again")


def _check_records(records: pa.Table, max_record_bytes: int, abs_of: dict[str, str]) -> None:
    js = records.column("json")
    lengths = pc.binary_length(js).to_numpy(zero_copy_only=False)
    too_big = np.flatnonzero(lengths > max_record_bytes)
    if too_big.size:
        i = int(too_big[0])
        raise InputError(
            f"record is {int(lengths[i])} bytes, over the limit of {max_record_bytes} bytes",
            file=abs_of.get(records.column("_file")[i].as_py()),
            record=records.column("_record")[i].as_py(),
            hint="raise the limit with --max-record-bytes (memory grows with it)")
    first = pc.utf8_slice_codeunits(pc.utf8_ltrim_whitespace(js), 0, 1).to_numpy(zero_copy_only=False)
    wrong = np.flatnonzero(first != "{")
    if wrong.size:
        i = int(wrong[0])
        raise InputError(
            f"record is not a JSON object (it starts with {first[i]!r})",
            file=abs_of.get(records.column("_file")[i].as_py()),
            record=records.column("_record")[i].as_py(),
            hint="every record of this export must be an object; fix or remove the file")


def _read_batches(
    reader: duckdb.DuckDBPyConnection, files: list[InputFile], batch_bytes: int,
) -> Iterator[pa.Table]:
    """Numbered record tables of about ``batch_bytes`` each, in file and record order.

    Single-object files are read whole with ``read_text`` (one record each, no parsing here);
    arrays and newline-delimited files go through DuckDB's streaming ``read_json_objects``.
    """
    whole = [f for f in files if f.shape == "object"]
    streamed = [f for f in files if f.shape != "object"]
    state: dict[str, Any] = {"relpath": {str(f.path): f.relpath for f in files}}
    groups: list[tuple[list[InputFile], str]] = [
        (whole, "SELECT filename, content AS json FROM read_text({paths})")]
    # Arrays are read as arrays: format='auto' sniffs with buffers that grow past the reader's
    # memory limit on one large array file (a 530 MB export failed at 512MB). Consecutive files
    # of one kind share a query, so file and record order hold.
    for fmt, run in itertools.groupby(streamed, key=_stream_format):
        groups.append((list(run), "SELECT filename, json FROM read_json_objects({paths}, "
                                  f"format='{fmt}', filename=true, maximum_object_size=4194304)"))
    for group, sql in groups:
        if not group:
            continue
        paths = "[" + ", ".join(sql_str(str(f.path)) for f in group) + "]"
        try:
            stream = reader.sql(sql.format(paths=paths)).to_arrow_reader(_FETCH_ROWS)
            pending: list[pa.RecordBatch] = []
            size = 0
            for batch in stream:
                pending.append(batch)
                size += batch.nbytes
                if size >= batch_bytes:
                    yield _number_records(pa.Table.from_batches(pending), state)
                    pending, size = [], 0
            if pending:
                yield _number_records(pa.Table.from_batches(pending), state)
        except (duckdb.Error, pa.ArrowInvalid, OSError) as exc:
            raise _duckdb_error(exc, group) from exc


def _stream_format(info: InputFile) -> str:
    """``read_json_objects``'s format for a streamed file: ``array`` for a top-level array (as
    inspection found it), ``auto`` otherwise."""
    return "array" if info.shape == "array" else "auto"


def _small_chunks(table: pa.Table, target_bytes: int = 1 << 20) -> pa.Table:
    """The same rows as Arrow chunks of about ``target_bytes``.

    DuckDB's JSON functions keep every document of a vector (up to 2048 rows) parsed at once,
    so wide records in large chunks would need memory in proportion to the batch. Small
    chunks keep that bounded while a whole batch still runs as one query (planning the level
    queries costs milliseconds, so fewer, larger batches are faster)."""
    if table.num_rows == 0:
        return table
    rows = max(8, int(target_bytes * table.num_rows // max(1, table.nbytes)))
    return pa.Table.from_batches(table.to_batches(max_chunksize=rows), schema=table.schema)


class _LevelWorker:
    """Unpacks batches of records into level tables on its own DuckDB connection.

    Each batch is parsed once into the temporary table ``_parsed``; each level's rows are then
    unnested from it. The level queries are bound once (DuckDB relations, re-run per batch):
    binding them costs more than running them on a batch of a few MB."""

    def __init__(self, source: Source, plan: SourcePlan, extra_plan: ExtraPlan, *, memory: str,
                 temp: Path, files: Sequence[InputFile] = ()) -> None:
        self.source = source
        self.plan = plan
        self.files = files  # the files inspected so far, to name a broken one by its full path
        self.con = duckdb.connect(config={
            "memory_limit": memory, "threads": 1, "preserve_insertion_order": True,
            "temp_directory": str(temp)})
        self.levels: dict[str, duckdb.DuckDBPyRelation] = {}
        self.extra_plan = extra_plan

    def close(self) -> None:
        self.con.close()

    def run(self, records: pa.Table) -> dict[str, pa.Table]:
        """The levels of a batch of records. A batch DuckDB cannot fit in its memory limit is
        unpacked in halves (the limit holds; only a single record too large for it is an error):
        how much a batch takes depends on its records' shapes, not only on its bytes."""
        try:
            return self._run(records)
        except duckdb.OutOfMemoryException as exc:
            if records.num_rows < 2:
                raise self._explain(exc, records) from exc
            half = records.num_rows // 2
            log.debug("a batch of %d records exceeds DuckDB's memory limit; unpacking it in halves",
                      records.num_rows)
            parts = [self.run(records.slice(0, half)), self.run(records.slice(half))]
            return {name: pa.concat_tables([p[name] for p in parts]) for name in parts[0]}

    def _run(self, records: pa.Table) -> dict[str, pa.Table]:
        con = self.con
        try:
            con.register("_records", _small_chunks(records))
            try:
                con.execute(f"CREATE OR REPLACE TEMP TABLE _parsed AS {self.plan.parse}")
            finally:
                con.unregister("_records")
            if not self.levels:
                self.levels = {lvl.name: con.sql(self.plan.queries[lvl.name])
                               for lvl in self.source.levels}
            tables = {name: rel.to_arrow_table() for name, rel in self.levels.items()}
            return attach(tables, records, self.extra_plan)
        except duckdb.OutOfMemoryException:
            raise  # run() unpacks the batch in halves
        except duckdb.Error as exc:
            raise self._explain(exc, records) from exc
        finally:
            con.execute("DROP TABLE IF EXISTS _parsed")

    def _explain(self, exc: duckdb.Error, records: pa.Table) -> EtlError:
        if "Malformed JSON" not in str(exc) and "malformed" not in str(exc).lower():
            return _duckdb_error(exc)
        # Whole files are not parsed by the reader: find which one is broken.
        self.con.register("_records_check", _small_chunks(records))
        try:
            rows = self.con.execute(
                "SELECT _file FROM _records_check WHERE NOT json_valid(json) LIMIT 1").fetchall()
        finally:
            self.con.unregister("_records_check")
        if not rows:
            return _duckdb_error(exc)
        relpath = rows[0][0]
        path = next((f.path for f in self.files if f.relpath == relpath), Path(relpath))
        record, offset, reason = diagnose_json(path)
        return InputError(f"malformed JSON: {reason}", file=path, record=record, offset=offset,
                          hint="fix or remove this file, then stage again")


def _inspect_or_quarantine(path: Path, relpath: str, source: str, *, keep: int,
                           max_record_bytes: int) -> tuple[InputFile | dict[str, Any], bytes | None]:
    """:func:`inspect_file`, and for one-object files a full parse; a file that fails either
    comes back as its quarantine entry (name, size, hash, reason) instead of raising."""
    try:
        info, content = inspect_file(path, relpath, source, keep=keep)
        if info.shape == "object":
            text = content
            if text is None and info.size <= max_record_bytes:
                text = path.read_bytes()
            if text is not None:
                try:
                    orjson.loads(text)
                except orjson.JSONDecodeError as exc:
                    raise InputError(f"malformed JSON: {exc}", file=path,
                                     offset=getattr(exc, "pos", None)) from None
        return info, content
    except InputError as exc:
        log.warning("quarantined %s: %s", relpath, exc.message)
        return {"source": source, "relpath": relpath, "path": str(path),
                "size": os.stat(path).st_size, "sha256": sha256_file(path),
                "reason": exc.message, "offset": exc.offset}, None


#: Files inspected by one task of the scan pool: up to this many bytes or files (a large file
#: alone). One task a file cost a future, a queue hand-off and GIL switches per file: on the
#: 17,843 small files of the x5 copy, more than the reading.
_SCAN_GROUP_BYTES, _SCAN_GROUP_FILES = 1 << 20, 64

_Scanned = tuple[Any, bytes | None]


def _inspect_group(group: Sequence[tuple[Path, str, str, int]], *, keep: int, quarantine: bool,
                   max_record_bytes: int) -> list[_Scanned | BaseException]:
    """:func:`inspect_file` (or :func:`_inspect_or_quarantine`) of each file of ``group`` in
    order; a file that raises ends the group with its exception, raised where it stands."""
    out: list[_Scanned | BaseException] = []
    for path, rel, src, _ in group:
        try:
            out.append(_inspect_or_quarantine(path, rel, src, keep=keep, max_record_bytes=max_record_bytes)
                       if quarantine else inspect_file(path, rel, src, keep=keep))
        except Exception as exc:  # raised in order by the consumer
            out.append(exc)
            break
    return out


def _groups(jobs: Sequence[tuple[Path, str, str, int]]) -> Iterator[list[tuple[Path, str, str, int]]]:
    group: list[tuple[Path, str, str, int]] = []
    size = 0
    for job in jobs:
        if group and (size + job[3] > _SCAN_GROUP_BYTES or len(group) >= _SCAN_GROUP_FILES):
            yield group
            group, size = [], 0
        group.append(job)
        size += job[3]
    if group:
        yield group


def _scan_in_order(
    jobs: Sequence[tuple[Path, str, str, int]], pool: ThreadPoolExecutor, *, keep: int, window: int,
    quarantine: list[dict[str, Any]] | None = None, max_record_bytes: int = 64 << 20,
) -> Iterator[tuple[InputFile, bytes | None]]:
    """Inspect files on ``pool`` (a few small ones a task) and yield them in order, with at most
    ``window`` bytes of files read ahead (so memory does not grow with the input). With
    ``quarantine``, files that are not valid JSON are appended to it (see
    :func:`_inspect_or_quarantine`), not yielded."""
    ahead: deque[tuple[Future[list[_Scanned | BaseException]], int]] = deque()
    ahead_bytes = 0
    it = _groups(jobs)
    try:
        while True:
            while ahead_bytes < window or not ahead:
                group = next(it, None)
                if group is None:
                    break
                size = sum(j[3] for j in group)
                ahead.append((pool.submit(_inspect_group, group, keep=keep, quarantine=quarantine is not None,
                                          max_record_bytes=max_record_bytes), size))
                ahead_bytes += size
            if not ahead:
                return
            fut, size = ahead.popleft()
            ahead_bytes -= size
            for item in fut.result():
                if isinstance(item, BaseException):
                    raise item
                info, content = item
                if isinstance(info, dict):
                    assert quarantine is not None
                    quarantine.append(info)
                    continue
                yield info, content
    finally:
        for fut, _ in ahead:
            fut.cancel()


def _object_records(items: list[tuple[InputFile, bytes]]) -> pa.Table:
    """A numbered record table from whole one-object files (record 0 of each).

    The contents are joined into one buffer with an offsets array (far cheaper than converting
    a list of bytes objects), then checked to be valid UTF-8."""
    data = b"".join(c for _, c in items)
    large = len(data) >= 1 << 31
    offsets = np.zeros(len(items) + 1, dtype=np.int64 if large else np.int32)
    np.cumsum([len(c) for _, c in items], out=offsets[1:])
    text = pa.Array.from_buffers(pa.large_string() if large else pa.string(), len(items),
                                 [None, pa.py_buffer(offsets), pa.py_buffer(data)])
    try:
        text.validate(full=True)  # checks UTF-8
    except pa.ArrowInvalid as exc:
        m = re.search(r"string index (\d+)", str(exc))
        info = items[int(m.group(1))][0] if m else next(
            (i for i, c in items if not _is_utf8(c)), items[0][0])
        record, offset, reason = diagnose_json(info.path)
        raise InputError(f"malformed JSON: {reason}", file=info.path, record=record,
                         offset=offset, hint="fix or remove this file, then stage again") from None
    return pa.table({
        "_file": pa.array([i.relpath for i, _ in items], pa.string()),
        "_record": pa.array(np.zeros(len(items), dtype=np.int64)),
        "json": text,
    })


def _is_utf8(content: bytes) -> bool:
    try:
        content.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class LazyReader:
    """The DuckDB connection that streams arrays, NDJSON and large files, opened when the first
    such file comes (an export of one-object files never needs it: a DuckDB instance is ~25 MB
    of RSS before it reads anything)."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.con: duckdb.DuckDBPyConnection | None = None

    def __call__(self) -> duckdb.DuckDBPyConnection:
        if self.con is None:
            self.con = duckdb.connect(config=self.config)
        return self.con

    def close(self) -> None:
        if self.con is not None:
            self.con.close()
            self.con = None


def _source_batches(
    reader: Callable[[], duckdb.DuckDBPyConnection],
    jobs: Sequence[tuple[Path, str, str, int]],
    scan_pool: ThreadPoolExecutor,
    *,
    batch_bytes: int,
    max_record_bytes: int,
    inspected: list[InputFile],
    quarantine: list[dict[str, Any]] | None = None,
) -> Iterator[tuple[pa.Table, int]]:
    """Record tables of about ``batch_bytes`` for one source, each with the input bytes it
    completes. Files are hashed and checked on the way (appended to ``inspected``).

    Small one-object files are read once, here; arrays, NDJSON, gzip and large files then go
    through DuckDB's streaming reader."""
    pending: list[tuple[InputFile, bytes]] = []
    pending_bytes = 0
    later: list[InputFile] = []
    keep = min(batch_bytes, max_record_bytes)
    for info, content in _scan_in_order(jobs, scan_pool, keep=keep, window=batch_bytes,
                                        quarantine=quarantine, max_record_bytes=max_record_bytes):
        inspected.append(info)
        if content is None:
            later.append(info)
            continue
        pending.append((info, content))
        pending_bytes += len(content)
        if pending_bytes >= batch_bytes:
            yield _object_records(pending), sum(i.size for i, _ in pending)
            pending, pending_bytes = [], 0
    if pending:
        yield _object_records(pending), sum(i.size for i, _ in pending)
    if not later:
        return
    abs_of = {f.relpath: str(f.path) for f in later}
    size_of = {f.relpath: f.size for f in later}
    seen: set[str] = set()
    for records in _read_batches(reader(), later, batch_bytes):
        _check_records(records, max_record_bytes, abs_of)
        new = [n for n in pc.unique(records.column("_file")).to_pylist() if n not in seen]
        seen.update(new)
        yield records, sum(size_of.get(n, 0) for n in new)


def _stage_source(
    batches: Iterator[tuple[pa.Table, int]],
    source: Source,
    plan: SourcePlan,
    writers: dict[str, ChunkWriter],
    *,
    extra_plan: ExtraPlan,
    tmp: Path,
    workers: int,
    worker_memory: str,
    progress: Progress | None,
    done_bytes: list[int],
    total_bytes: int,
    files: Sequence[InputFile] = (),
    duplicated: dict[str, Any] | None = None,
    nul_rows: dict[str, int] | None = None,
) -> None:
    """Unpack record batches on ``workers`` threads; write their levels in batch order.
    ``files`` (filled as batches are read) names a broken file by its full path; the records
    that held a key twice (rewritten: the last value wins) are counted in ``duplicated``
    (``records``; ``examples``: the first few, as source, file and record); the rows per level
    whose ``_extra`` the built-in ``strip_nul`` will change, in ``nul_rows``."""
    local = threading.local()
    made: list[_LevelWorker] = []
    lock = threading.Lock()

    def work(records: pa.Table) -> tuple[dict[str, pa.Table], list[tuple[str, int]], dict[str, int]]:
        records, dups = last_wins(records)
        worker = getattr(local, "worker", None)
        if worker is None:
            worker = _LevelWorker(source, plan, extra_plan, memory=worker_memory,
                                  temp=tmp / f".duckdb_tmp_{threading.get_ident()}", files=files)
            local.worker = worker
            with lock:
                made.append(worker)
        result = worker.run(records)
        return result, dups, extra_nul_rows(result)

    def write(done: tuple[dict[str, pa.Table], list[tuple[str, int]], dict[str, int]],
              nbytes: int) -> None:
        result, dups, nuls = done
        if nul_rows is not None:
            for name, n in nuls.items():
                nul_rows[name] = nul_rows.get(name, 0) + n
        if duplicated is not None and dups:
            duplicated["records"] += len(dups)
            room = DUP_EXAMPLES - len(duplicated["examples"])
            duplicated["examples"] += [{"source": source.name, "file": f, "record": r}
                                       for f, r in dups[:max(0, room)]]
        for name, table in result.items():
            writers[name].write(table)
        done_bytes[0] += nbytes
        if progress:
            progress("stage", done_bytes[0], total_bytes)

    in_flight: deque[tuple[Future[tuple[dict[str, pa.Table], list[tuple[str, int]], dict[str, int]]],
                           int]] = deque()
    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="etl-stage") as pool:
            try:
                for records, nbytes in batches:
                    while len(in_flight) >= workers:
                        fut, done = in_flight.popleft()
                        write(fut.result(), done)
                    in_flight.append((pool.submit(work, records), nbytes))
                while in_flight:
                    fut, done = in_flight.popleft()
                    write(fut.result(), done)
            except BaseException:
                for fut, _ in in_flight:
                    fut.cancel()
                raise
    finally:
        for worker in made:
            worker.close()


def _previous_run(
    dataset: Dataset, root: StagePath, jobs: Sequence[tuple[Path, str, str, int]], threads: int,
) -> StagePath | None:
    """A run already staged from exactly this content, found cheaply.

    Only when an earlier run lists the same files with the same sizes are the files hashed
    (without parsing) to compute the run id; a new export costs nothing extra here."""
    if not root.is_dir() or dataset.side_files:
        # Side files (screenshots) are not listed among the sources: stage again, which finds
        # the run by its id (and copies nothing twice into the store).
        return None
    wanted = sorted((src, rel, size) for _, rel, src, size in jobs)
    children: list[StagePath] = list(root.iterdir())
    for run_dir in sorted(children, key=lambda p: p.name):
        manifest = run_dir / MANIFEST
        if run_dir.name.startswith(".") or not manifest.is_file():
            continue
        try:
            data = orjson.loads(manifest.read_bytes())
            sources = [*data.get("sources", []), *data.get("quarantined", [])]
            listed = sorted((f["source"], f["relpath"], f["size"]) for f in sources)
        except (orjson.JSONDecodeError, KeyError, TypeError):
            continue
        if listed != wanted:
            continue
        with ThreadPoolExecutor(max_workers=threads) as pool:
            digests = list(pool.map(lambda j: sha256_file(j[0]), jobs))
        run_id = compute_run_id(dataset, [(src, rel, d) for (_, rel, src, _), d in zip(jobs, digests,
                                                                                      strict=True)])
        found = root / run_id
        return found if (found / MANIFEST).is_file() else None
    return None


@locks_staging(lambda dataset, sources, *, settings, **_: settings.staging_root / dataset.name)
def stage(
    dataset: Dataset,
    sources: Sequence[str | Path],
    *,
    settings: Settings,
    force: bool = False,
    max_record_bytes: int = 64 << 20,
    progress: Progress | None = None,
    strict: bool = False,
) -> StageResult:
    """Stage ``sources`` for ``dataset`` into ``<staging_dir>/<dataset>/<run>/``.

    Returns the run (and ``skipped=True`` when the same content was staged before and
    ``force`` is false). Raises :class:`InputError` naming the file and record on bad input;
    nothing is left that looks like a complete run. Files of a quarantining source
    (``on_bad_file="quarantine"``) that are not valid JSON are left out and listed in the
    manifest's ``quarantined``; ``strict`` makes them an :class:`InputError` too.
    """
    started = time.perf_counter()
    with timed("stage") as phase:
        found = resolve_inputs(sources)
        assigned = assign_sources(dataset, found)
        for src in dataset.sources:
            if src.required and not assigned[src.name]:
                raise InputError(
                    f"no input file for source {src.name!r} of dataset {dataset.name} "
                    f"(patterns {', '.join(src.match)})", dataset=dataset.name,
                    hint="point at the export's root folder")
        threads = settings.threads or os.cpu_count() or 1
        jobs = [(p, rel, s, os.stat(p).st_size) for s, lst in assigned.items() for p, rel in lst]
        root = settings.staging_root / dataset.name
        previous = None if force else _previous_run(dataset, root, jobs, threads)
        if previous is not None:
            log.info("run %s already staged at %s; skipping (use force to redo)", previous.name, previous)
            run = open_run(previous)
            _check_strict(run.manifest, strict)
            phase.rows = sum(e["rows"] for e in run.manifest["levels"].values())
            return StageResult(run, True, phase, _staged_with(dataset, run))

        root.mkdir(parents=True, exist_ok=True)
        # On a remote root the run is written in a local folder first and uploaded (DuckDB and
        # the Parquet writers write local files), its manifest last: see etl.staging_fs.
        with scratch(root, prefix=".stage.tmp-") as here:
            final, dataset, skipped = _stage_in(dataset, sources, found, jobs, here, root,
                                                settings=settings,
                                                force=force, max_record_bytes=max_record_bytes,
                                                progress=progress, strict=strict, phase=phase,
                                                started=started)
        if skipped is not None:
            return skipped
    log.info("staged %d rows from %d files into %s in %.2fs",
             phase.rows, len(jobs), final, phase.seconds)
    run = open_run(final)
    return StageResult(run, False, phase, dataset)


def _stage_in(dataset: Dataset, sources: Sequence[str | Path], found: Sequence[tuple[Path, str]],
              jobs: Sequence[tuple[Path, str, str, int]], here: Path, root: StagePath, *,
              settings: Settings, force: bool, max_record_bytes: int, progress: Progress | None,
              strict: bool, phase: Phase, started: float,
              ) -> tuple[StagePath, Dataset, StageResult | None]:
    """Stage into a temporary folder under ``here`` (``root`` itself when it is local) and move
    it into place as ``root/<run id>``: the run's folder, the dataset it was staged with, and the
    result when the same content was found staged already."""
    tmp = here / f".stage.tmp-{os.getpid()}-{threading.get_ident()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    # Ray tasks on other nodes cannot write in this machine's folder: on a remote root they
    # write in a temporary folder there, which becomes the run (the local files added to it).
    shared = root / tmp.name if isinstance(root, RemotePath) and settings.engine == "ray" else None
    if shared is not None:
        shared.mkdir(parents=True, exist_ok=True)
    try:
        manifest = _stage_into(dataset, jobs, tmp, settings=settings,
                               max_record_bytes=max_record_bytes, progress=progress,
                               roots=_roots(sources, found), shared=shared)
        _check_strict(manifest, strict)
        if dataset.spec_text is not None:
            evolved = _drift(dataset, tmp, manifest, settings, shared=shared)
            if evolved is not None:
                # Stage again with the evolved spec: the new keys get columns of their own.
                found_drift = manifest["drift"]
                dataset = evolved
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir(parents=True)
                if shared is not None:
                    remove_tree(shared)
                    shared.mkdir(parents=True, exist_ok=True)
                manifest = _stage_into(dataset, jobs, tmp, settings=settings,
                                       max_record_bytes=max_record_bytes, progress=progress,
                                       roots=_roots(sources, found), shared=shared)
                manifest["drift"] = found_drift
            _keep_spec(dataset, tmp, manifest)
        final = root / manifest["run_id"]
        if (final / MANIFEST).is_file() and not force:
            # Same content under other names or places than any earlier run listed.
            shutil.rmtree(tmp, ignore_errors=True)
            log.info("run %s already staged at %s; skipping", final.name, final)
            run = open_run(final)
            phase.rows = sum(e["rows"] for e in run.manifest["levels"].values())
            return final, dataset, StageResult(run, True, phase, dataset)
        phase.rows = sum(e["rows"] for e in manifest["levels"].values())
        phase.seconds = time.perf_counter() - started
        phase.peak_rss = peak_rss_bytes()
        if "ray" in manifest:
            phase.extra["ray"] = manifest["ray"]
        manifest["phases"]["stage"] = phase.to_dict()
        if shared is not None:
            upload_tree(tmp, shared)  # side levels' chunks; then the manifest, last of all
            write_manifest(shared, manifest)
            replace_dir(shared, final)
        else:
            write_manifest(tmp, manifest)
            replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if shared is not None:
            remove_tree(shared)
        raise
    return final, dataset, None


def _staged_with(dataset: Dataset, run: Run) -> Dataset:
    """The dataset an earlier run of the same content was staged with: the evolved spec it keeps
    when drift evolved it, else ``dataset``."""
    kept = run.path / RUN_SPEC
    if dataset.spec_text is None or not kept.is_file() or run.manifest["dataset_version"] == dataset.version:
        return dataset
    from etl.spec.dataset import read_dataset, to_dataset
    from etl.spec.model import Spec

    home = dataset.sql_dir.parent.parent if dataset.sql_dir else None
    if isinstance(kept, RemotePath):
        return to_dataset(Spec.from_toml(kept.read_text()), root=home, file=dataset.spec_file)
    return read_dataset(kept, home=home)


def _drift(dataset: Dataset, tmp: Path, manifest: dict[str, Any], settings: Settings, *,
           shared: StagePath | None = None) -> Dataset | None:
    """Check a spec dataset's staged levels for keys and types its spec does not declare, and apply
    each source's policy: ``keep`` (recorded in the manifest's ``drift``, values kept in ``extra``),
    ``freeze`` (:class:`DriftError`), ``evolve`` (the evolved dataset is returned: stage again).
    ``shared``: the remote folder Ray tasks wrote the chunks in (they are copied here to be read)."""
    if isinstance(shared, RemotePath):
        local = tmp.parent / f"{tmp.name}.drift"
        shutil.rmtree(local, ignore_errors=True)
        try:
            for entry in manifest["levels"].values():
                for c in entry["chunks"]:
                    if not (tmp / c["path"]).is_file():  # side levels' chunks are local already
                        download(shared / c["path"], local / c["path"])
                    else:
                        (local / c["path"]).parent.mkdir(parents=True, exist_ok=True)
                        shutil.copyfile(tmp / c["path"], local / c["path"])
            return _drift(dataset, local, manifest, settings)
        finally:
            shutil.rmtree(local, ignore_errors=True)
    from etl.spec.dataset import to_dataset
    from etl.spec.drift import detect, evolve
    from etl.spec.model import Spec

    assert dataset.spec_text is not None
    spec = Spec.from_toml(dataset.spec_text)
    policy = {src.name: src.drift for src in spec.sources}
    watched = {lvl.name for src in dataset.sources if policy.get(src.name, "keep") != "off"
               for lvl in src.levels}
    if not watched:
        return None
    files = {name: [tmp / c["path"] for c in entry["chunks"]] for name, entry in manifest["levels"].items()
             if name in watched}
    fields = {name: {f.name: f.key for f in lvl.fields} for name, lvl in dataset.levels.items()}
    found = detect(spec, files, fields, memory_limit=settings.memory_limit)
    if not found:
        return None
    manifest["drift"] = [{**d.to_dict(), "policy": policy.get(d.source, "keep")} for d in found]
    for d in found:
        log.info("drift (%s): %s", policy.get(d.source, "keep"), d.describe())
    frozen = [d for d in found if policy.get(d.source) == "freeze"]
    if frozen:
        first = frozen[0]
        more = f"; and {len(frozen) - 1} more: " + "; ".join(d.describe() for d in frozen[1:6]) \
            if len(frozen) > 1 else ""
        raise DriftError(
            f"the export holds what the spec does not declare (drift = \"freeze\" for source "
            f"{first.source}): {first.describe()}{more}", dataset=dataset.name, file=first.file,
            record=first.record,
            hint=f"update the spec (etl init --update {dataset.name} SOURCE...), or set drift = "
                 f"\"keep\" or \"evolve\" for source {first.source}"
                 + (f" in {dataset.spec_file}" if dataset.spec_file else ""))
    evolving = [d for d in found if policy.get(d.source) == "evolve"]
    if not evolving:
        return None
    evolved = evolve(spec, evolving)
    return to_dataset(evolved, root=dataset.sql_dir.parent.parent if dataset.sql_dir else None,
                      file=dataset.spec_file)


def _keep_spec(dataset: Dataset, tmp: Path, manifest: dict[str, Any]) -> None:
    """Keep the spec a spec dataset's run was staged with in the run, so the later stages and
    ``etl rebuild`` read that very spec (the user's file may change or move)."""
    assert dataset.spec_text is not None
    data = dataset.spec_text.encode()
    (tmp / RUN_SPEC).write_bytes(data)
    manifest["spec"] = {"file": str(dataset.spec_file) if dataset.spec_file else None,
                        "path": RUN_SPEC, "sha256": hashlib.sha256(data).hexdigest()}


def _check_strict(manifest: Mapping[str, Any], strict: bool) -> None:
    bad = manifest.get("quarantined") or []
    if strict and bad:
        first = bad[0]
        raise InputError(f"{len(bad)} file(s) are not valid JSON (--strict): {first['reason']}"
                         + (f"; also {', '.join(b['relpath'] for b in bad[1:4])}" if len(bad) > 1
                            else ""),
                         dataset=str(manifest.get("dataset")), file=first["path"],
                         offset=first.get("offset"),
                         hint="fix or remove the file(s), or stage without --strict to quarantine "
                              "them and load the rest")


def _roots(sources: Sequence[str | Path], found: Sequence[tuple[Path, str]]) -> dict[str, Path]:
    """The input root each file was found under, by its relative path: the directory given
    (for a directory), the glob's fixed head, or the file's own folder."""
    out: dict[str, Path] = {}
    for path, rel in found:
        text = str(path)
        root = Path(text[: -len(rel)]) if rel and text.endswith(rel) else path.parent
        out[rel] = root if str(root) else Path(".")
    return out


def _stage_side_files(dataset: Dataset, tmp: Path, writers: dict[str, ChunkWriter], *,
                      roots: Mapping[str, Path], settings: Settings,
                      threads: int) -> list[tuple[str, str, str]]:
    """Run the dataset's side-file hooks over the staged levels they look beside; write their
    rows; return (level, file, sha256) entries for the run id."""
    entries: list[tuple[str, str, str]] = []
    levels = dataset.levels
    store_base = settings.staging_root
    for side in dataset.side_files:
        chunks = writers[side.beside].close()
        files = [str(tmp / c["path"]) for c in chunks]
        schema = level_schema(levels[side.beside], levels)
        records = pl.read_parquet(files) if files else pl.DataFrame(schema=schema)
        writers[side.beside] = _Closed(chunks)  # type: ignore[assignment]
        rows = side.stage(SideInput(records=records, roots=roots,
                                    store=store_base / dataset.name / "_store",
                                    store_base=store_base, threads=threads))
        target = level_schema(levels[side.level], levels)
        rows = rows.with_columns(*(pl.lit(None, dtype).alias(n) for n, dtype in target.items()
                                   if n not in rows.columns)).select(list(target)).cast(target)
        writers[side.level].write(rows.to_arrow())
        if "sha256" in rows.columns:
            entries.extend((side.level, f or "", h or "") for f, h in
                           rows.select("_file", "sha256").iter_rows())
    return entries


class _Closed:
    """A level writer already closed (its chunks listed), for levels side hooks read."""

    def __init__(self, chunks: list[dict[str, Any]]) -> None:
        self.chunks = chunks

    def close(self) -> list[dict[str, Any]]:
        return self.chunks


def _stage_into(
    dataset: Dataset,
    jobs: Sequence[tuple[Path, str, str, int]],
    tmp: Path,
    *,
    settings: Settings,
    max_record_bytes: int,
    progress: Progress | None,
    roots: Mapping[str, Path] | None = None,
    shared: StagePath | None = None,
) -> dict[str, Any]:
    # The memory limit is shared out: a quarter for the reader of streamed files (one thread,
    # so file and record order hold), the rest split between the workers that unpack levels.
    # A batch of records handed from one to the other is a 32nd (8 MB at 256MB): large enough
    # that the fixed cost per batch (~25 ms to parse and unnest the three mids power levels of
    # even one record) stays small, small enough that the batches in flight, and each worker's
    # parsed batch (~2.5 times its JSON text), stay well inside the limit. Each MB of batch
    # costs about 8 MB of the process's peak (the batches read ahead, in flight and being
    # written): a 24th peaked at 390-410 MB on the x5 copy, a 32nd at 363-377 MB, 0.2-0.4 s
    # slower.
    plans = {src.name: source_plan(src.levels) for src in dataset.sources}  # checks the levels
    memory = memory_bytes(settings.memory_limit)
    batch_bytes = max(1 << 20, memory // 32)
    threads = settings.threads or os.cpu_count() or 1
    levels = dataset.levels

    def writer(name: str) -> ChunkWriter:
        return ChunkWriter(tmp / "raw" / name, tmp, chunk_rows=settings.chunk_rows,
                           schema=level_schema(levels[name], levels).to_arrow())

    writers: dict[str, ChunkWriter]
    if settings.engine == "ray":
        from etl.stage.on_ray import stage_on_ray

        nul_rows: dict[str, int] | None = None  # not counted on the cluster: validate reads them
        inspected, quarantined, ray_chunks, on_ray, duplicated = stage_on_ray(
            dataset, jobs, tmp, settings=settings, max_record_bytes=max_record_bytes,
            batch_bytes=batch_bytes, memory=memory, progress=progress, shared=shared)
        # The levels side-file hooks fill get no rows from the sources: they are written here.
        side_levels = {side.level for side in dataset.side_files}
        mixed = sorted(name for name in side_levels if ray_chunks[name])
        if mixed:
            raise ConfigError(f"level {mixed[0]} of {dataset.name} gets rows from both its sources and a "
                              "side-file hook, which the ray engine does not stage",
                              dataset=dataset.name, hint="stage this dataset with --engine local")
        writers = {name: writer(name) if name in side_levels
                   else _Closed(ray_chunks[name])  # type: ignore[misc]
                   for name in levels}
    else:
        on_ray = None
        writers = {name: writer(name) for name in levels}
        inspected, quarantined, duplicated, nul_rows = _stage_local(
            dataset, jobs, tmp, writers, plans=plans, threads=threads, batch_bytes=batch_bytes,
            memory=memory, max_record_bytes=max_record_bytes, progress=progress)
    for leftover in tmp.glob(".duckdb_tmp*"):
        shutil.rmtree(leftover, ignore_errors=True)
    side_entries = _stage_side_files(dataset, tmp, writers, roots=roots or {}, settings=settings,
                                     threads=threads) if dataset.side_files else []
    level_entries = {}
    for name, lvl in levels.items():
        chunks = writers[name].close()
        level_entries[name] = {
            "source": dataset.level_source(name).name,
            "parent": lvl.parent,
            "rows": sum(c["rows"] for c in chunks),
            "schema": schema_to_json(level_schema(lvl, levels)),
            "chunks": chunks,
        }
        if nul_rows is not None and lvl.table is not None and not any(
                side.level == name for side in dataset.side_files):
            # rows whose _extra strip_nul changes, counted as staged (etl validate reports it)
            level_entries[name][EXTRA_NUL_ROWS] = nul_rows.get(name, 0)
    run_id = compute_run_id(dataset, [
        *((f.source, f.relpath, f.sha256) for f in inspected),
        *((q["source"], q["relpath"], "quarantined:" + q["sha256"]) for q in quarantined),
        *((f"side:{level}", rel, sha) for level, rel, sha in side_entries)])
    return {
        "format": MANIFEST_FORMAT,
        "run_id": run_id,
        "dataset": dataset.name,
        "dataset_version": dataset.version,
        "toolkit_version": __version__,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "settings": {"chunk_rows": settings.chunk_rows, "memory_limit": settings.memory_limit,
                     "max_record_bytes": max_record_bytes, "engine": settings.engine},
        "sources": [f.to_dict() for f in sorted(inspected, key=lambda f: (f.source, f.relpath))],
        "levels": level_entries,
        "quarantined": sorted(quarantined, key=lambda q: (q["source"], q["relpath"])),
        "duplicate_keys": duplicated,
        "phases": {},
        **({"ray": on_ray} if on_ray is not None else {}),
    }


def _stage_local(
    dataset: Dataset,
    jobs: Sequence[tuple[Path, str, str, int]],
    tmp: Path,
    writers: dict[str, ChunkWriter],
    *,
    plans: Mapping[str, SourcePlan],
    threads: int,
    batch_bytes: int,
    memory: int,
    max_record_bytes: int,
    progress: Progress | None,
) -> tuple[list[InputFile], list[dict[str, Any]], dict[str, Any], dict[str, int]]:
    """The local engine: each source's batches unpacked on ``threads`` threads, written by
    ``writers`` in order. Returns the files read, the files quarantined, the records that
    held a key twice (``duplicate_keys``) and the rows per level whose ``_extra`` holds NUL."""
    workers = max(1, threads)
    reader = LazyReader({
        "memory_limit": f"{max(96 << 20, memory // 4) >> 20}MB",
        "threads": 1,
        "preserve_insertion_order": True,
        "temp_directory": str(tmp / ".duckdb_tmp_reader"),
    })
    worker_memory = f"{max(64 << 20, (memory * 3 // 4) // workers) >> 20}MB"
    total = sum(j[3] for j in jobs)
    done = [0]
    inspected: list[InputFile] = []
    quarantined: list[dict[str, Any]] = []
    duplicated: dict[str, Any] = {"records": 0, "examples": []}
    nul_rows: dict[str, int] = {}
    try:
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="etl-scan") as scan_pool:
            for src in dataset.sources:
                src_jobs = [j for j in jobs if j[2] == src.name]
                if not src_jobs:
                    continue
                batches = _source_batches(
                    reader, src_jobs, scan_pool, batch_bytes=batch_bytes,
                    max_record_bytes=max_record_bytes, inspected=inspected,
                    quarantine=quarantined if src.on_bad_file == "quarantine" else None)
                _stage_source(batches, src, plans[src.name], writers, tmp=tmp, workers=workers,
                              extra_plan=ExtraPlan(src.levels, {t.name: t for t in dataset.tables}),
                              worker_memory=worker_memory, progress=progress, done_bytes=done,
                              total_bytes=total, files=inspected, duplicated=duplicated,
                              nul_rows=nul_rows)
    finally:
        reader.close()
    return inspected, quarantined, duplicated, nul_rows
