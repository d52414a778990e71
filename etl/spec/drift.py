"""Drift: what a staged export holds that its spec does not declare.

A spec dataset's staged rows keep every key no typed column holds in ``_extra`` (the record's JSON
less its typed keys), and name every value that did not fit its column's type in ``_type_errors``
(the value itself stays in ``_extra``). So the staged chunks alone tell, per level:

* **new keys**: keys of ``_extra`` the spec's level declares neither as a column (its first JSON
  key) nor as a nested level;
* **type drift**: declared columns some value of which is of another JSON type.

:func:`detect` reads them with DuckDB from the chunks' ``_extra`` and ``_type_errors`` columns (the
key set first, the details only for the keys that drifted), giving each finding the first file
and record it was seen in, how many rows hold it and the JSON types seen. :func:`evolve` is the
spec widened to hold them: a column per new key (typed from what was seen), a declared column
widened to the types seen (``bigint`` → ``double precision`` → ``text``; objects and arrays →
``jsonb``).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import duckdb

from etl.spec.infer import pg_name
from etl.spec.model import ColumnSpec, LevelSpec, Spec, widen

log = logging.getLogger(__name__)

#: DuckDB's ``json_type`` → the spec type that holds it (None: null, no type).
_SPEC_TYPE = {"BIGINT": "bigint", "UBIGINT": "bigint", "DOUBLE": "double precision", "HUGEINT": "numeric",
              "VARCHAR": "text", "BOOLEAN": "boolean", "OBJECT": "jsonb", "ARRAY": "jsonb", "NULL": None}
#: At most this many findings are kept per level (a flood of new keys is one story).
MAX_FINDINGS = 200


@dataclass(frozen=True, slots=True)
class Drift:
    """One thing a staged export holds that its spec does not declare."""

    source: str
    level: str
    #: ``new_key`` or ``type``.
    kind: str
    #: The record's JSON key (for a type drift of a flattened column: its key path, dotted).
    key: str
    #: The spec's column type for the key (None for a new key).
    declared: str | None
    #: JSON types seen (DuckDB's names: BIGINT, DOUBLE, VARCHAR, BOOLEAN, OBJECT, ARRAY).
    seen: tuple[str, ...]
    rows: int
    file: str
    record: int
    #: ``key`` as its path of JSON keys (one key, or more inside a flattened object).
    path: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["seen"] = list(self.seen)
        out["path"] = list(self.path)
        return out

    def describe(self) -> str:
        where = f"{self.file} record {self.record}"
        if self.kind == "new_key":
            return (f"{self.level}: new key {self.key!r} ({'/'.join(self.seen) or 'null'}) in "
                    f"{self.rows:,} rows, first at {where}")
        return (f"{self.level}: key {self.key!r} declared {self.declared}, seen "
                f"{'/'.join(self.seen)} in {self.rows:,} rows, first at {where}")


def declared_keys(spec: Spec) -> dict[str, set[str]]:
    """Per level (table), the record keys its spec declares: its columns' first JSON keys and the
    keys its nested levels sit under."""
    out: dict[str, set[str]] = {}
    for src in spec.sources:
        by_path = {lv.path: lv.table for lv in src.levels}
        for lv in src.levels:
            out.setdefault(lv.table, set()).update(c.json[0] for c in lv.columns if c.json)
        for lv in src.levels:
            if lv.path == "":
                continue
            parent = lv.parent or ""
            rel = lv.path[len(parent) + 1:] if parent and lv.path.startswith(parent + ".") else lv.path
            first = rel.removesuffix("[]").split(".")[0]
            holder = by_path.get(parent)
            if holder is not None:
                out[holder].add(first)
    return out


def _flattened(spec: Spec, level: str) -> dict[tuple[str, ...], set[str]]:
    """The nested objects the level's columns flatten (key path → the keys the spec declares in
    it)."""
    out: dict[tuple[str, ...], set[str]] = {}
    for src in spec.sources:
        for lv in src.levels:
            if lv.table != level:
                continue
            for col in lv.columns:
                for depth in range(1, len(col.json)):
                    out.setdefault(tuple(col.json[:depth]), set()).add(col.json[depth])
    return out


def _pointer(parts: Sequence[str]) -> str:
    """The key path ``parts`` as a JSON pointer (``/a~1b`` for the key ``a/b``), which quotes any
    key DuckDB's paths cannot."""
    return "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in parts)


def detect(spec: Spec, levels: Mapping[str, Sequence[Path]], fields: Mapping[str, Mapping[str, str]],
           *, memory_limit: str = "256MB") -> list[Drift]:
    """What the staged chunks ``levels`` (level → chunk files) hold that ``spec`` does not declare.
    ``fields``: per level, staged field name → its JSON key (to name a type error's key)."""
    declared = declared_keys(spec)
    types = {lv.table: {".".join(c.json): c.type for c in lv.columns}
             for src in spec.sources for lv in src.levels}
    source_of = {lv.table: src.name for src in spec.sources for lv in src.levels}
    open_levels = {lv.table for src in spec.sources for lv in src.levels if lv.open}
    found: list[Drift] = []
    con = duckdb.connect(config={"memory_limit": memory_limit, "threads": 2})
    try:
        for level, files in levels.items():
            if level not in declared or not files:
                continue
            scan = f"read_parquet({[str(f) for f in files]!r})"
            cols = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {scan}").fetchall()}
            if "_extra" not in cols:
                continue
            keys = {r[0] for r in con.execute(
                f"SELECT DISTINCT unnest(json_keys(_extra)) FROM {scan} WHERE _extra IS NOT NULL "
                "AND json_type(_extra) = 'OBJECT'").fetchall()}
            new = [] if level in open_levels else [[k] for k in sorted(keys - declared[level])]
            # Inside the objects the spec flattens into columns (kept whole in _extra too).
            for prefix, known in _flattened(spec, level).items():
                pointer = _lit(_pointer(prefix))
                inner = {r[0] for r in con.execute(
                    f"SELECT DISTINCT unnest(json_keys(_extra, {pointer})) FROM {scan} WHERE "
                    f"json_type(_extra, {pointer}) = 'OBJECT'").fetchall()}
                new += [[*prefix, k] for k in sorted(inner - known)]
            for parts in new[:MAX_FINDINGS]:
                found.append(_finding(con, scan, source_of[level], level, "new_key", parts, None,
                                      "TRUE"))
            if "_type_errors" not in cols:
                continue
            bad = [r[0] for r in con.execute(
                f"SELECT DISTINCT unnest(_type_errors) FROM {scan}").fetchall()]
            for name in sorted(bad)[:MAX_FINDINGS]:
                key = fields.get(level, {}).get(name, name)
                found.append(_finding(con, scan, source_of[level], level, "type", key.split("."),
                                      types.get(level, {}).get(key),
                                      f"list_contains(_type_errors, {_lit(name)})"))
    finally:
        con.close()
    return found


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _finding(con: duckdb.DuckDBPyConnection, scan: str, source: str, level: str, kind: str,
             parts: Sequence[str], declared: str | None, where: str) -> Drift:
    value = f"json_extract(_extra, {_lit(_pointer(parts))})"
    rows, first, types = con.execute(
        f"SELECT count(*), min((_file, _record)), list(DISTINCT json_type({value})) "
        f"FROM {scan} WHERE {where} AND {value} IS NOT NULL").fetchone() or (0, None, [])
    file, record = (first["_file"], first["_record"]) if isinstance(first, dict) else (first or ("", 0))
    # DuckDB names a non-negative integer UBIGINT: for a spec, an integer is an integer.
    seen = tuple(sorted({"BIGINT" if t == "UBIGINT" else t for t in (types or []) if t and t != "NULL"}))
    return Drift(source, level, kind, ".".join(parts), declared, seen, int(rows or 0), str(file or ""),
                 int(record or 0), tuple(parts))


def evolve(spec: Spec, drifts: Sequence[Drift]) -> Spec:
    """``spec`` widened to declare ``drifts``: a new column per new key (its type the widest of the
    types seen, ``jsonb`` for objects and arrays), a drifted column widened to hold what was seen.
    The columns added say so in their ``note``."""
    out = copy.deepcopy(spec)
    levels: dict[str, LevelSpec] = {lv.table: lv for src in out.sources for lv in src.levels}
    for d in drifts:
        lv = levels.get(d.level)
        if lv is None:
            continue
        seen: str | None = None
        for t in d.seen:
            seen = widen(seen, _SPEC_TYPE.get(t, "jsonb"))
        if d.kind == "new_key":
            taken = {c.name for c in lv.columns}
            path = list(d.path or (d.key,))
            lv.columns.append(ColumnSpec(pg_name(path, taken), path, seen or "text",
                                         note=f"added by drift (evolve): first seen in {d.file} "
                                              f"record {d.record}"))
        else:
            for col in lv.columns:
                if ".".join(col.json) == d.key:
                    wider = widen(col.type, seen)
                    if wider is not None and wider != col.type:
                        col.note = (col.note + "; " if col.note else "") + \
                            f"widened from {col.type} by drift (evolve)"
                        col.type = wider
    return out
