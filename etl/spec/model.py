"""The declarative dataset spec ``etl init`` writes and the user edits: plain dataclasses, written as
readable TOML by hand (:meth:`Spec.to_toml`) and read back with :mod:`tomllib` (:meth:`Spec.from_toml`).

The comments in the written TOML (``# inferred: 3,568 records, never null``) are derived from the
fields, so a spec read back compares equal to the one written.
"""

from __future__ import annotations

import json
import logging
import tomllib
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

#: The column types a spec names, narrowest first for the scalar ones (see :func:`widen`).
SCALAR_TYPES = ("boolean", "bigint", "double precision", "numeric", "text")
TYPES = (*SCALAR_TYPES, "jsonb")


def widen(a: str | None, b: str | None) -> str | None:
    """The narrower scalar type both ``a`` and ``b`` fit in (None for no value seen yet)."""
    if a is None:
        return b
    if b is None:
        return a
    if a == "jsonb" or b == "jsonb":
        return "jsonb"
    return SCALAR_TYPES[max(SCALAR_TYPES.index(a), SCALAR_TYPES.index(b))]


@dataclass
class RuleSpec:
    """A validation rule on one column: ``required`` or ``one_of`` (with ``values``)."""

    kind: str
    column: str
    values: list[Any] = field(default_factory=list)
    inferred: bool = False


@dataclass
class ColumnSpec:
    """One column of a level's table.

    ``json`` is the path of original JSON keys the column is read from (one key, or more for a
    flattened nested object); ``nulls`` how many of the level's rows lack it or hold null; ``note``
    why a column is ``jsonb`` when it is not obvious.
    """

    name: str
    json: list[str]
    type: str
    nulls: int = 0
    note: str = ""


@dataclass
class KeySpec:
    """A level's key: natural ``columns`` (within the parent's key when ``within_parent``), or a
    ``surrogate`` one (file, record ordinal and list index path)."""

    columns: list[str] = field(default_factory=list)
    within_parent: bool = False
    surrogate: bool = False


@dataclass
class LevelSpec:
    """One table: the source's records (``path`` ``""``) or a nested list of objects in them
    (``Powers[]``, ``Powers[].Effects[]``), keyed to its ``parent`` level's path."""

    path: str
    table: str
    rows: int
    key: KeySpec
    parent: str | None = None
    columns: list[ColumnSpec] = field(default_factory=list)
    rules: list[RuleSpec] = field(default_factory=list)


@dataclass
class SourceSpec:
    """Files of one shape: ``kind`` ``object`` (one record a file), ``array`` (records are the
    elements of a top-level array) or ``ndjson`` (one record a line); ``patterns`` are globs relative
    to the spec's root."""

    name: str
    kind: str
    patterns: list[str]
    files: int
    levels: list[LevelSpec] = field(default_factory=list)


@dataclass
class SkippedFile:
    """A file infer could not read: its path, the byte offset of the error, and the message."""

    file: str
    offset: int
    error: str


@dataclass
class Spec:
    """A dataset spec: its name, the root its sources' patterns are relative to, and the sources."""

    name: str
    root: str
    sources: list[SourceSpec] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)

    def source(self, name: str) -> SourceSpec:
        """The source called ``name`` (KeyError if there is none)."""
        for src in self.sources:
            if src.name == name:
                return src
        raise KeyError(name)

    def to_toml(self) -> str:
        """The spec as readable TOML, with comments saying what was inferred."""
        out: list[str] = [
            f"# Dataset spec for {self.name!r}, inferred by etl init: edit it, then load with it.",
            "# Rules marked inferred = true were proposed from the data; keep, change or delete them.",
            f"name = {_s(self.name)}",
            f"root = {_s(self.root)}",
        ]
        out.append("warnings = [" + "".join(f"\n  {_s(w)}," for w in self.warnings) +
                   ("\n]" if self.warnings else "]"))
        for sk in self.skipped:
            out += ["", "[[skipped]]", f"file = {_s(sk.file)}", f"offset = {sk.offset}",
                    f"error = {_s(sk.error)}"]
        for src in self.sources:
            out += ["", "", "[[sources]]", f"name = {_s(src.name)}",
                    f"kind = {_s(src.kind)}  # object: a record a file; array: records in a top-level "
                    "array; ndjson: a record a line",
                    f"patterns = {_arr(src.patterns)}", f"files = {src.files}"]
            for lv in src.levels:
                out += ["", "[[sources.levels]]",
                        f"# {lv.rows:,} rows" + (" (the records)" if lv.path == "" else f" from {lv.path}"),
                        f"path = {_s(lv.path)}", f"table = {_s(lv.table)}", f"rows = {lv.rows}"]
                if lv.parent is not None:
                    out.append(f"parent = {_s(lv.parent)}")
                out += _key(lv.key)
                for col in lv.columns:
                    out += ["", "[[sources.levels.columns]]", _col_comment(col, lv.rows),
                            f"name = {_s(col.name)}", f"json = {_arr(col.json)}", f"type = {_s(col.type)}",
                            f"nulls = {col.nulls}"]
                    if col.note:
                        out.append(f"note = {_s(col.note)}")
                for rule in lv.rules:
                    out += ["", "[[sources.levels.rules]]", f"kind = {_s(rule.kind)}",
                            f"column = {_s(rule.column)}"]
                    if rule.values:
                        out.append(f"values = {_arr(rule.values)}")
                    out.append(f"inferred = {_v(rule.inferred)}")
        return "\n".join(out) + "\n"

    @classmethod
    def from_toml(cls, text: str) -> Spec:
        """The spec ``text`` (as :meth:`to_toml` writes it) describes."""
        doc = tomllib.loads(text)
        return cls(
            name=doc["name"],
            root=doc["root"],
            warnings=list(doc.get("warnings", [])),
            skipped=[SkippedFile(**sk) for sk in doc.get("skipped", [])],
            sources=[
                SourceSpec(
                    name=src["name"], kind=src["kind"], patterns=list(src["patterns"]), files=src["files"],
                    levels=[
                        LevelSpec(
                            path=lv["path"], table=lv["table"], rows=lv["rows"], parent=lv.get("parent"),
                            key=KeySpec(**lv["key"]),
                            columns=[ColumnSpec(**c) for c in lv.get("columns", [])],
                            rules=[RuleSpec(**r) for r in lv.get("rules", [])],
                        )
                        for lv in src.get("levels", [])
                    ],
                )
                for src in doc.get("sources", [])
            ],
        )


def _key(key: KeySpec) -> list[str]:
    if key.surrogate:
        return ["key = {surrogate = true}  # no field is unique and never null: file, record ordinal, "
                "list index path"]
    note = "unique within the parent's key" if key.within_parent else "unique and never null"
    within = ", within_parent = true" if key.within_parent else ""
    return [f"key = {{columns = {_arr(key.columns)}{within}}}  # {note}"]


def _col_comment(col: ColumnSpec, rows: int) -> str:
    nulls = "never null" if col.nulls == 0 else (
        "always null" if col.nulls == rows else f"null or missing in {col.nulls:,}")
    return f"# inferred: {rows:,} records, {nulls}"


def _s(text: str) -> str:
    """``text`` as a TOML basic string (JSON's escapes are TOML's, but for DEL)."""
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _v(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return _s(str(value))


def _arr(values: list[Any]) -> str:
    return "[" + ", ".join(_v(v) for v in values) + "]"
