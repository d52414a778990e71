"""A staged run directory: its layout, its manifest, and reading it back.

::

    staging/<dataset>/<run>/
        manifest.json                 written last: a run without it is not complete
        raw/<level>/part-NNNNN.parquet
        report.json                   etl validate
        rejects/<level>.parquet
        tables/<table>/part-NNNNN.parquet   etl transform

Every phase writes into a temporary sibling and renames it into place, then rewrites the
manifest atomically, so a killed process never leaves a run that looks complete. The staging
root may be on another filesystem (a URI: :mod:`etl.staging_fs`); there a phase writes into a
local temporary folder and uploads it, the manifest last.
"""

from __future__ import annotations

import base64
import decimal
import fcntl
import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import orjson
import polars as pl
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from etl.dataset import (
    LINEAGE,
    PATCH,
    STAGED_EXTRA,
    XREF,
    XREF_SHIFT,
    Dataset,
    Level,
    effective_cleaning,
    inherited_field,
    typed_in_table,
)
from etl.errors import RunStateError
from etl.jsontext import STAGING_MARK, add_keys
from etl.staging_fs import (
    RemotePath,
    StagePath,
    drop_local,
    move_tree,
    remove_tree,
    resolve,
    sha256,
    upload_tree,
)

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])

MANIFEST = "manifest.json"
#: The copy of a spec dataset's spec a staged run keeps: the spec it was staged with.
RUN_SPEC = "spec.toml"
MANIFEST_FORMAT = 1
#: Staged levels are written once and read by validate and transform (and reconcile): lz4. On
#: the x5 mids export's raw levels, against zstd: writing 0.53 against 0.68 s of CPU, reading
#: 0.31 against 0.83 s, for twice the bytes (14 against 7 MB).
PARQUET_COMPRESSION = "lz4"
#: Target tables are read again at once by the load: lz4 decodes about twice as fast as zstd for
#: ~20% more bytes (mids 360k: 43 against 83 ms of client CPU).
TABLE_COMPRESSION = "lz4"

_DUCK_TO_POLARS: dict[str, pl.DataType] = {
    "VARCHAR": pl.String(),
    "JSON": pl.String(),
    "BIGINT": pl.Int64(),
    "INTEGER": pl.Int32(),
    "DOUBLE": pl.Float64(),
    "BOOLEAN": pl.Boolean(),
}


def field_dtype(type_: str) -> pl.DataType:
    """The Polars dtype of a staged field of DuckDB type ``type_``."""
    if type_.endswith("[]"):
        return pl.List(field_dtype(type_[:-2]))
    return _DUCK_TO_POLARS[type_]


def level_schema(level: Level, levels: Mapping[str, Level]) -> pl.Schema:
    """The staged Parquet schema of ``level``: lineage, inherited fields, own fields, type errors."""
    cols: dict[str, pl.DataType] = {
        "_file": pl.String(), "_record": pl.Int64(), "_path": pl.String(), "_index": pl.Int64()}
    if level.parent is not None:
        for src, dst in level.inherit:
            cols[dst] = field_dtype(inherited_field(levels, level, src).type)
    for f in level.fields:
        cols[f.name] = field_dtype(f.type)
    cols["_type_errors"] = pl.List(pl.String())
    if level.table is not None:
        cols[STAGED_EXTRA] = pl.String()
    return pl.Schema(cols)


def canonical_json(text: str | None) -> str | None:
    """JSON text in one canonical form (keys sorted, no spaces), so a value staged from the
    export and the same value read back from a ``jsonb`` column (which PostgreSQL reorders and
    reformats) compare equal. ``None`` and unparseable text are returned as they are."""
    if text is None:
        return None
    try:
        return orjson.dumps(orjson.loads(text), option=orjson.OPT_SORT_KEYS).decode()
    except (orjson.JSONDecodeError, TypeError):
        # numbers a double cannot hold (1e400; integers beyond 64 bits): compared exactly
        try:
            return _exact_form(json.loads(text, parse_float=decimal.Decimal,
                                          parse_int=decimal.Decimal))
        except ValueError:
            return text


def canonical_json_columns(df: pl.DataFrame, columns: Iterable[str]) -> pl.DataFrame:
    """``df`` with the given JSON text columns in canonical form (see :func:`canonical_json`)."""
    cols = [c for c in columns if c in df.columns]
    if not cols or df.height == 0:
        return df
    return df.with_columns(pl.col(c).map_elements(canonical_json, return_dtype=pl.String,
                                                  skip_nulls=True) for c in cols)


def _dtype_to_text(dtype: pl.DataType) -> str:
    field = pa.field("x", pl.Series("x", [], dtype).to_arrow().type)
    return base64.b64encode(pa.schema([field]).serialize().to_pybytes()).decode()


def _dtype_from_text(text: str) -> pl.DataType:
    schema = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(text)))
    series = pl.from_arrow(pa.array([], schema.field("x").type))
    assert isinstance(series, pl.Series)
    return series.dtype


#: How a table's ``checksum`` is made (rows hashed by :meth:`polars.DataFrame.hash_rows`) and
#: treats its jsonb columns: their text in the form PostgreSQL prints
#: (:mod:`etl.jsonb`), which the transform writes, so the staged chunks and the rows read back
#: from the database hash alike as they are. A manifest without it (an older transform) has
#: checksums of the comparable form (:func:`comparable_json`).
CHECKSUM_FORM = "pg-jsonb-rows"

#: Values a jsonb column's comparable type is inferred from, and rows decoded at a time.
JSON_SAMPLE = 50_000
#: Rows per piece a jsonb column is decoded in for checksums. Decoding takes many times the
#: text's size: checksumming the 1.2M spells of a 170k-item aodb export peaked at ~745 MB in
#: pieces of 100,000 rows, ~225 MB in pieces of 10,000, and ran faster.
JSON_PIECE_ROWS = 10_000


def json_dtypes(df: pl.DataFrame, columns: Iterable[str]) -> dict[str, str]:
    """For each JSON text column, the Polars type its values decode into, inferred from the
    first :data:`JSON_SAMPLE` values and serialized for the manifest. A column whose values do
    not share one shape (objects here, arrays there) is left out and compared as canonical text.
    """
    out = {}
    for col in columns:
        if col not in df.columns:
            continue
        sample = df.get_column(col).drop_nulls().head(JSON_SAMPLE)
        if sample.len() == 0:
            continue
        try:
            dtype = sample.str.json_decode(infer_schema_length=None).dtype
            # Arrow's schemas stop at 64 levels of nesting: deeper values are compared as text.
            out[col] = _dtype_to_text(dtype)
        except (pl.exceptions.PolarsError, pa.ArrowInvalid, RecursionError):
            continue
    return out


#: A negative zero number in JSON text (its minus sign is group-less, so it is dropped).
_NEGATIVE_ZERO = r"([\[:,\s])-(0(?:\.0*)?(?:[eE][+-]?\d+)?[,\]}\s])"


def _without_negative_zero(texts: pl.Series, **_: Any) -> pl.Series:
    """JSON texts with negative zero numbers written as zero; the regex runs only on the few
    texts that hold ``-0`` at all (a literal search first: a regex over every text of a large
    jsonb column cost seconds)."""
    hit = texts.str.contains("-0", literal=True).fill_null(False)
    if not hit.any():
        return texts
    idx = hit.arg_true()
    return texts.scatter(idx, texts.gather(idx).str.replace_all(_NEGATIVE_ZERO, "${1}${2}"))


def _exact_form(value: Any) -> str:
    """JSON text of a value parsed with decimal numbers: keys sorted, each number in one form
    (``Decimal.normalize``: 1e400 and 1 followed by 400 zeros alike, zero without a sign)."""
    if isinstance(value, decimal.Decimal):
        return "0" if value.is_zero() else str(value.normalize())
    if isinstance(value, dict):
        return "{" + ",".join(json.dumps(k, ensure_ascii=False) + ":" + _exact_form(v)
                              for k, v in sorted(value.items())) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_exact_form(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


def comparable_json(df: pl.DataFrame, columns: Iterable[str], dtypes: Mapping[str, str]) -> pl.DataFrame:
    """JSON text columns in a form that compares by meaning, not by text: decoded into their
    recorded type (vectorized; key order, spacing and number spelling no longer matter), or,
    for columns without one, canonical text. Staged values and the same values read back from
    a ``jsonb`` column (which PostgreSQL reorders and reformats) then hash the same. Keys the
    recorded type does not know (absent from the sample it was inferred from) are left out of
    the comparison on both sides alike."""
    cols = [c for c in columns if c in df.columns]
    if not cols or df.height == 0:
        return df
    if df.height > JSON_PIECE_ROWS:  # decoded structs are wide: a slice at a time bounds memory
        return pl.concat([comparable_json(df.slice(i, JSON_PIECE_ROWS), cols, dtypes)
                          for i in range(0, df.height, JSON_PIECE_ROWS)])
    typed = {c: _dtype_from_text(dtypes[c]) for c in cols if c in dtypes}
    # jsonb keeps numbers as numeric, which has no negative zero: -0.0 reads back as 0.0.
    df = df.with_columns(pl.col(c).map_batches(_without_negative_zero, return_dtype=pl.String(),
                                               is_elementwise=True) for c in cols)
    df = df.with_columns(pl.col(c).str.json_decode(dtype) for c, dtype in typed.items())
    return canonical_json_columns(df, [c for c in cols if c not in typed])


def frames_checksum(frames: Iterable[pl.DataFrame]) -> str:
    """A content checksum of a table given in pieces, independent of row order and chunking.

    Per-row hashes (Polars' own, of the row as a struct) are summed modulo 2**64, so the same
    rows in any order and any split give the same value; the row count is appended. The hash is
    Polars' and may change between Polars versions: compare checksums made by one version.
    """
    summed = Checksum()
    for df in frames:
        summed.add(df)
    return summed.value


class Checksum:
    """:func:`frames_checksum` a piece at a time (e.g. of pieces as they are written)."""

    __slots__ = ("rows", "total")

    def __init__(self) -> None:
        self.total = 0
        self.rows = 0

    def add(self, df: pl.DataFrame) -> None:
        if df.height == 0:
            return
        # Polars' row hash (columns hashed and combined; twice as fast as hashing a struct of
        # them, which encodes every row first)
        self.total = (self.total + int(df.hash_rows(seed=0).sum() or 0)) & 0xFFFF_FFFF_FFFF_FFFF
        self.rows += df.height

    @property
    def value(self) -> str:
        if self.rows == 0:
            return hashlib.sha256(b"").hexdigest()[:16]
        return f"{self.total:016x}-{self.rows}"


def check_run_files(run_dir: StagePath, manifest: Mapping[str, Any]) -> int:
    """Check every chunk the manifest lists (raw levels and tables) against its sha256.

    Returns how many files were checked; raises :class:`RunStateError` naming the first file
    that is missing or changed."""
    checked = 0
    groups = [("level", manifest.get("levels") or {}), ("table", manifest.get("tables") or {})]
    for kind, entries in groups:
        for name, entry in entries.items():
            for chunk in entry.get("chunks", []):
                path = run_dir / chunk["path"]
                if not path.is_file():
                    raise RunStateError(f"{kind} {name}: chunk file is missing", file=path,
                                        run=manifest.get("run_id"),
                                        hint="restore the run directory from a copy, or stage the "
                                             "export again")
                if sha256_file(path) != chunk["sha256"]:
                    raise RunStateError(f"{kind} {name}: chunk file changed since it was written "
                                        "(sha256 differs from the manifest)", file=path,
                                        run=manifest.get("run_id"),
                                        hint="restore the run directory from a copy, or stage the "
                                             "export again")
                checked += 1
    spec = manifest.get("spec")
    if spec:
        path = run_dir / spec["path"]
        if not path.is_file() or sha256_file(path) != spec["sha256"]:
            raise RunStateError("the spec the run was staged with is missing or changed", file=path,
                                run=manifest.get("run_id"),
                                hint="restore the run directory from a copy, or stage the export again")
        checked += 1
    return checked


def sha256_file(path: StagePath, *, block: int = 1 << 20) -> str:
    return sha256(path, block=block)


def _json_bytes(data: Any) -> bytes:
    return orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE
                        | orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY, default=str)


def write_json_atomic(path: StagePath, data: Any) -> None:
    """Write JSON to ``path`` through a temporary file and a rename (on a remote filesystem: a
    temporary object moved into place; an object store's PUT is all-or-nothing either way)."""
    if isinstance(path, RemotePath):
        tmp_path = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp_path.write_bytes(_json_bytes(data))
        path.fs.move(tmp_path.path, path.path)
        return
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(_json_bytes(data))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def replace_dir(tmp: StagePath, final: StagePath) -> None:
    """Move ``tmp`` to ``final``, replacing what was there (old copy removed after the swap).

    On a remote ``final`` (no atomic rename of a folder there): the old folder's manifest goes
    first (it stops looking complete), then the rest of it; the new files are uploaded (``tmp``
    local) or moved (``tmp`` remote), a manifest among them last."""
    if isinstance(final, RemotePath):
        (final / MANIFEST).unlink(missing_ok=True)
        remove_tree(final)
        if isinstance(tmp, RemotePath):
            move_tree(tmp, final, last=MANIFEST)
        else:
            upload_tree(tmp, final, last=MANIFEST)
            drop_local(tmp)
        return
    assert not isinstance(tmp, RemotePath), "a remote folder is not moved to a local one"
    trash = None
    if final.exists():
        trash = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, trash)
    os.replace(tmp, final)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)


class ChunkWriter:
    """Writes Arrow batches as Parquet chunks of at most ``chunk_rows`` rows each.

    Owns one open file at a time; :meth:`close` returns the chunk list for the manifest.
    """

    def __init__(self, folder: Path, rel_to: Path, *, chunk_rows: int,
                 schema: pa.Schema | None = None, compression: str = PARQUET_COMPRESSION) -> None:
        self.folder = folder
        self.compression = compression
        self.rel_to = rel_to
        self.chunk_rows = max(1, chunk_rows)
        self.schema = schema
        self.chunks: list[dict[str, Any]] = []
        self._writer: pq.ParquetWriter | None = None
        self._path: Path | None = None
        self._rows = 0

    def _open(self, schema: pa.Schema) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._path = self.folder / f"part-{len(self.chunks):05d}.parquet"
        self._writer = pq.ParquetWriter(self._path, schema, compression=self.compression,
                                        write_statistics=True)
        self._rows = 0

    def _finish(self) -> None:
        if self._writer is None or self._path is None:
            return
        self._writer.close()
        self.chunks.append({
            "path": self._path.relative_to(self.rel_to).as_posix(),
            "rows": self._rows,
            "bytes": self._path.stat().st_size,
            "sha256": sha256_file(self._path),
        })
        self._writer = None

    def write(self, data: pa.RecordBatch | pa.Table) -> None:
        table = data if isinstance(data, pa.Table) else pa.Table.from_batches([data])
        if self.schema is None:
            self.schema = table.schema
        elif table.schema != self.schema:
            table = table.cast(self.schema)
        offset = 0
        while offset < table.num_rows:
            if self._writer is None:
                self._open(self.schema)
            assert self._writer is not None
            take = min(self.chunk_rows - self._rows, table.num_rows - offset)
            self._writer.write_table(table.slice(offset, take), row_group_size=self.chunk_rows)
            self._rows += take
            offset += take
            if self._rows >= self.chunk_rows:
                self._finish()

    def write_frame(self, df: pl.DataFrame) -> None:
        self.write(df.to_arrow())

    def close(self) -> list[dict[str, Any]]:
        self._finish()
        return self.chunks

    @property
    def rows(self) -> int:
        return sum(c["rows"] for c in self.chunks) + (self._rows if self._writer else 0)


class Manifest(dict[str, Any]):
    """A run's manifest as read from disk: read-only at the top level. A stage does not edit it;
    it says what it adds (:meth:`Run.advance`), and that is written in one atomic step."""

    def _read_only(self, *_: Any, **__: Any) -> None:
        raise TypeError("a run's manifest is read-only: a stage returns what it adds, and "
                        "Run.advance(additions) writes it")

    __setitem__ = __delitem__ = clear = update = pop = popitem = setdefault = _read_only  # type: ignore[assignment]

    def __reduce__(self) -> tuple[type[Manifest], tuple[dict[str, Any]]]:
        # Pickled whole (a Run sent to a Ray task), not item by item through __setitem__.
        return Manifest, (dict(self),)


#: The lock file of a dataset's staging folder (``<staging_dir>/<dataset>/.etl-staging.lock``),
#: which also marks it as no input (:data:`etl.jsontext.STAGING_MARK`).
STAGING_LOCK = STAGING_MARK


_REMOTE_LOCKS: dict[str, threading.Lock] = {}


@contextmanager
def staging_lock(folder: StagePath) -> Iterator[None]:
    """Hold the dataset staging folder ``folder`` alone: a stage, validation or transform of one
    process at a time writes into it (two runs sharing the folder raced: a run replaced while
    another validated it lost its rejects). A second process waits. Holding the lock, nothing
    else is staging here, so the temporary folders of stages killed earlier are removed.

    On a remote root (no ``flock`` there) the lock holds within this process only, and no
    leftovers are removed (another machine may be writing them)."""
    if isinstance(folder, RemotePath):
        folder.mkdir(parents=True, exist_ok=True)
        with _REMOTE_LOCKS.setdefault(str(folder), threading.Lock()):
            yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / STAGING_LOCK, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another etl process writing in %s", folder)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            for leftover in folder.glob(".stage.tmp-*"):
                log.info("removing %s, left by a stage that did not finish", leftover)
                shutil.rmtree(leftover, ignore_errors=True)
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def locks_staging(folder_of: Callable[..., StagePath]) -> Callable[[F], F]:
    """Decorate a stage function to run under :func:`staging_lock` of the folder ``folder_of``
    gives for its arguments."""
    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def locked(*args: Any, **kwargs: Any) -> Any:
            with staging_lock(folder_of(*args, **kwargs)):
                return fn(*args, **kwargs)
        return locked  # type: ignore[return-value]
    return wrap


def run_folder(run: Run, *_: Any, **__: Any) -> StagePath:
    """The folder a stage of ``run`` locks: the dataset staging folder the run sits in (marked
    by the stage that made it, or any folder of a remote root, where no lock file is written),
    or, for a run moved elsewhere (``/tmp/myrun``), the run's own folder: its lock file marks
    the folder it is in as no input, and a parent like ``/tmp`` must not become one."""
    parent = run.path.parent
    if isinstance(parent, RemotePath) or (parent / STAGING_LOCK).exists():
        return parent
    return run.path


def write_manifest(run_dir: StagePath, manifest: Mapping[str, Any]) -> None:
    """The one writer of ``manifest.json``: atomically (temporary file, fsync, rename), so a
    reader sees the old manifest or the new one, never a part."""
    write_json_atomic(run_dir / MANIFEST, dict(manifest))


@dataclass(frozen=True)
class Run:
    """A staged run on disk, read back: manifest, LazyFrames, a DuckDB view of it all.

    A ``Run`` is a snapshot: its manifest never changes in place. A stage starts from the run's
    current state on disk (:meth:`current`) and ends with :meth:`advance`, which writes what it
    adds and returns the new snapshot."""

    #: The run's folder: a local path, or a :class:`~etl.staging_fs.RemotePath`.
    path: StagePath
    manifest: Manifest

    def __repr__(self) -> str:
        m = self.manifest
        rows = sum(int(e.get("rows", 0)) for e in (m.get("levels") or {}).values())
        state = "transformed" if m.get("tables") else (
            f"validated ({m['validation'].get('status')})" if m.get("validation") else "staged")
        return (f"Run({self.id!r}, dataset={self.dataset_name!r}, {state}, "
                f"{len(m.get('levels') or {})} levels, {rows:,} staged rows, path={str(self.path)!r})")

    def current(self) -> Run:
        """This run as it is on disk now (a later stage may have advanced it)."""
        return open_run(self.path)

    def advance(self, additions: Mapping[str, Any]) -> Run:
        """Write ``additions`` (top-level manifest keys; ``phases`` merged by phase name) over
        the run's current manifest in one atomic step; the new snapshot."""
        now = dict(self.current().manifest)
        for key, value in additions.items():
            if key == "phases":
                now["phases"] = {**(now.get("phases") or {}), **value}
            else:
                now[key] = value
        write_manifest(self.path, now)
        return Run(self.path, Manifest(now))

    def check_dataset(self, dataset: Dataset) -> None:
        """Raise :class:`RunStateError` unless ``dataset`` is the one (name and version) this run
        was staged with."""
        if dataset.name != self.dataset_name:
            raise RunStateError(f"run {self.id} holds dataset {self.dataset_name}, not {dataset.name}",
                                run=self.id, hint=f"pass the {self.dataset_name} dataset")
        if dataset.version != self.manifest["dataset_version"]:
            raise RunStateError(
                f"run was staged with {dataset.name} version {self.manifest['dataset_version']}, "
                f"the dataset given is version {dataset.version}",
                dataset=dataset.name, run=self.id, hint="stage the export again with `etl stage`")

    @property
    def id(self) -> str:
        return str(self.manifest["run_id"])

    @property
    def dataset_name(self) -> str:
        return str(self.manifest["dataset"])

    # -- raw levels ---------------------------------------------------------------------------

    def raw(self, level: str) -> pl.LazyFrame:
        """The staged rows of ``level`` as they were read (no cleaning)."""
        entry = self.manifest["levels"].get(level)
        if entry is None:
            raise RunStateError(f"run {self.id} has no staged level {level!r}",
                                hint=f"levels: {', '.join(self.manifest['levels'])}")
        schema = pl.Schema({k: _dtype_from_str(v) for k, v in entry["schema"].items()})
        return _scan(self.path, entry["chunks"], schema)

    def cleaned(self, level: str, dataset: Dataset) -> pl.LazyFrame:
        """The staged rows of ``level`` after the dataset's cleaning steps."""
        return apply_cleaning(dataset, level, self.raw(level))

    def rejects(self, level: str) -> pl.LazyFrame | None:
        path = self.path / "rejects" / f"{level}.parquet"
        if not path.exists():
            return None
        return _scan_remote([path], None) if isinstance(path, RemotePath) else pl.scan_parquet(path)

    def accepted(self, level: str, dataset: Dataset, *,
                 narrow: bool = False) -> pl.LazyFrame:
        """Cleaned rows of ``level`` that no error-severity rule rejected.

        ``narrow`` (what the transform reads): without the wide ``_extra`` text, with
        :data:`~etl.dataset.XREF` and :data:`~etl.dataset.PATCH` instead (see there)."""
        if "validation" not in self.manifest:
            raise RunStateError(f"run {self.id} has not been validated",
                                run=self.id, hint=f"run `etl validate {self.path}` first")
        ds = dataset
        if narrow and ds.levels[level].table is not None:
            number = list(ds.levels).index(level)
            raw = self.raw(level).with_row_index(XREF).with_columns(
                (pl.col(XREF).cast(pl.Int64) + (number << XREF_SHIFT)).alias(XREF))
            lf = apply_cleaning(ds, level, raw, patch_only=True).drop(STAGED_EXTRA)
        elif ds.levels[level].table is not None:
            number = list(ds.levels).index(level)
            lf = self.cleaned(level, ds).with_row_index(XREF).with_columns(
                (pl.col(XREF).cast(pl.Int64) + (number << XREF_SHIFT)).alias(XREF),
                pl.lit(None, pl.String()).alias(PATCH))  # _extra has the originals already
        else:
            lf = self.cleaned(level, ds)
        rejected = self.rejects(level)
        if rejected is None:
            return lf
        # in the level's order, always: a transform may number rows by their place
        return lf.join(rejected.select("_file", "_record", "_path"), on=["_file", "_record", "_path"],
                       how="anti", nulls_equal=True, maintain_order="left")

    # -- target tables ------------------------------------------------------------------------

    def table(self, name: str, *, lineage: bool = False) -> pl.LazyFrame:
        """A transformed table's rows; with ``lineage``, also the source file, record and path
        of each row (``_file``, ``_record``, ``_path``) where its rows come from source records."""
        entry = self.manifest.get("tables", {}).get(name)
        if entry is None:
            raise RunStateError(f"run {self.id} has no transformed table {name!r}",
                                run=self.id, hint=f"run `etl transform {self.path}` first")
        schema = pl.Schema({k: _dtype_from_str(v) for k, v in entry["schema"].items()})
        lf = _scan(self.path, entry["chunks"], schema)
        # A table of no rows has no lineage chunks, yet its lineage columns (empty).
        if not lineage or "lineage" not in entry or (entry["chunks"] and not entry.get("lineage_chunks")):
            return lf
        extra = pl.Schema({k: _dtype_from_str(v) for k, v in entry["lineage"].items()})
        return pl.concat([lf, _scan(self.path, entry["lineage_chunks"], extra)], how="horizontal")

    def tables(self) -> dict[str, pl.LazyFrame]:
        return {name: self.table(name) for name in self.manifest.get("tables", {})}

    def report(self) -> dict[str, Any] | None:
        path = self.path / "report.json"
        return json.loads(path.read_text()) if path.exists() else None

    def duckdb(self) -> Any:
        """An in-memory DuckDB connection with a view per raw level, reject file and table.

        Views are named ``raw_<level>``, ``rejects_<level>`` and ``<table>``.
        """
        import duckdb

        con = duckdb.connect()
        if isinstance(self.path, RemotePath):
            return self._duckdb_remote(con)
        for level, entry in self.manifest["levels"].items():
            files = [str(self.path / c["path"]) for c in entry["chunks"]]
            if files:
                con.execute(f'CREATE VIEW "raw_{level}" AS SELECT * FROM read_parquet({files!r})')
        for path in sorted((self.path / "rejects").glob("*.parquet")):
            con.execute(f'CREATE VIEW "rejects_{path.stem}" AS SELECT * FROM read_parquet(\'{path}\')')
        for name, entry in self.manifest.get("tables", {}).items():
            files = [str(self.path / c["path"]) for c in entry["chunks"]]
            if files:
                con.execute(f'CREATE VIEW "{name}" AS SELECT * FROM read_parquet({files!r})')
        return con

    def _duckdb_remote(self, con: Any) -> Any:
        """:meth:`duckdb` for a run on a remote filesystem: the views read pyarrow datasets."""
        assert isinstance(self.path, RemotePath)
        fs = self.path.fs
        views = [(f"raw_{level}", [self.path / c["path"] for c in entry["chunks"]])
                 for level, entry in self.manifest["levels"].items()]
        views += [(f"rejects_{p.stem}", [p]) for p in sorted((self.path / "rejects").glob("*.parquet"))]
        views += [(name, [self.path / c["path"] for c in entry["chunks"]])
                  for name, entry in self.manifest.get("tables", {}).items()]
        for name, files in views:
            if files:
                con.register(name, pads.dataset([p.path for p in files if isinstance(p, RemotePath)],
                                                filesystem=fs, format="parquet"))
        return con

    def chunk_files(self) -> Iterator[tuple[StagePath, dict[str, Any]]]:
        """Every Parquet chunk the manifest lists, with its entry (path, rows, sha256)."""
        for entry in self.manifest["levels"].values():
            for c in entry["chunks"]:
                yield self.path / c["path"], c
        for entry in self.manifest.get("tables", {}).values():
            for c in (*entry["chunks"], *entry.get("lineage_chunks", ())):
                yield self.path / c["path"], c


def _dtype_from_str(text: str) -> pl.DataType:
    if text.startswith("List(") and text.endswith(")"):
        return pl.List(_dtype_from_str(text[5:-1]))
    names = {
        "String": pl.String(), "Int64": pl.Int64(), "Int32": pl.Int32(), "Int16": pl.Int16(),
        "Float64": pl.Float64(), "Float32": pl.Float32(), "Boolean": pl.Boolean(), "Date": pl.Date(),
        "Datetime(time_unit='us', time_zone='UTC')": pl.Datetime("us", "UTC"),
    }
    return names[text]


def schema_to_json(schema: pl.Schema) -> dict[str, str]:
    return {name: str(dtype) for name, dtype in schema.items()}


def _scan(root: StagePath, chunks: list[dict[str, Any]], schema: pl.Schema) -> pl.LazyFrame:
    if not chunks:
        return pl.LazyFrame(schema=schema)
    if isinstance(root, RemotePath):
        return _scan_remote([root / c["path"] for c in chunks], schema)
    return pl.scan_parquet([str(root / c["path"]) for c in chunks], schema=schema)


def _scan_remote(files: list[RemotePath], schema: pl.Schema | None) -> pl.LazyFrame:
    """Parquet files on a remote filesystem as a LazyFrame that reads them through it, in order,
    a record batch at a time (memory bounded as ``scan_parquet``'s is, which reads local files
    only; a pyarrow dataset scan would be collected whole). Projections, filters and row limits
    Polars pushes down are applied here, as an IO source must."""
    from polars.io.plugins import register_io_source  # marked unstable by Polars; tested here

    if schema is None:
        with files[0].open_input() as fh:
            empty = pl.from_arrow(pq.read_schema(fh).empty_table())
        assert isinstance(empty, pl.DataFrame)
        schema = empty.schema
    known = schema

    def batches(with_columns: list[str] | None, predicate: pl.Expr | None, n_rows: int | None,
                batch_size: int | None) -> Iterator[pl.DataFrame]:
        columns = list(with_columns) if with_columns is not None else list(known)
        needed = columns + [c for c in (predicate.meta.root_names() if predicate is not None else [])
                            if c not in columns]
        left = n_rows
        for file in files:
            with file.open_input() as fh:
                for batch in pq.ParquetFile(fh).iter_batches(batch_size=batch_size or 65_536,
                                                             columns=needed):
                    df = pl.from_arrow(batch)
                    assert isinstance(df, pl.DataFrame)
                    df = df.cast({c: known[c] for c in needed})
                    if predicate is not None:
                        df = df.filter(predicate)
                    df = df.select(columns)
                    if left is not None:
                        df = df.head(left)
                        left -= df.height
                    yield df
                    if left == 0:
                        return

    return register_io_source(batches, schema=schema, explain_name="staged chunks",
                              explain_detail=f"{len(files)} file(s) under {files[0].parent}")


def apply_cleaning(dataset: Dataset, level: str, lf: pl.LazyFrame, *,
                   patch_only: bool = False) -> pl.LazyFrame:
    """The dataset's cleaning steps for ``level``, in order.

    Lossless: where a step changes a value that its typed column held exactly (so its key had
    left the row's ``_extra``), the export's original value goes back into ``_extra`` under its
    key. The column holds the cleaned value; ``_extra`` what the export said. ``patch_only``:
    leave ``_extra`` as staged and give those originals as a JSON object in ``_patch`` instead
    (NULL where nothing changed; see :data:`etl.dataset.PATCH`), whose reader then applies
    ``_extra``'s own steps (the transform, to the ``extra`` texts it writes)."""
    steps = [step for step in effective_cleaning(dataset) if step.level == level]
    if not steps:
        return lf.with_columns(pl.lit(None, pl.String()).alias(PATCH)) if patch_only else lf
    lvl = dataset.levels[level]
    table = dataset.table(lvl.table) if lvl.table is not None else None
    tables = {t.name: t for t in dataset.tables}
    keep = {}
    for step in steps:
        field = next((f for f in lvl.fields if f.name == step.column), None)
        if field is not None and typed_in_table(field, table, lvl, tables) and step.column not in keep:
            keep[step.column] = field.key
    if keep:
        lf = lf.with_columns(pl.col(c).alias(f"__orig_{c}") for c in keep)
    # _extra's own steps (its NULs) run last, over the originals put back into it too.
    for step in (s for s in steps if s.column != STAGED_EXTRA):
        lf = lf.with_columns(step.fn(pl.col(step.column)).alias(step.column))
    if keep:
        parts = [pl.col(STAGED_EXTRA).alias("e")]
        for n, c in enumerate(keep):
            orig = pl.col(f"__orig_{c}")
            parts += [(orig.ne_missing(pl.col(c)) & orig.is_not_null()).alias(f"c{n}"),
                      orig.alias(f"o{n}")]
        keys = list(keep.values())
        if patch_only:
            parts[0] = pl.lit(None, pl.String()).alias("e")
        lf = lf.with_columns(pl.struct(parts).map_batches(
            functools.partial(_restore_originals, keys=keys, patch_only=patch_only),
            return_dtype=pl.String(), is_elementwise=True,
        ).alias(PATCH if patch_only else STAGED_EXTRA)).drop([f"__orig_{c}" for c in keep])
    elif patch_only:
        lf = lf.with_columns(pl.lit(None, pl.String()).alias(PATCH))
    for step in (s for s in steps if s.column == STAGED_EXTRA and not patch_only):
        lf = lf.with_columns(step.fn(pl.col(step.column)).alias(step.column))
    return lf


def _restore_originals(rows: pl.Series, keys: list[str], *, patch_only: bool = False,
                       **_: Any) -> pl.Series:
    """``_extra`` with the original values of the cleaned fields put back where a step changed
    them: the struct's fields are ``_extra`` (``e``), then per key of ``keys`` whether it
    changed (``c<n>``) and its original value (``o<n>``). Only changed rows are touched, in
    Python: cleaning changes few values."""
    extra = rows.struct.field("e")
    changed = rows.struct.field("c0").fill_null(False)
    for n in range(1, len(keys)):
        changed = changed | rows.struct.field(f"c{n}").fill_null(False)
    if patch_only:
        extra = pl.Series(rows.name, [None] * rows.len(), dtype=pl.String())
    if not changed.any():
        return extra
    idx = changed.arg_true()
    new = []
    for row in rows.gather(idx).to_list():
        originals = {key: row[f"o{n}"] for n, key in enumerate(keys) if row[f"c{n}"]}
        new.append(add_keys(row["e"] if row["e"] is not None else "{}", originals))
    return extra.scatter(idx, pl.Series(new, dtype=pl.String()))


def open_run(path: str | StagePath) -> Run:
    """Open a staged run directory (``staging/<dataset>/<run>``) for reading.

    >>> run = open_run("staging/mids/mids-1a2b3c4d5e6f")   # doctest: +SKIP
    >>> run.raw("powers").select("full_name", "level").collect()   # doctest: +SKIP

    ``path`` may be a URI (``s3://bucket/staging/mids/mids-1a2b3c4d5e6f``): see :mod:`etl.staging_fs`.
    """
    root = resolve(path)
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        raise RunStateError(
            f"{root} is not a complete staged run (no {MANIFEST})",
            file=root, hint="stage it again with `etl stage DATASET SOURCE...`")
    try:
        manifest = orjson.loads(manifest_path.read_bytes())
    except json.JSONDecodeError as exc:
        raise RunStateError(f"manifest is not valid JSON: {exc}", file=manifest_path,
                            hint="stage the export again with `etl stage --force`") from exc
    if manifest.get("format") != MANIFEST_FORMAT:
        raise RunStateError(f"manifest format {manifest.get('format')} is not {MANIFEST_FORMAT}",
                            file=manifest_path, hint="stage the export again with this toolkit")
    return Run(root, Manifest(manifest))


def latest_run(dataset: str, staging_dir: str | StagePath = "staging") -> Run:
    """The run of ``dataset`` staged last under ``staging_dir`` (a notebook's way to the run an
    ``etl run`` just made): :class:`RunStateError` naming the folder when there is none.

    >>> run = latest_run("mids")   # doctest: +SKIP
    """
    folder = resolve(staging_dir) / dataset
    runs: list[StagePath] = [p for p in folder.glob(f"{dataset}-*")
                             if (p / MANIFEST).is_file()] if folder.is_dir() else []
    if not runs:
        raise RunStateError(f"no staged run of {dataset} under {folder}", file=folder,
                            hint=f"stage one with `etl run {dataset} SOURCE...` (or pass staging_dir)")
    return open_run(max(runs, key=lambda p: ((p / MANIFEST).stat().st_mtime, p.name)))


def lineage_columns() -> list[str]:
    return list(LINEAGE)
