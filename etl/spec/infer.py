"""Infer a dataset spec from JSON exports: :func:`infer` reads every record of every file, one file at
a time, and proposes sources, levels, columns, types, keys and rules (see :mod:`etl.spec.model`).

How it reads: each file is parsed whole (orjson; :func:`etl.jsontext.parse_record` where a number is
beyond 64 bits) or, for ``.ndjson``/``.jsonl``, a batch of lines at a time; only that file's values
are held. The records of a file are profiled a column at a time (a level's rows gathered into a list,
each key's values gathered with a comprehension), which keeps the per-value work in C.

What it keeps across files, per level: for each column the kinds of values seen, a count of the
values present, the small set of distinct values (dropped past :data:`ONE_OF_MAX`), and for at most
:data:`KEY_CANDIDATES` direct fields the hashes of their values (a candidate is dropped at its first
duplicate, null or missing value). A broken file is skipped and listed in :attr:`Spec.skipped` with
the byte offset of the error (``strict=True`` raises :class:`SpecError` instead).
"""

from __future__ import annotations

import fnmatch
import glob
import gzip
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any

from etl.errors import TerminalError
from etl.jsontext import JSON_SUFFIXES, is_line_delimited, json_files_under, parse_record
from etl.spec.model import (
    ColumnSpec,
    KeySpec,
    LevelSpec,
    RuleSpec,
    SkippedFile,
    SourceSpec,
    Spec,
    widen,
)

log = logging.getLogger(__name__)

#: Nested objects are flattened into columns this many levels below a record; deeper ones are jsonb.
FLATTEN_DEPTH = 2
#: Nested lists of objects become child levels this many deep; deeper ones are jsonb.
MAX_LEVEL_DEPTH = 5
#: An object position with more distinct keys than this is kept whole as jsonb (keys that are data).
MAX_KEYS = 500
#: A record level with more distinct keys than this (keys that are data) gets no columns: its
#: records stay whole in ``extra``. Below it, the level keeps at most :data:`MAX_COLUMNS` columns,
#: the keys most records have; the rest stay in ``extra`` too (PostgreSQL takes 1,600 columns).
ROOT_MAX_KEYS = 20_000
MAX_COLUMNS = 400
#: A column with at most this many distinct values of its own type, present in at least
#: ONE_OF_MIN_ROWS rows,
#: gets a proposed ``one_of`` rule.
ONE_OF_MAX = 12
ONE_OF_MIN_ROWS = 50
#: Direct fields of a level tried as its natural key (the first ones seen).
KEY_CANDIDATES = 16
#: Files whose key sets share at least this much (Jaccard) with a source's keys join that source.
SIMILAR = 0.5
#: A file whose top-level keys are this much (or more) among a source's keys is of that source.
CONTAINED = 0.8
#: A folder whose files would make more sources than this is read as one source.
MAX_SHAPES = 4
#: Lines of an NDJSON file profiled together.
NDJSON_BATCH = 2000
#: One-object files are profiled this many records (or files of this many bytes) at a time.
OBJECT_BATCH = 256
OBJECT_BATCH_BYTES = 16 << 20
#: A top-level array file larger than this is read an element at a time (DuckDB's streaming
#: reader, as staging reads it), never parsed whole: a 533 MB array held 4.1 GB as Python objects.
STREAM_ARRAY_BYTES = 16 << 20

_INT64 = (-(2**63), 2**63 - 1)
_SCALAR_TYPE = {bool: "boolean", int: "bigint", float: "double precision", str: "text"}
_KEYABLE = (int, str)


def _path_key(key: str) -> bool:
    """Whether ``key`` can be a part of a level's path (``a.b[]``) and a field's key: not empty,
    not the whole-record key ``*``, none of ``. [ ] " \\``."""
    return bool(key) and key != "*" and not any(c in key for c in '.[]"\\')


def _key_text(value: Any) -> str:
    """A key value as a text column holds it (strings less NUL, which loading strips)."""
    return value.replace("\0", "") if type(value) is str else str(value)


class SpecError(TerminalError):
    """Inference cannot go on: no JSON files, or (with ``strict``) a file that is not JSON."""


# ---------------------------------------------------------------------------------------------
# column names


_RESERVED_WORDS = """
all analyse analyze and any array as asc asymmetric authorization binary both case cast check collate
collation column concurrently constraint create cross current_catalog current_date current_role
current_schema current_time current_timestamp current_user default deferrable desc distinct do else end
except false fetch for foreign freeze from full grant group having ilike in initially inner intersect into
is isnull join lateral leading left like limit localtime localtimestamp natural not notnull null offset on
only or order outer overlaps placing primary references returning right select session_user similar some
symmetric system_user table tablesample then to trailing true union unique user using variadic verbose
when where window with
"""
#: PostgreSQL's reserved key words: a column named one gets a trailing ``_``.
RESERVED = frozenset(_RESERVED_WORDS.split())

_CAMEL1 = re.compile(r"([a-z0-9])([A-Z])")
_CAMEL2 = re.compile(r"([A-Z]+)([A-Z][a-z])")
_NOT_IDENT = re.compile(r"[^a-z0-9_]+")
_UNDERSCORES = re.compile(r"_+")


def snake(text: str) -> str:
    """``text`` in snake_case: ``PowerSetID`` -> ``power_set_id``, ``nID`` -> ``n_id``, ``a.b c`` ->
    ``a_b_c``; characters other than ASCII letters, digits and ``_`` become ``_``."""
    text = _CAMEL2.sub(r"\1_\2", _CAMEL1.sub(r"\1_\2", text))
    return _UNDERSCORES.sub("_", _NOT_IDENT.sub("_", text.lower())).strip("_")


def pg_name(parts: list[str] | tuple[str, ...], taken: set[str]) -> str:
    """A PostgreSQL identifier for the key path ``parts`` not in ``taken`` (which it is added to):
    snake_case parts joined by ``_``, at most 63 bytes, not starting with a digit, reserved words
    followed by ``_``, a collision suffixed ``_2``, ``_3``..."""
    base = "_".join(p for p in (snake(x) for x in parts) if p) or "col"
    if base[0].isdigit():
        base = "_" + base
    base = base[:63]
    if base in RESERVED:
        base += "_"
    name, n = base, 1
    while name in taken:
        n += 1
        suffix = f"_{n}"
        name = base[: 63 - len(suffix)] + suffix
    taken.add(name)
    return name


# ---------------------------------------------------------------------------------------------
# profiles


@dataclass
class _Col:
    """What was seen at one key path of a level."""

    path: tuple[str, ...]
    kinds: set[str] = field(default_factory=set)
    present: int = 0
    scalar: str | None = None
    distinct: set[Any] | None = field(default_factory=set)


@dataclass
class _Level:
    """A level being profiled: its columns, object positions, key candidates and child levels."""

    path: str
    depth: int
    parent: _Level | None
    at: tuple[str, ...] = ()
    rows: int = 0
    cols: dict[tuple[str, ...], _Col] = field(default_factory=dict)
    positions: dict[tuple[str, ...], dict[str, None] | None] = field(default_factory=dict)
    children: dict[tuple[str, ...], _Level] = field(default_factory=dict)
    unique: dict[str, set[int]] | None = None
    unique_in_parent: dict[str, None] | None = None
    #: Keys the level's columns leave out are expected (kept in ``extra``, not drift).
    open: bool = False

    def col(self, path: tuple[str, ...]) -> _Col:
        col = self.cols.get(path)
        if col is None:
            col = self.cols[path] = _Col(path)
        return col


@dataclass
class _Source:
    """Files grouped as one source, and the profile of their records."""

    kind: str
    depth: int
    keys: set[str]
    files: list[str] = field(default_factory=list)
    root: _Level = field(default_factory=lambda: _Level("", 0, None))
    records: int = 0


class _Profiler:
    """Profiles batches of records into a :class:`_Level` tree; collects warnings."""

    def __init__(self) -> None:
        self.warnings: list[str] = []

    def level_batch(self, lv: _Level, rows: list[Any], bounds: list[int] | None) -> None:
        """Profile ``rows`` (objects; anything else is profiled as ``{"value": it}``) of ``lv``;
        ``bounds`` are the ends of each parent's run of rows (child levels)."""
        if not all(type(r) is dict for r in rows):
            rows = [r if type(r) is dict else {"value": r} for r in rows]
        first = lv.rows == 0
        lv.rows += len(rows)
        keys = self.object_batch(lv, (), rows)
        if keys is None:
            return
        if first:
            cands = [k for k in keys][:KEY_CANDIDATES]
            lv.unique = {k: set() for k in cands}
            lv.unique_in_parent = dict.fromkeys(cands) if lv.parent is not None else {}
        self._keys(lv, rows, bounds)

    def _keys(self, lv: _Level, rows: list[dict[str, Any]], bounds: list[int] | None) -> None:
        assert lv.unique is not None and lv.unique_in_parent is not None
        for k in list(lv.unique.keys() | lv.unique_in_parent.keys()):
            vals = [r.get(k) for r in rows]
            if not all(type(v) in _KEYABLE for v in vals):
                lv.unique.pop(k, None)
                lv.unique_in_parent.pop(k, None)
                continue
            # Values are compared as the column may hold them: by value (1 and 1.0 are one
            # number) and by their text (1 and "1" are one text; NUL is stripped before loading).
            texts = [_key_text(v) for v in vals]
            seen = lv.unique.get(k)
            if seen is not None:
                before = len(seen)
                seen.update(map(hash, vals))
                seen.update(hash((None, t)) for t in texts)
                if len(seen) != before + 2 * len(vals):
                    del lv.unique[k]
            if k in lv.unique_in_parent and bounds is not None:
                start = 0
                for end in bounds:
                    if (len(set(vals[start:end])) != end - start
                            or len(set(texts[start:end])) != end - start):
                        del lv.unique_in_parent[k]
                        break
                    start = end

    def object_batch(self, lv: _Level, prefix: tuple[str, ...], dicts: list[dict[str, Any]]
                     ) -> dict[str, None] | None:
        """Profile the objects ``dicts`` found at ``prefix`` in ``lv``'s rows; their keys, or None when
        the position has been given up as jsonb."""
        pos = lv.positions.get(prefix, {})
        if pos is None:
            return None
        keys = dict.fromkeys(chain.from_iterable(dicts))
        pos.update(keys)
        if len(pos) > (MAX_KEYS if prefix else ROOT_MAX_KEYS):
            self._explode(lv, prefix, len(pos))
            return None
        lv.positions[prefix] = pos
        for k in keys:
            path = (*prefix, k)
            vals = [v for d in dicts if (v := d.get(k)) is not None]
            col = lv.col(path)
            col.present += len(vals)
            types = set(map(type, vals))
            if dict in types:
                col.kinds.add("object")
                if len(path) <= FLATTEN_DEPTH:
                    self.object_batch(lv, path, [v for v in vals if type(v) is dict])
                else:
                    col.kinds.add("deep")
            if list in types:
                self._lists(lv, col, [v for v in vals if type(v) is list])
            for t in types:
                name = _SCALAR_TYPE.get(t)
                if name is None:
                    continue
                col.kinds.add("scalar")
                if t is int:
                    ints = [v for v in vals if type(v) is int]
                    if min(ints) < _INT64[0] or max(ints) > _INT64[1]:
                        name = "numeric"
                col.scalar = widen(col.scalar, name)
            if col.distinct is not None:
                if types <= {str, int, bool}:
                    col.distinct.update(vals)
                    if len(col.distinct) > ONE_OF_MAX:
                        col.distinct = None
                else:
                    col.distinct = None
        return keys

    def _lists(self, lv: _Level, col: _Col, lists: list[list[Any]]) -> None:
        elem_types = set(map(type, chain.from_iterable(lists)))
        if not elem_types:
            col.kinds.add("list_empty")
        elif elem_types == {dict}:
            col.kinds.add("list_obj")
            if lv.depth + 1 > MAX_LEVEL_DEPTH:
                col.kinds.add("deep")
                return
            if not all(_path_key(p) for p in col.path):
                col.kinds.add("unpathed")  # kept whole: a level's path cannot name it
                return
            child = lv.children.get(col.path)
            if child is None:
                path = (lv.path + "." if lv.path else "") + ".".join(col.path) + "[]"
                child = lv.children[col.path] = _Level(path, lv.depth + 1, lv, col.path)
            bounds, end = [], 0
            for items in lists:
                end += len(items)
                bounds.append(end)
            self.level_batch(child, list(chain.from_iterable(lists)), bounds)
        elif dict in elem_types or list in elem_types:
            col.kinds.add("list_mixed")
        else:
            col.kinds.add("list_scalar")

    def _explode(self, lv: _Level, prefix: tuple[str, ...], n: int) -> None:
        lv.positions[prefix] = None
        where = ".".join(prefix) or "(the record)"
        limit = MAX_KEYS if prefix else ROOT_MAX_KEYS
        what = "kept whole as jsonb" if prefix else "no columns: the records stay whole in extra"
        self.warnings.append(f"level {lv.path or '(root)'!r}: {where} has more than {limit} distinct keys "
                             f"({n} seen; keys that are data?): {what}")
        log.warning(self.warnings[-1])
        for path in [p for p in lv.cols if p[: len(prefix)] == prefix and len(p) > len(prefix)]:
            del lv.cols[path]
        for path in [p for p in lv.children if p[: len(prefix)] == prefix]:
            del lv.children[path]
        if prefix:
            lv.col(prefix).kinds.add("exploded")
        else:
            lv.open = True
            lv.unique, lv.unique_in_parent = {}, {}


# ---------------------------------------------------------------------------------------------
# reading files


def _files(sources: list[Path]) -> tuple[Path, list[Path]]:
    """The root (common folder of the sources) and every JSON file under them, sorted."""
    files: list[Path] = []
    tops: list[str] = []
    for src in sources:
        if src.is_dir():
            tops.append(str(src))
            files += [src / rel for rel in json_files_under(src)]
        elif src.is_file():
            tops.append(str(src.parent))
            files.append(src)
        else:
            raise SpecError(f"no such file or folder: {src}", file=src)
    if not files:
        raise SpecError(f"no JSON files ({', '.join(JSON_SUFFIXES)}) in the sources",
                        hint="name the export's folder")
    root = Path(os.path.commonpath([os.path.abspath(t) for t in tops]))
    return root, sorted(dict.fromkeys(files), key=lambda p: str(p))


#: Why a file with no JSON at all is skipped (the words staging refuses it with).
EMPTY_FILE = "file is empty (no JSON records)"


def _is_blank(path: Path) -> bool:
    """Whether the file holds nothing but white space (read only when it is small)."""
    if path.stat().st_size > 4096:
        return False
    data = path.read_bytes()
    if path.name.lower().endswith(".gz"):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError):
            return False
    return not data.strip()


#: A record larger than this is refused unless the caller raises it (as ``etl stage`` does).
MAX_RECORD_BYTES = 64 << 20


class _TooLarge(Exception):
    """A record over the limit: the file is listed as skipped (or stops a strict run)."""

    def __init__(self, offset: int, size: int, limit: int) -> None:
        super().__init__(f"a record of {size:,} bytes or more, over the limit of {limit:,} bytes "
                         "(--max-record-bytes; memory grows with it)")
        self.offset = offset


def _parse(path: Path, limit: int = MAX_RECORD_BYTES) -> Any:
    """A one-object file's record (read whole, so never more than ``limit`` bytes of it)."""
    if path.name.lower().endswith(".gz"):
        with gzip.open(path, "rb") as fh:
            data = fh.read(limit + 1)
    else:
        if path.stat().st_size > limit:
            raise _TooLarge(0, path.stat().st_size, limit)
        data = path.read_bytes()
    if len(data) > limit:
        raise _TooLarge(0, len(data), limit)
    return parse_record(data)


def _ndjson(path: Path, limit: int = MAX_RECORD_BYTES) -> Iterator[list[Any]]:
    batch: list[Any] = []
    offset = 0
    with (gzip.open(path, "rb") if path.name.lower().endswith(".gz") else path.open("rb")) as fh:
        for line in iter(lambda: fh.readline(limit + 2), b""):
            if len(line.rstrip(b"\r\n")) > limit:
                raise _TooLarge(offset, len(line), limit)
            if line.strip():
                try:
                    batch.append(parse_record(line))
                except ValueError as exc:
                    raise _BadJson(offset + getattr(exc, "pos", 0), str(exc)) from exc
            offset += len(line)
            if len(batch) >= NDJSON_BATCH:
                yield batch
                batch = []
    if batch:
        yield batch


def _first_line_is_a_value(path: Path) -> bool:
    """Whether the file's first line alone is a JSON object or array (so the file may be NDJSON)."""
    with (gzip.open(path, "rb") if path.name.lower().endswith(".gz") else path.open("rb")) as fh:
        line = fh.readline(64 << 20).strip()
    try:
        return isinstance(parse_record(line), dict | list) if line else False
    except ValueError:
        return False


def _profile_ndjson(prof: _Profiler, groups: _Groups, path: Path, rel: str, depth: int,
                    limit: int = MAX_RECORD_BYTES) -> None:
    _profile_batches(prof, groups, "ndjson", _ndjson(path, limit), rel, depth)


def _profile_batches(prof: _Profiler, groups: _Groups, kind: str, batches: Iterator[list[Any]],
                     rel: str, depth: int) -> None:
    """A file read a batch of records at a time (NDJSON lines, a large array's elements): its
    source found by the keys of the first batch, then every batch profiled."""
    first = next(batches, [])
    if not first and kind == "ndjson":  # staging refuses it too: said here, before a run finds it
        raise _BadJson(0, EMPTY_FILE)
    keys = set(chain.from_iterable(d for d in first if isinstance(d, dict)))
    src = _group(groups, kind, depth, keys)
    src.files.append(rel)
    for batch in chain([first], batches):
        src.records += len(batch)
        prof.level_batch(src.root, batch, None)


def _opens_array(path: Path) -> bool:
    """Whether the file's first character (after white space and a byte-order mark) is ``[``."""
    with (gzip.open(path, "rb") if path.name.lower().endswith(".gz") else path.open("rb")) as fh:
        head = fh.read(4096)
    return head.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] == b"["


def _array_batches(path: Path) -> Iterator[list[Any]]:
    """The elements of a top-level JSON array, parsed a batch at a time."""
    import duckdb

    con = duckdb.connect(config={"memory_limit": "256MB", "threads": 1})
    try:
        # The object size limit staging reads arrays with (DuckDB's buffer is twice it).
        reader = con.sql("SELECT json FROM read_json_objects(?, format = 'array', "
                         "maximum_object_size = 4194304)", params=[str(path)]).to_arrow_reader(NDJSON_BATCH)
        for batch in reader:
            yield [parse_record(text) for text in batch.column(0).to_pylist()]
    except (duckdb.Error, OSError) as exc:  # (the Arrow reader raises DuckDB's as OSError)
        text = str(exc).splitlines()[0]
        at = re.search(r"at byte (\d+)", text)
        raise _BadJson(int(at.group(1)) if at else 0, text) from exc
    finally:
        con.close()


class _BadJson(Exception):
    def __init__(self, offset: int, message: str) -> None:
        super().__init__(message)
        self.offset = offset


def _signature(doc: Any) -> tuple[str, set[str]]:
    if isinstance(doc, dict):
        return "object", set(doc)
    if isinstance(doc, list):
        return "array", set(chain.from_iterable(d for d in doc if isinstance(d, dict)))
    return "object", set()


def _jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


# ---------------------------------------------------------------------------------------------
# infer


def infer(name: str, sources: list[Path], *, strict: bool = False,
          max_record_bytes: int = MAX_RECORD_BYTES) -> Spec:
    """Read every record of the JSON files in ``sources`` (files or folders) and propose a spec.

    Files are grouped into sources by shape (top-level object, array of objects or NDJSON; for
    objects the top-level keys, Jaccard >= :data:`SIMILAR` with the source's keys; the same folder
    depth under the root). A file that is not valid JSON is listed in ``Spec.skipped`` with the byte
    offset of the error and a warning, or raises :class:`SpecError` when ``strict``; so is a file
    holding a record over ``max_record_bytes`` (a one-object file or an NDJSON line: those are read
    whole; a large array's elements are streamed).
    """
    root, files = _files([Path(s) for s in sources])
    prof = _Profiler()
    groups = _Groups()
    skipped: list[SkippedFile] = []
    pending: dict[int, list[Any]] = {}  # source → [source, records held, their files' bytes]
    for path in files:
        rel = os.path.relpath(path, root).replace(os.sep, "/")
        depth = rel.count("/")
        try:
            if _is_blank(path):
                raise _BadJson(0, EMPTY_FILE)
            if is_line_delimited(path.name):
                _profile_ndjson(prof, groups, path, rel, depth, max_record_bytes)
                continue
            if path.stat().st_size > STREAM_ARRAY_BYTES and _opens_array(path):
                _profile_batches(prof, groups, "array", _array_batches(path), rel, depth)
                continue
            try:
                doc = _parse(path, max_record_bytes)
            except ValueError as first_error:
                # A .json file may hold a record a line, as the stage reads it too.
                if not _first_line_is_a_value(path):
                    raise
                try:
                    _profile_ndjson(prof, groups, path, rel, depth, max_record_bytes)
                except _BadJson:
                    raise first_error from None
                continue
        except (ValueError, _BadJson, _TooLarge) as exc:
            offset = (exc.offset if isinstance(exc, _BadJson | _TooLarge)
                      else getattr(exc, "pos", getattr(exc, "start", 0)))
            msg = (f"{rel}: {exc} (at byte {offset})" if isinstance(exc, _TooLarge)
                   else f"{rel}: not valid JSON at byte {offset}: {exc}")
            if strict:
                raise SpecError(msg, file=path, offset=offset,
                                hint="raise --max-record-bytes" if isinstance(exc, _TooLarge)
                                else "fix or remove the file") from exc
            skipped.append(SkippedFile(rel, int(offset), str(exc)))
            log.warning("skipped %s", msg)
            continue
        kind, keys = _signature(doc)
        src = _group(groups, kind, depth, keys)
        src.files.append(rel)
        rows = doc if isinstance(doc, list) else [doc]
        src.records += len(rows)
        if rows:
            # One-object files are profiled a batch of files at a time (the profile's cost is
            # per key and batch, so a record a call would spend it thousands of times over).
            entry = pending.setdefault(id(src), [src, [], 0])
            entry[1].extend(rows)
            entry[2] += path.stat().st_size
            if len(entry[1]) >= OBJECT_BATCH or entry[2] >= OBJECT_BATCH_BYTES:
                prof.level_batch(src.root, entry[1], None)
                entry[1], entry[2] = [], 0
        del doc, rows
    for src, held, _ in pending.values():
        if held:
            prof.level_batch(src.root, held, None)
    groups = _Groups(_merge_groups(prof, groups))
    spec = Spec(name=name, root=str(root), warnings=prof.warnings, skipped=skipped)
    all_rel = [os.path.relpath(p, root).replace(os.sep, "/") for p in files]
    tables: set[str] = set()
    names: set[str] = set()
    for src in groups:
        spec.sources.append(_source_spec(src, all_rel, names, tables, spec.warnings))
    return spec


def _similar(a: set[str], b: set[str]) -> float:
    """How alike two key sets are, for grouping: their Jaccard index, or for ragged records (a
    source's keys grow with every file, so a file's Jaccard with them falls) how much of the
    smaller set the larger holds, counted at :data:`CONTAINED` or more as :data:`SIMILAR`."""
    small, large = (a, b) if len(a) <= len(b) else (b, a)
    if small and len(small & large) / len(small) >= CONTAINED:
        return 1.0
    return _jaccard(a, b)


class _Groups(list[_Source]):
    """Sources in the order found, with the sources holding each key (a file is scored only
    against those sharing a key with it: 2,000 files of different keys are 2,000 sources, and
    scoring each file against every one of them was quadratic in set operations)."""

    def __init__(self, sources: list[_Source] | None = None) -> None:
        super().__init__(sources or [])
        self.holding: dict[str, list[int]] = {}
        for i, src in enumerate(self):
            self.hold(i, src.keys)

    def hold(self, i: int, keys: set[str]) -> None:
        for k in keys:
            self.holding.setdefault(k, []).append(i)

    def shared(self, keys: set[str], after: int = -1) -> dict[int, int]:
        """How many of ``keys`` each source (by position, past ``after``) holds; none of them
        when it holds none."""
        counts: dict[int, int] = {}
        for k in keys:
            for i in self.holding.get(k, ()):
                if i > after:
                    counts[i] = counts.get(i, 0) + 1
        return counts


def _score(a: int, b: int, inter: int) -> float:
    """:func:`_similar` of two key sets of sizes ``a`` and ``b`` sharing ``inter`` keys."""
    small = min(a, b)
    if small and inter / small >= CONTAINED:
        return 1.0
    return inter / (a + b - inter) if a or b else 1.0


def _group(groups: _Groups, kind: str, depth: int, keys: set[str]) -> _Source:
    """The source a file of ``kind`` at ``depth`` with top-level ``keys`` joins (the most alike, the
    first found of equals), or a new one."""
    best: tuple[float, int] | None = None
    candidates = groups.shared(keys) if keys else {i: 0 for i in range(len(groups))}
    for i in sorted(candidates):
        src = groups[i]
        if src.kind == kind and src.depth == depth:
            score = _score(len(keys), len(src.keys), candidates[i])
            if score >= SIMILAR and (best is None or score > best[0]):
                best = (score, i)
    if best is not None:
        src = groups[best[1]]
        groups.hold(best[1], keys - src.keys)
        src.keys |= keys
        return src
    src = _Source(kind, depth, set(keys))
    groups.append(src)
    groups.hold(len(groups) - 1, src.keys)
    return src


def _merge_groups(prof: _Profiler, groups: list[_Source]) -> list[_Source]:
    """Sources the streaming pass split that turned out alike once each had seen all its files
    (records with keys drawn from many, the first files sharing few of them) merged, profiles
    and all; and a folder whose files split into more than :data:`MAX_SHAPES` sources is one
    source (records whose keys are data, not a few kinds of file). Order: the first file's."""
    def fold(a: _Source, b: _Source) -> None:
        a.files += b.files
        a.records += b.records
        a.keys |= b.keys
        _merge_level(prof, a.root, b.root)
        removed.add(id(b))  # by identity: a list's remove compares whole profiles

    removed: set[int] = set()
    merged = True
    while merged:
        # Each source takes in the first later one alike (again, as its keys grow); passes
        # repeat until none is taken. Sources are scored only against those sharing a key.
        merged = False
        live = _Groups([g for g in groups if id(g) not in removed])
        gone: set[int] = set()
        for i, a in enumerate(live):
            if i in gone:
                continue
            while True:
                counts = live.shared(a.keys, after=i) if a.keys else {
                    j: 0 for j in range(i + 1, len(live))}
                j = next((j for j in sorted(counts) if j not in gone and live[j].kind == a.kind
                          and live[j].depth == a.depth
                          and _score(len(a.keys), len(live[j].keys), counts[j]) >= SIMILAR), None)
                if j is None:
                    break
                live.hold(i, live[j].keys - a.keys)
                fold(a, live[j])
                gone.add(j)
                merged = True
    groups = [g for g in groups if id(g) not in removed]
    by_folder: dict[tuple[str, str], list[_Source]] = {}
    for src in groups:
        for folder in dict.fromkeys(f.rpartition("/")[0] for f in src.files):
            by_folder.setdefault((src.kind, folder), []).append(src)
    for (_, folder), shapes in by_folder.items():
        shapes = [s for s in shapes if id(s) not in removed]
        if len(shapes) > MAX_SHAPES:
            prof.warnings.append(f"the files of {folder or 'the root folder'} have {len(shapes)} "
                                 "different sets of keys: read as one source")
            for other in shapes[1:]:
                fold(shapes[0], other)
    return [g for g in groups if id(g) not in removed]


def _merge_level(prof: _Profiler, a: _Level, b: _Level) -> None:
    """Fold the profile ``b`` (of other rows at the same place) into ``a``."""
    rows_a = a.rows
    a.rows += b.rows
    a.open = a.open or b.open
    for prefix, pb in b.positions.items():  # first: a place given up as jsonb takes no columns
        pa = a.positions.get(prefix, {})
        if pa is None:
            continue
        if pb is None:
            prof._explode(a, prefix, len(pa))
            continue
        pa.update(pb)
        a.positions[prefix] = pa
        if len(pa) > (MAX_KEYS if prefix else ROOT_MAX_KEYS):
            prof._explode(a, prefix, len(pa))
    gone = [p for p, keys in a.positions.items() if keys is None]
    for path, cb in b.cols.items():
        if any(path[: len(g)] == g and len(path) > len(g) for g in gone):
            continue
        ca = a.col(path)
        ca.kinds |= cb.kinds
        ca.present += cb.present
        ca.scalar = widen(ca.scalar, cb.scalar)
        if ca.distinct is None or cb.distinct is None:
            ca.distinct = None
        else:
            ca.distinct |= cb.distinct
            if len(ca.distinct) > ONE_OF_MAX:
                ca.distinct = None
    # A key candidate stays one only if it was one on both sides, its values apart.
    if rows_a == 0:
        a.unique, a.unique_in_parent = b.unique, b.unique_in_parent
    elif b.rows:
        ua, ub = a.unique or {}, b.unique or {}
        a.unique = {k: ua[k] | ub[k] for k in ua.keys() & ub.keys() if not ua[k] & ub[k]}
        a.unique_in_parent = {k: None for k in (a.unique_in_parent or {}) if k in (b.unique_in_parent or {})}
    for path, child in b.children.items():
        if any(path[: len(g)] == g for g in gone):
            continue
        mine = a.children.get(path)
        if mine is None:
            child.parent = a
            a.children[path] = child
        else:
            _merge_level(prof, mine, child)


def _patterns(files: list[str], all_files: list[str]) -> list[str]:
    """Globs matching ``files`` and no other of ``all_files``: ``dir/*.json`` where the folder holds
    only the source's files, ``dir/prefix*suffix`` where that is enough, else the files by name.
    Names are escaped (``export [v2]/a.json`` is ``export [[]v2]/a.json``): a folder's ``[``, ``*``
    or ``?`` is no wildcard."""
    esc = glob.escape
    if len(files) == 1:
        return [esc(files[0])]
    by_dir: dict[str, list[str]] = {}
    for f in files:
        by_dir.setdefault(f.rpartition("/")[0], []).append(f)
    mine = set(files)
    out: list[str] = []
    for folder, members in by_dir.items():
        lead = esc(folder) + "/" if folder else ""
        others = [f for f in all_files if f.rpartition("/")[0] == folder and f not in mine]
        names = [m.rpartition("/")[2] for m in members]
        prefix = os.path.commonprefix(names)  # noqa: RUF071 (character-wise on purpose)
        suffix = os.path.commonprefix([n[::-1] for n in names])[::-1]  # noqa: RUF071
        pattern = lead + (esc(prefix) + "*" + esc(suffix)
                          if len(prefix) + len(suffix) < min(map(len, names)) else "*")
        if not others:
            exts = sorted({os.path.splitext(n)[1] for n in names})
            out += [f"{lead}*{esc(ext)}" for ext in exts] if len(exts) > 1 else [lead + "*" + esc(exts[0])]
        elif not any(fnmatch.fnmatchcase(o, pattern) for o in others):
            out.append(pattern)
        else:
            out += [esc(m) for m in members]
    return out


def _source_name(src: _Source, names: set[str]) -> str:
    if len(src.files) == 1:
        base = snake(src.files[0].rpartition("/")[2].rsplit(".", 1)[0])
    else:
        folders = {f.rpartition("/")[0] for f in src.files}
        common = os.path.commonpath(list(folders)) if all(folders) else ""
        base = snake(common.rpartition("/")[2]) if common else "records"
    return pg_name([base or "records"], names)


def _source_spec(src: _Source, all_files: list[str], names: set[str], tables: set[str],
                 warnings: list[str]) -> SourceSpec:
    name = _source_name(src, names)
    levels: list[LevelSpec] = []
    _level_specs(src.root, name, levels, tables, warnings)
    return SourceSpec(name=name, kind=src.kind, patterns=_patterns(src.files, all_files),
                      files=len(src.files), levels=levels)


def _level_specs(lv: _Level, name: str, out: list[LevelSpec], tables: set[str], warnings: list[str]) -> None:
    """Finish ``lv`` (decide jsonb columns, drop child levels they absorb) and its children into
    ``out``, parents first."""
    table = pg_name([name] if lv.parent is None else list(lv.at), tables)
    cols = _finish(lv)
    if len(cols) > MAX_COLUMNS:
        # The keys most records have get columns; the rest stay in extra, which is expected.
        keep = {id(c) for c, _, _ in sorted(cols, key=lambda d: -d[0].present)[:MAX_COLUMNS]}
        warning = (f"level {lv.path or '(root)'!r}: {len(cols)} columns; the {MAX_COLUMNS} keys most "
                   "records have are typed, the others stay in extra (the level is open)")
        log.warning(warning)
        warnings.append(warning)
        cols = [d for d in cols if id(d[0]) in keep]
        lv.open = True
    taken: set[str] = set()
    columns: list[ColumnSpec] = []
    by_path: dict[tuple[str, ...], str] = {}
    for col, typ, note in cols:
        cname = pg_name(col.path, taken)
        by_path[col.path] = cname
        columns.append(ColumnSpec(cname, list(col.path), typ, lv.rows - col.present, note))
    out.append(LevelSpec(path=lv.path, table=table, rows=lv.rows, key=_key(lv, by_path, cols),
                         parent=lv.parent.path if lv.parent is not None else None, columns=columns,
                         rules=_rules(lv, cols, by_path), open=lv.open))
    for child in lv.children.values():
        _level_specs(child, name, out, tables, warnings)


def _finish(lv: _Level) -> list[tuple[_Col, str, str]]:
    """The level's columns with their type and note; drops what a jsonb column absorbs."""
    decided: list[tuple[_Col, str, str]] = []
    absorbed: list[tuple[str, ...]] = []
    for path in list(lv.cols):
        col = lv.cols.get(path)
        if col is None or any(path[: len(a)] == a for a in absorbed):
            continue
        kinds = col.kinds
        note = ""
        if "exploded" in kinds:
            note = f"more than {MAX_KEYS} distinct keys: kept whole"
        elif "object" in kinds and kinds & {"scalar", "list_obj", "list_scalar", "list_mixed", "list_empty"}:
            note = "an object in some records, not in others"
        elif "deep" in kinds:
            note = "nested deeper than the columns go"
        elif "unpathed" in kinds:
            note = "a list of objects at a key a level's path cannot name (. [ ] \" \\ or *)"
        elif "list_obj" in kinds and kinds - {"list_obj", "list_empty"}:
            note = "a list of objects in some records, not in others"
        elif kinds == {"object"}:
            if any(p[: len(path)] == path and len(p) > len(path) for p in lv.cols):
                continue  # flattened into its keys' columns
            note = "always an empty object"
        elif kinds <= {"list_obj", "list_empty"} and "list_obj" in kinds:
            continue  # a child level
        elif "list_mixed" in kinds:
            note = "a list of objects and other values"
        elif "list_scalar" in kinds or "list_empty" in kinds:
            note = "a list of values" if kinds <= {"list_scalar", "list_empty"} else "a list in some records"
            if kinds == {"list_empty"}:
                note = "always an empty list"
        elif not kinds:
            decided.append((col, "text", "always null"))
            continue
        else:
            decided.append((col, col.scalar or "text", ""))
            continue
        decided.append((col, "jsonb", note))
        if path:
            absorbed.append(path)
            for p in [p for p in lv.cols if p[: len(path)] == path and len(p) > len(path)]:
                del lv.cols[p]
            for p in [p for p in lv.children if p[: len(path)] == path]:
                del lv.children[p]
    return decided


_KEY_NAMES = ("id", "uid", "uuid", "key", "code", "full_name", "name")


def _key(lv: _Level, by_path: dict[tuple[str, ...], str], cols: list[tuple[_Col, str, str]]) -> KeySpec:
    def rank(k: str) -> tuple[int, int]:
        s = snake(k)
        for i, n in enumerate(_KEY_NAMES):
            if s == n or s.endswith("_" + n):
                return (i, order.index(k))
        return (len(_KEY_NAMES), order.index(k))

    order = [c.path[0] for c, _, _ in cols if len(c.path) == 1]
    if lv.rows >= 2 and lv.unique:
        best = min((k for k in lv.unique if (k,) in by_path), key=rank, default=None)
        if best is not None:
            return KeySpec(columns=[by_path[(best,)]])
    if lv.parent is not None and lv.unique_in_parent:
        best = min((k for k in lv.unique_in_parent if (k,) in by_path), key=rank, default=None)
        if best is not None:
            return KeySpec(columns=[by_path[(best,)]], within_parent=True)
    return KeySpec(surrogate=True)


def _rules(lv: _Level, cols: list[tuple[_Col, str, str]], by_path: dict[tuple[str, ...], str]
           ) -> list[RuleSpec]:
    rules: list[RuleSpec] = []
    for col, typ, _ in cols:
        name = by_path[col.path]
        if lv.rows and col.present == lv.rows:
            rules.append(RuleSpec("required", name, inferred=True))
        want = {"text": str, "bigint": int}.get(typ)
        if (col.distinct is not None and want is not None and col.present >= ONE_OF_MIN_ROWS
                and 0 < len(col.distinct) <= ONE_OF_MAX and col.kinds == {"scalar"}
                and all(type(v) is want for v in col.distinct)):
            rules.append(RuleSpec("one_of", name, values=sorted(col.distinct),
                                  inferred=True))
    return rules


__all__ = ["SpecError", "infer", "pg_name", "snake"]
