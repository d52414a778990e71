"""The ``_extra`` column of staged rows: every key of a record that its typed columns do not hold.

Lossless staging: a level with a home table (:attr:`etl.dataset.Level.table`) gets, beside its
typed fields, ``_extra``: the record as compact JSON text less

* the keys whose typed column holds the value exactly (:func:`exact`): a JSON string in a text
  column, an integer in an integer column of its range, a number in a double column, true/false
  in a boolean, an array of such values in an array column;
* the lists its child levels' rows come from, where the list is non-empty (those records are rows
  of their own). A missing, null or empty list stays as it was.

Everything else stays: keys no column types, a JSON null (a NULL column cannot tell it from a
missing key), a value of another type than declared (``"12"`` in an integer field), keys below
the top level of a record (nested objects are kept whole). A nested record that is not an object
is kept as it is (``_extra`` is then that JSON value). So a record is its typed columns plus its
``_extra``, and :mod:`etl.load.reconcile` rebuilds it.

Computed in Python with orjson, one parse per record, on the staging worker threads: DuckDB's
``json_merge_patch`` would parse every record again per level (a powerset's powers three times)
and was measured at ~100 MB/s. The rows come out in the order the level queries give them
(record, then list position, parents first); :func:`attach` checks that order row by row.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from etl.dataset import ELEMENT, STAGED_EXTRA, Level, Table, strip_json_nul_text, typed_in_table
from etl.errors import EtlError
from etl.jsontext import dump_json, get_path, parse_record

try:
    from etl.stage import _extra as _native  # type: ignore[attr-defined]
except ImportError:  # not built: the Python walker does the same, slower
    _native = None

log = logging.getLogger(__name__)

_INT32 = (-(1 << 31), (1 << 31) - 1)
_INT64 = (-(1 << 63), (1 << 63) - 1)
_EXACT_DOUBLE = 1 << 53


def _is_int(v: Any, bounds: tuple[int, int]) -> bool:
    return type(v) is int and bounds[0] <= v <= bounds[1]


def _checker(type_: str) -> Callable[[Any], bool]:
    """Whether a JSON value (as orjson gives it) is held exactly by a column of ``type_``."""
    if type_.endswith("[]"):
        inner = _checker(type_[:-2])
        return lambda v: type(v) is list and all(x is None or inner(x) for x in v)
    match type_:
        case "VARCHAR":
            return lambda v: type(v) is str
        case "INTEGER":
            return lambda v: _is_int(v, _INT32)
        case "BIGINT":
            return lambda v: _is_int(v, _INT64)
        case "DOUBLE":
            return lambda v: type(v) is float or (type(v) is int and -_EXACT_DOUBLE <= v <= _EXACT_DOUBLE)
        case "BOOLEAN":
            return lambda v: type(v) is bool
        case "JSON":
            return lambda v: v is not None
    raise ValueError(f"unsupported staged type {type_}")


@dataclass(frozen=True, slots=True)
class _LevelPlan:
    name: str
    path: str | None
    parent: str | None
    homed: bool  # has a home table: rows get ``_extra``
    whole: bool  # an ELEMENT column of the home table holds the record: ``_extra`` is ``{}``
    typed: tuple[tuple[str, Callable[[Any], bool]], ...]  # other than text
    strings: tuple[str, ...]  # text fields, the most common: checked inline
    #: Child lists that leave this level's records (top-level keys, and dotted paths).
    children: tuple[str, ...]


class ExtraPlan:
    """How one source's records give each level's ``_extra`` values (see the module's doc)."""

    def __init__(self, levels: Sequence[Level], tables: Mapping[str, Table]) -> None:
        roots = [lvl.name for lvl in levels if lvl.parent is None and lvl.path is None]
        children: dict[str, list[str]] = {lvl.name: [] for lvl in levels}
        for lvl in levels:
            if lvl.path is None or lvl.table is None:
                continue
            for holder in ([lvl.parent] if lvl.parent is not None else roots):
                children[holder].append(lvl.path)
        plans = []
        for lvl in levels:
            table = tables.get(lvl.table) if lvl.table is not None else None
            whole = table is not None and any(
                f.key == ELEMENT and any(c.name == f.name for c in table.columns) for f in lvl.fields)
            plans.append(_LevelPlan(
                name=lvl.name, path=lvl.path, parent=lvl.parent, homed=table is not None,
                whole=whole,
                typed=tuple((f.key, _checker(f.type)) for f in lvl.fields
                            if typed_in_table(f, table, lvl, tables) and f.type != "VARCHAR"),
                strings=tuple(f.key for f in lvl.fields
                              if typed_in_table(f, table, lvl, tables) and f.type == "VARCHAR"),
                children=tuple(children[lvl.name])))
        self.levels = plans
        self.homed = any(p.homed for p in plans)
        # The plan in the form the C walker (etl/_extra.c) takes: the record's own level first
        # (a level that stages nothing and keeps nothing when the source stages no records
        # themselves), each level with its typed keys and its child levels.
        root_levels = [p for p in plans if p.parent is None and p.path is None]
        self.native: list[Any] | None = None
        self.native_names: list[str | None] = []
        if len(root_levels) <= 1:
            order: list[_LevelPlan | None] = [*root_levels] or [None]
            order += [p for p in plans if p not in root_levels]
            index = {p.name: i for i, p in enumerate(order) if p is not None}
            by_name = {lvl.name: lvl for lvl in levels}
            native: list[Any] = []
            for p in order:
                if p is None:
                    kids = [q for q in plans if q.parent is None and q.path is not None]
                    native.append((False, False, [], [(index[k.name], _kpath(k.path), k.homed)
                                                      for k in kids]))
                    continue
                kids = [q for q in plans if q.path is not None and (
                    q.parent == p.name or (q.parent is None and p in root_levels))]
                lvl = by_name[p.name]
                table = tables.get(lvl.table) if lvl.table is not None else None
                native.append((p.homed, p.whole,
                               [(f.key.encode(), *_type_code(f.type)) for f in lvl.fields
                                if typed_in_table(f, table, lvl, tables)],
                               [(index[k.name], _kpath(k.path), k.homed) for k in kids]))
            self.native = native
            self.native_names = [p.name if p is not None else None for p in order]

    def _remainder(self, plan: _LevelPlan, element: Any) -> str:
        if not isinstance(element, dict):
            return dump_json(element)
        if plan.whole:
            return "{}"
        out = element.copy()
        for key in plan.strings:
            if type(out.get(key)) is str:
                del out[key]
        for key, ok in plan.typed:
            if key in out and ok(out[key]):
                del out[key]
        for path in plan.children:
            if "." not in path:
                value = out.get(path)
                if type(value) is list and value:
                    del out[path]
                continue
            *parents, last = path.split(".")
            holder: Any = out
            chain = []
            for part in parents:
                if not isinstance(holder, dict) or not isinstance(holder.get(part), dict):
                    holder = None
                    break
                copy = dict(holder[part])  # never change the parsed record itself
                holder[part] = copy
                chain.append(copy)
                holder = copy
            if holder is not None:
                value = holder.get(last)
                if type(value) is list and value:
                    del holder[last]
        return dump_json(out)

    def extras(self, docs: Sequence[Any]) -> dict[str, tuple[list[int], list[int | None], list[str]]]:
        """Per homed level: the batch row (record) of each row, its list position (None for a
        record itself) and its ``_extra``, in the level queries' order."""
        out: dict[str, tuple[list[int], list[int | None], list[str]]] = {}
        elements: dict[str, list[tuple[int, int | None, Any]]] = {}
        for plan in self.levels:
            rows: list[tuple[int, int | None, Any]] = []
            if plan.parent is None and plan.path is None:
                rows = [(i, None, doc) for i, doc in enumerate(docs)]
            else:
                holders = ([(i, None, doc) for i, doc in enumerate(docs)] if plan.parent is None
                           else elements[plan.parent])
                assert plan.path is not None
                for i, _, holder in holders:
                    items = get_path(holder, plan.path)
                    if type(items) is list:
                        rows.extend((i, j, item) for j, item in enumerate(items))
            elements[plan.name] = rows
            if plan.homed:
                out[plan.name] = ([r[0] for r in rows], [r[1] for r in rows],
                                  [self._remainder(plan, r[2]) for r in rows])
        return out


def _kpath(path: str | None) -> tuple[bytes, ...]:
    return tuple(part.encode() for part in path.split(".")) if path else ()


_CODES = {"VARCHAR": 1, "INTEGER": 2, "BIGINT": 3, "DOUBLE": 4, "BOOLEAN": 5, "JSON": 6}


def _type_code(type_: str) -> tuple[int, int, int]:
    """(type, element type, depth) of a staged type, as etl/_extra.c numbers them."""
    depth = 0
    while type_.endswith("[]"):
        type_, depth = type_[:-2], depth + 1
    return (7, _CODES[type_], depth) if depth else (_CODES[type_], 0, 0)


def extra_nul_rows(tables: Mapping[str, pa.Table]) -> dict[str, int]:
    """Per level of ``tables``, the rows whose ``_extra`` text ``strip_nul`` changes (a
    ``\\u0000`` escape in one of its strings or keys); levels without any are left out."""
    out: dict[str, int] = {}
    for name, table in tables.items():
        if STAGED_EXTRA not in table.column_names:
            continue
        column = table.column(STAGED_EXTRA)
        hit = pc.match_substring(column, "\\u0000")
        if not pc.any(hit).as_py():
            continue
        texts = pc.filter(column, hit).to_pylist()
        n = sum(1 for t in texts if t is not None and strip_json_nul_text(t) != t)
        if n:
            out[name] = n
    return out


def attach(tables: dict[str, pa.Table], records: pa.Table, plan: ExtraPlan) -> dict[str, pa.Table]:
    """``tables`` (each level's rows from the level queries for the batch ``records``) with the
    ``_extra`` column appended to every homed level.

    The Python walk gives the rows in record order and list order; the queries give them in the
    same order (one thread, insertion order kept). Each row's file, record and list position are
    compared with the query's; a difference is an error, never a silent mismatch."""
    if not plan.homed:
        return tables
    extras = _native_extras(records, plan)
    if extras is None:
        docs = [parse_record(t) for t in records.column("json").to_pylist()]
        extras = {name: (pa.array(rows, pa.int32()), pa.array(pos, pa.int32()), pa.array(values, pa.string()))
                  for name, (rows, pos, values) in plan.extras(docs).items()}
    files = records.column("_file").combine_chunks()
    recs = records.column("_record").combine_chunks()
    out = dict(tables)
    for name, (rows, positions, values) in extras.items():
        table = tables[name]
        if table.num_rows != len(rows):
            raise EtlError(f"staging level {name}: {table.num_rows} rows from the query, "
                           f"{len(rows)} from the records' JSON", hint="a bug: report it with the input")
        want_file = files.take(rows)
        want_rec = recs.take(rows)
        want_pos = positions.cast(pa.int64())
        same = (table.column("_file").combine_chunks().equals(want_file)
                and table.column("_record").combine_chunks().cast(pa.int64())
                .equals(want_rec.cast(pa.int64()))
                and pc.all(pc.equal(pc.fill_null(table.column("_index").cast(pa.int64()), -1),
                                    pc.fill_null(want_pos, -1))).as_py() is not False)
        if not same:
            raise EtlError(f"staging level {name}: the level query gave its rows in another order "
                           "than the records' JSON", hint="a bug: report it with the input")
        out[name] = table.append_column(STAGED_EXTRA, values)
    return out


def _native_extras(records: pa.Table, plan: ExtraPlan
                   ) -> dict[str, tuple[pa.Array, pa.Array, pa.Array]] | None:
    """:meth:`ExtraPlan.extras` by the C walker (etl/_extra.c), as Arrow arrays (batch row,
    list position with -1 for none, ``_extra``); None when it is not built or cannot walk a
    record (the Python version then decides, and says why when it fails too)."""
    if _native is None or plan.native is None:
        return None
    arr = records.column("json").combine_chunks().cast(pa.large_string())
    bufs = arr.buffers()
    offsets = np.frombuffer(bufs[1], dtype=np.int64)[arr.offset: arr.offset + len(arr) + 1]
    try:
        found = _native.extras(bufs[2] if bufs[2] is not None else b"", offsets, plan.native)
    except ValueError:
        log.warning("the C walker could not walk a batch; using the Python one", exc_info=True)
        return None
    homed = {p.name for p in plan.levels if p.homed}
    out = {}
    for name, (data, offs, rows, pos) in zip(plan.native_names, found, strict=True):
        if name not in homed:
            continue
        n = memoryview(rows).nbytes // 4  # buffers the walker hands over (no copy)
        text = pa.Array.from_buffers(pa.large_string(), n, [None, pa.py_buffer(offs), pa.py_buffer(data)])
        position = pa.Array.from_buffers(pa.int32(), n, [None, pa.py_buffer(pos)])  # -1: none
        out[name] = (pa.Array.from_buffers(pa.int32(), n, [None, pa.py_buffer(rows)]), position,
                       text.cast(pa.string()))
    return out
