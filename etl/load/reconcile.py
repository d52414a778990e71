"""Reconcile: rebuild every source record from the rows it became and compare it with the export.

A record of a level with a home table (:attr:`etl.dataset.Level.table`) is one row of that table:
its typed columns (the fields whose key left ``extra``, see :mod:`etl.stage.extra`) plus its
``extra`` JSON (which wins where both have a key: it keeps the export's original of a value a
cleaning step changed). Its child records are rows of their own, found by their lineage
(``_file``, ``_record``, ``_path``, which the table chunks carry). Each rebuilt record is compared
with the record as the export holds it, less the lists whose records are rows of their own;
values compare as JSON values (``1`` equals ``1.0``; key order does not matter).

The rows are read from the transformed run's table chunks; the load's verification proves the
database holds exactly those rows (row count and content checksum per table), so a run that
reconciles and loaded has every key of its export in the database.

Records that validation rejected are counted apart (they are in ``rejects/``, not loaded).
Memory: one source file's records at a time, and the rows of one group of files (about
:data:`GROUP_BYTES` of source) per home table; a larger export's rows wait in temporary files.
"""

from __future__ import annotations

import gzip
import logging
import os
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from etl.dataset import ELEMENT, EXTRA, Dataset, Level, Table, field_column, typed_in_table
from etl.errors import RunStateError
from etl.jsontext import dump_json, get_path, parse_record
from etl.run import Run
from etl.staging_fs import parquet_source

log = logging.getLogger(__name__)

_UNREADABLE = object()

#: Mismatches kept in the report (all are counted).
EXAMPLES = 20

Progress = Callable[[str, int, int], None]


@dataclass(slots=True)
class Reconciliation:
    """What :func:`reconcile` found: counts, per level, and the first mismatches."""

    run: str
    files: int = 0
    records: int = 0
    keys_compared: int = 0
    matched: int = 0
    #: Of ``matched``, the records equal to their rows once their NULs are removed (the built-in
    #: ``strip_nul`` cleaning: PostgreSQL's text and json cannot hold NUL).
    cleaned: int = 0
    rejected: int = 0
    mismatched: int = 0
    missing: int = 0
    levels: dict[str, dict[str, int]] = field(default_factory=dict)
    mismatches: list[dict[str, Any]] = field(default_factory=list)
    #: Source files (or records) Python's JSON readers cannot read (DuckDB's reader accepts a
    #: few tokens more, e.g. ``inf``): not compared, listed.
    unreadable: list[dict[str, Any]] = field(default_factory=list)
    #: Files a sample left out for their size (reconcile them with ``etl reconcile``).
    too_large: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.mismatched == 0 and self.missing == 0

    def to_dict(self) -> dict[str, Any]:
        return {"run": self.run, "ok": self.ok, "files": self.files, "records": self.records,
                "keys_compared": self.keys_compared, "matched": self.matched,
                "cleaned": self.cleaned, "rejected": self.rejected,
                "mismatched": self.mismatched, "missing": self.missing,
                "levels": self.levels, "mismatches": self.mismatches,
                "unreadable": self.unreadable, "too_large": self.too_large}


def _chain(dataset: Dataset, level: Level) -> list[Level]:
    levels = dataset.levels
    out = [level]
    while out[-1].parent is not None:
        out.append(levels[out[-1].parent or ""])
    return out[::-1]


def _records_of(path: Path) -> Iterator[Any]:
    """The records of a source file: a one-object file's object, an array's elements, NDJSON's
    lines (gzip of any of those)."""
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    try:
        doc = parse_record(data)
    except ValueError:
        lines = [line for line in data.splitlines() if line.strip()]
        if len(lines) < 2:
            raise
        for line in lines:
            try:
                yield parse_record(line)
            except ValueError:
                yield _UNREADABLE
        return
    if isinstance(doc, list):
        yield from doc
    else:
        yield doc


def _without(element: Any, paths: list[str]) -> Any:
    """``element`` less the non-empty lists at ``paths`` (they are rows of their own)."""
    if not isinstance(element, dict) or not paths:
        return element
    out = dict(element)
    for path in paths:
        *parents, last = path.split(".")
        holder: Any = out
        for part in parents:
            if not isinstance(holder, dict) or not isinstance(holder.get(part), dict):
                holder = None
                break
            holder[part] = dict(holder[part])
            holder = holder[part]
        if isinstance(holder, dict):
            value = holder.get(last)
            if isinstance(value, list) and value:
                del holder[last]
    return out


def _without_nul(value: Any) -> Any:
    """``value`` as the built-in ``strip_nul`` cleaning loads it: NUL removed from its strings
    and keys (a key that then equals another: the later one wins, as in the loaded JSON)."""
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict):
        return {k.replace("\x00", ""): _without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_nul(v) for v in value]
    return value


def _same(a: Any, b: Any) -> bool:
    """JSON equality: numbers by value (not bool against number), objects regardless of order."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


class _Rebuilder:
    """Rebuilds the records of one level from its home table's rows."""

    def __init__(self, dataset: Dataset, level: Level) -> None:
        assert level.table is not None
        table = dataset.table(level.table)
        self.level = level
        self.table = table
        tables = {t.name: t for t in dataset.tables}
        #: (column of the rebuilt frame, JSON key) of each field that left ``extra``; a field
        #: held by a lookup row (``fk->table.column``) is read through ``vias``.
        self.typed: list[tuple[str, str]] = []
        self.vias: list[tuple[str, Table, str, str]] = []  # (fk, lookup table, column, alias)
        self.json: set[str] = set()  # columns of typed that hold JSON text
        for f in level.fields:
            if not typed_in_table(f, table, level, tables):
                continue
            found = field_column(level, f, tables)
            assert found is not None
            fk, target, col = found
            if f.type == "JSON":  # a JSON field in a json(b) column: read back as its text
                self.json.add(col.name if fk is None else f"__via_{f.name}")
            if fk is None:
                self.typed.append((col.name, f.key))
            else:
                alias = f"__via_{f.name}"
                self.vias.append((fk, target, col.name, alias))
                self.typed.append((alias, f.key))
        self.base = next((f.name for f in level.fields
                          if f.key == ELEMENT and any(c.name == f.name for c in table.columns)), None)
        levels = dataset.levels
        roots = {lvl.name for lvl in levels.values() if lvl.parent is None and lvl.path is None}
        self.children = [lvl.path for lvl in levels.values()
                         if lvl.path is not None and lvl.table is not None
                         and (lvl.parent == level.name or (lvl.parent is None and level.name in roots))]

    def rebuild(self, row: dict[str, Any]) -> Any:
        extra = parse_record(row[EXTRA]) if row.get(EXTRA) is not None else {}
        if self.base is not None and row.get(self.base) is not None:
            extra = parse_record(row[self.base])
        if not isinstance(extra, dict):
            return extra
        out: dict[str, Any] = {}
        for name, key in self.typed:
            value = row.get(name)
            if value is not None:
                out[key] = parse_record(value) if name in self.json else value
        out.update(extra)
        return out


#: Sources with at most this many files are always reconciled whole, even in a sample.
SMALL_SOURCE = 8
#: A sample leaves out files larger than this: a file is parsed whole in Python (several times
#: its size in memory), which the load's verify step must not do with a 500 MB array export.
#: ``etl reconcile`` (no sample) reads them all.
SAMPLE_MAX_FILE = 64 << 20


def sample_files(run: Run, sample: float | None) -> list[dict[str, Any]]:
    """The source files a reconciliation reads: all (``sample`` None or >= 1), or of each
    source a run of adjacent files (in path order) that is ``sample`` of them, starting at its
    file of the lowest content hash (the same files every time), plus every file of a small
    source. Adjacent files, because their rows sit together in the tables (sorted by keys that
    follow the files' names, as the mids export's do): the sample then reads a few of each
    table's row groups instead of every one (1 in 32 files scattered by hash touched all)."""
    sources = [s for s in run.manifest.get("sources", []) if "relpath" in s and "sha256" in s]
    if sample is None or sample >= 1:
        return sources
    per_source: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for src in sources:
        per_source[src["source"]].append(src)
    picked: set[str] = set()
    for files in per_source.values():
        if len(files) <= SMALL_SOURCE:
            picked.update(f["relpath"] for f in files)
            continue
        files = sorted(files, key=lambda f: f["relpath"])
        first = min(range(len(files)), key=lambda i: (files[i]["sha256"], files[i]["relpath"]))
        take = max(1, round(len(files) * max(sample, 0.0)))
        picked.update(files[(first + i) % len(files)]["relpath"] for i in range(take))
    return [src for src in sources
            if src["relpath"] in picked and int(src.get("size") or 0) <= SAMPLE_MAX_FILE]


def sampled_out(run: Run, sample: float | None) -> list[str]:
    """Files a sample leaves out for their size alone (see :data:`SAMPLE_MAX_FILE`)."""
    if sample is None or sample >= 1:
        return []
    return [s["relpath"] for s in run.manifest.get("sources", [])
            if "relpath" in s and int(s.get("size") or 0) > SAMPLE_MAX_FILE]


def _query(url: str, sql: str) -> pl.DataFrame:
    """``sql``'s rows from the database at ``url``, read as Arrow."""
    from etl.infra import pg

    conn = pg.connect_adbc(url)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            arrow = cur.fetch_arrow_table()
        conn.rollback()
    finally:
        conn.close()
    found = pl.from_arrow(arrow)
    assert isinstance(found, pl.DataFrame)
    return found


def _loaded_pieces(run: Run, table: Table, columns: list[str], url: str, schema: str,
                   wanted: pl.Series) -> Iterator[pl.DataFrame]:
    """The rows of ``table`` as the database holds them (``columns``, JSON as its text), a
    fetched batch at a time, each row with the lineage of the staged row of the same primary
    key, of the ``wanted`` files only."""
    from etl.infra import pg

    pk = list(table.primary_key)
    staged = (run.table(table.name, lineage=True).select(*pk, "_file", "_record", "_path")
              .filter(pl.col("_file").is_in(wanted.implode())).collect())
    types = {c.name: c.type for c in table.columns}
    select = ", ".join(f"{pg.quote_ident(c)}::text AS {pg.quote_ident(c)}"
                       if types.get(c) in ("json", "jsonb") else pg.quote_ident(c)
                       for c in dict.fromkeys([*pk, *columns]))
    conn = pg.connect_adbc(url)
    try:
        with conn.cursor() as cur:
            cur.execute(f"SELECT {select} FROM {pg.quote_ident(schema)}.{pg.quote_ident(table.name)}")
            for batch in cur.fetch_record_batch():
                loaded = pl.from_arrow(batch)
                assert isinstance(loaded, pl.DataFrame)
                loaded = loaded.cast({c: dtype for c, dtype in staged.schema.items() if c in pk})
                yield loaded.join(staged, on=pk, how="inner")
        conn.rollback()
    finally:
        conn.close()


def reconcile(run: Run, dataset: Dataset, *, sample: float | None = None,
              database_url: str | None = None, schema: str | None = None,
              progress: Progress | None = None) -> Reconciliation:
    """Rebuild each record of every homed level of ``run`` from its transformed table rows and
    compare it with the source file it came from (see the module's doc).

    ``sample`` (a fraction): reconcile only the files :func:`sample_files` picks (the load's
    verify step does; ``etl reconcile`` reads every file). ``database_url``: rebuild from the
    rows the database holds (``schema``, default the dataset's live schema) instead of the
    staged ones, matched to their lineage by primary key."""
    if "tables" not in run.manifest:
        raise RunStateError(f"run {run.id} has not been transformed", run=run.id,
                            hint=f"run `etl transform {run.path}` first")
    sources = sample_files(run, sample)
    selected = [src["relpath"] for src in sources]
    result = Reconciliation(run.id, files=len(sources), too_large=sampled_out(run, sample))
    homed = [lvl for lvl in dataset.levels.values() if lvl.table is not None]
    rebuilders = {lvl.name: _Rebuilder(dataset, lvl) for lvl in homed}
    for lvl in homed:
        result.levels[lvl.name] = {"records": 0, "matched": 0, "cleaned": 0, "rejected": 0,
                                   "mismatched": 0, "missing": 0}

    tables = sorted({lvl.table for lvl in homed if lvl.table is not None})
    lookups: dict[tuple[str, str], pl.DataFrame] = {}

    def lookup(target: Table, column: str) -> pl.DataFrame:
        """A lookup table's key and ``column``, from the database or the staged tables (narrow:
        read once, kept)."""
        if (target.name, column) not in lookups:
            key = target.primary_key[0]
            if database_url is None:
                found = run.table(target.name).select(key, column).collect()
            else:
                from etl.infra import pg

                found = _query(database_url, f"SELECT {pg.quote_ident(key)}, "
                               f"{pg.quote_ident(column)} FROM {pg.quote_ident(schema or dataset.name)}"
                               f".{pg.quote_ident(target.name)}")
            lookups[(target.name, column)] = found
        return lookups[(target.name, column)]

    def with_vias(table: str, frame: pl.DataFrame) -> pl.DataFrame:
        for rb in rebuilders.values():
            if rb.table.name != table:
                continue
            for fk, target, column, alias in rb.vias:
                if alias in frame.columns:
                    continue
                key = target.primary_key[0]
                found = lookup(target, column).rename({key: fk, column: alias})
                frame = frame.join(found.cast({fk: frame.schema[fk]}), on=fk, how="left",
                                   maintain_order="left")
        return frame

    def columns_of(table: str) -> list[str]:
        cols = {EXTRA}
        for rb in rebuilders.values():
            if rb.table.name == table:
                cols |= {name for name, _ in rb.typed if not name.startswith("__via_")}
                cols |= {fk for fk, _, _, _ in rb.vias}
                if rb.base:
                    cols.add(rb.base)
        return sorted(cols)

    wanted = pl.Series(selected, dtype=pl.String())

    def pieces(table: str) -> Iterator[pl.DataFrame]:
        """The table's rows of the selected files with their lineage, a chunk (or a fetched
        batch) at a time; at least one frame (empty, with the columns) when there are none."""
        any_rows = False
        for piece in _pieces(table):
            any_rows = True
            yield piece
        if not any_rows:
            yield run.table(table, lineage=True).select(
                [*columns_of(table), "_file", "_record", "_path"]).head(0).collect()

    def _pieces(table: str) -> Iterator[pl.DataFrame]:
        own = columns_of(table)
        if database_url is not None:
            yield from _loaded_pieces(run, dataset.table(table), own, database_url,
                                      schema or dataset.name, wanted)
            return
        entry = run.manifest["tables"][table]
        lineage_cols = set(entry.get("lineage", {}))
        own = [c for c in own if c not in lineage_cols]
        for chunk, line in zip(entry["chunks"], entry.get("lineage_chunks", []), strict=True):
            lineage = pl.read_parquet(parquet_source(run.path / line["path"]))
            keep = lineage.get_column("_file").is_in(wanted.implode())
            if not keep.any():
                continue
            # A row group at a time (the wide extra texts of a whole chunk at once, copied by
            # each step, were the peak), with the lineage rows beside it; a row group none of
            # whose rows is wanted is not even read.
            start = 0
            parquet = pq.ParquetFile(parquet_source(run.path / chunk["path"]))
            for group in range(parquet.metadata.num_row_groups):
                n = parquet.metadata.row_group(group).num_rows
                mask = keep.slice(start, n)
                if mask.any():
                    rows = pl.from_arrow(parquet.read_row_group(group, columns=own))
                    assert isinstance(rows, pl.DataFrame)
                    yield rows.hstack(lineage.slice(start, n)).filter(mask)
                start += n

    rejected: dict[str, set[tuple[int, str]]] = defaultdict(set)
    for lvl in homed:
        rej = run.rejects(lvl.name)
        if rej is not None:
            for f, r, p in rej.select("_file", "_record", "_path").collect().iter_rows():
                rejected[f].add((r, p or ""))

    # The files in groups of about GROUP_BYTES of source; each table's rows are first spread
    # over the groups (temporary Arrow files, when there is more than one), then each group is
    # reconciled holding its rows only.
    groups = _groups(sources)
    done = 0
    with _Spill(tables, groups, pieces) as spill:
        for g, group in enumerate(groups):
            frames = {t: _ByFile(with_vias(t, spill.rows(t, g))) for t in tables}
            for src in group:
                _reconcile_file(result, run, dataset, homed, rebuilders, src, frames,
                                rejected[src["relpath"]])
                done += 1
                if progress:
                    progress("reconcile", done, len(sources))
            del frames
    log.info("reconciled %s: %d records, %d matched, %d mismatched, %d missing", run.id,
             result.records, result.matched, result.mismatched, result.missing)
    return result


#: Source bytes reconciled together: a group of files' rows are held at once, never all.
GROUP_BYTES = 16 << 20


def _groups(sources: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """``sources`` in order, cut into groups of about :data:`GROUP_BYTES` (a larger file alone)."""
    groups: list[list[dict[str, Any]]] = []
    size = 0
    for src in sources:
        n = int(src.get("size") or 0)
        if not groups or (groups[-1] and size + n > GROUP_BYTES):
            groups.append([])
            size = 0
        groups[-1].append(src)
        size += n
    return groups or [[]]


class _Spill:
    """Each table's rows spread over the groups of files they belong to: with one group, held
    as they are; with more, written to one temporary Arrow file per (table, group), so a
    group's rows are read back alone."""

    def __init__(self, tables: list[str], groups: list[list[dict[str, Any]]],
                 pieces: Callable[[str], Iterator[pl.DataFrame]]) -> None:
        self.tables = tables
        self.groups = groups
        self.pieces = pieces
        self.held: dict[str, pl.DataFrame] = {}
        self.empty: dict[str, pl.DataFrame] = {}
        self.tmp: Path | None = None

    def __enter__(self) -> _Spill:
        if len(self.groups) > 1:
            self.tmp = Path(tempfile.mkdtemp(prefix="etl-reconcile-"))
            group_of = pl.DataFrame(
                {"_file": [s["relpath"] for g in self.groups for s in g],
                 "_group": [i for i, g in enumerate(self.groups) for _ in g]},
                schema={"_file": pl.String(), "_group": pl.Int32()})
        for table in self.tables:
            if self.tmp is None:
                parts = list(self.pieces(table))
                self.held[table] = pl.concat(parts, how="vertical_relaxed") if parts else pl.DataFrame()
                continue
            writers: dict[int, ipc.RecordBatchFileWriter] = {}
            schema = None
            try:
                for piece in self.pieces(table):
                    if table not in self.empty:
                        self.empty[table] = piece.head(0)
                    tagged = piece.join(group_of, on="_file", how="inner")
                    for (g,), part in tagged.partition_by("_group", as_dict=True).items():
                        batch = part.drop("_group").to_arrow()
                        schema = schema or batch.schema
                        w = writers.get(int(g))
                        if w is None:
                            w = writers[int(g)] = ipc.new_file(self._path(table, int(g)), schema)
                        w.write_table(batch.cast(schema))
            finally:
                for w in writers.values():
                    w.close()
        return self

    def _path(self, table: str, group: int) -> str:
        assert self.tmp is not None
        return str(self.tmp / f"{table}-{group:05d}.arrow")

    def rows(self, table: str, group: int) -> pl.DataFrame:
        """The rows of ``table`` from the files of group ``group`` (``_file`` never null)."""
        if self.tmp is None:
            frame = self.held.get(table, pl.DataFrame())
        else:
            path = self._path(table, group)
            frame = pl.read_ipc(path) if os.path.exists(path) else \
                self.empty.get(table, pl.DataFrame())
        if "_file" not in frame.columns:
            return pl.DataFrame(schema={"_file": pl.String(), "_record": pl.Int64(),
                                        "_path": pl.String()})
        return frame.filter(pl.col("_file").is_not_null())

    def __exit__(self, *exc: object) -> None:
        self.held.clear()
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)


class _ByFile:
    """A group's rows of one table, by source file: sorted by file once and sliced per file.
    (``partition_by`` made a frame per file, every column a Series of its own: 50 KB a file of
    a wide table, 55 MB for the 1,100 files of a sample group of an inferred spec.)"""

    def __init__(self, frame: pl.DataFrame) -> None:
        self.frame = frame.sort("_file", maintain_order=True)
        counts = self.frame.group_by("_file", maintain_order=True).len()
        ends = counts.get_column("len").cum_sum().to_list()
        self.spans = {f: (end - n, n) for f, n, end in zip(
            counts.get_column("_file").to_list(), counts.get_column("len").to_list(), ends,
            strict=True)}

    def get(self, relpath: str) -> pl.DataFrame | None:
        span = self.spans.get(relpath)
        return None if span is None else self.frame.slice(*span)


def _reconcile_file(result: Reconciliation, run: Run, dataset: Dataset, homed: list[Level],
                    rebuilders: dict[str, _Rebuilder], src: dict[str, Any],
                    frames: dict[str, _ByFile], rejected: set[tuple[int, str]]) -> None:
    relpath = src["relpath"]
    path = Path(src["path"])
    if not path.is_file():
        raise RunStateError(f"source file {path} is gone; it cannot be reconciled", run=run.id,
                            file=path, hint="reconcile where the export sits")
    loaded: dict[str, dict[tuple[int, str], dict[str, Any]]] = {}
    for table, parts in frames.items():
        part = parts.get(relpath)
        loaded[table] = {} if part is None else {
            (row["_record"], row["_path"] or ""): row for row in part.iter_rows(named=True)}
    ds_levels = [lvl for lvl in homed if dataset.level_source(lvl.name).name == src["source"]]
    try:
        records = list(_records_of(path))
    except ValueError as exc:  # text DuckDB read but Python's JSON readers do not
        result.unreadable.append({"file": relpath, "reason": str(exc)[:200]})
        return
    for record_no, record in enumerate(records):
        if record is _UNREADABLE:
            result.unreadable.append({"file": relpath, "record": record_no})
            continue
        for lvl in ds_levels:
            for p, element in _elements(dataset, lvl, record):
                _compare(result, rebuilders[lvl.name], relpath, record_no, p, element,
                         loaded[lvl.table or ""], rejected)


def _elements(dataset: Dataset, level: Level, record: Any) -> Iterator[tuple[str, Any]]:
    """(``_path``, element) of each record of ``level`` inside a source ``record``."""
    chain = _chain(dataset, level)
    items: list[tuple[str, Any]] = [("", record)]
    for lvl in chain:
        if lvl.path is None:
            continue
        nxt: list[tuple[str, Any]] = []
        for prefix, holder in items:
            values = get_path(holder, lvl.path)
            if isinstance(values, list):
                base = f"{prefix}." if prefix else ""
                nxt.extend((f"{base}{lvl.path}[{j}]", v) for j, v in enumerate(values))
        items = nxt
    return iter(items)


def _compare(result: Reconciliation, rb: _Rebuilder, relpath: str, record: int, path: str,
             element: Any, loaded: dict[tuple[int, str], dict[str, Any]],
             rejected: set[tuple[int, str]]) -> None:
    counts = result.levels[rb.level.name]
    result.records += 1
    counts["records"] += 1
    if (record, path) in rejected:
        result.rejected += 1
        counts["rejected"] += 1
        return
    row = loaded.get((record, path))
    if row is None:
        result.missing += 1
        counts["missing"] += 1
        _example(result, relpath, record, path, None, "no row holds this record")
        return
    want = _without(element, rb.children)
    got = rb.rebuild(row)
    result.keys_compared += len(want) if isinstance(want, dict) else 1
    # Python's == compares dicts regardless of key order and numbers by value, in C. (It also
    # takes true for 1; a typed column holds a boolean only where the export had one.)
    if want == got:
        result.matched += 1
        counts["matched"] += 1
        return
    # (a record without NUL is itself after this, and already differed)
    if _without_nul(want) == got:
        result.matched += 1
        result.cleaned += 1
        counts["matched"] += 1
        counts["cleaned"] += 1
        return
    result.mismatched += 1
    counts["mismatched"] += 1
    if isinstance(want, dict) and isinstance(got, dict):
        for key in sorted(set(want) | set(got)):
            if key not in got or key not in want or not _same(want[key], got[key]):
                _example(result, relpath, record, path, key,
                         f"export {_short(want.get(key, '<missing>'))}, "
                         f"loaded {_short(got.get(key, '<missing>'))}")
                break
    else:
        _example(result, relpath, record, path, None, f"export {_short(want)}, loaded {_short(got)}")


def _short(value: Any) -> str:
    text = value if isinstance(value, str) and value == "<missing>" else dump_json(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _example(result: Reconciliation, file: str, record: int, path: str, key: str | None,
             what: str) -> None:
    if len(result.mismatches) < EXAMPLES:
        result.mismatches.append({"file": file, "record": record, "path": path or None,
                                  "key": key, "difference": what})
