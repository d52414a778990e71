"""The declarative dataset spec ``etl init`` writes and the user edits: plain dataclasses, written as
readable TOML by hand (:meth:`Spec.to_toml`) and read back with :mod:`tomllib` (:meth:`Spec.from_toml`).

The comments in the written TOML (``# inferred: 3,568 records, never null``) are derived from the
fields, so a spec read back compares equal to the one written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import tomllib
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

#: The column types a spec names, narrowest first for the scalar ones (see :func:`widen`).
SCALAR_TYPES = ("boolean", "integer", "bigint", "double precision", "numeric", "text")
#: Lists of values, as PostgreSQL arrays (a spec written by hand, or a built-in's; ``etl init``
#: types lists as jsonb).
ARRAY_TYPES = ("text[]", "bigint[]", "double precision[]", "text[][]", "bigint[][]")
TYPES = (*SCALAR_TYPES, "jsonb", "json", *ARRAY_TYPES)


def fit_identifier(name: str, suffix: str = "") -> str:
    """``name + suffix`` when it fits PostgreSQL's 63 bytes, else ``name`` cut at a character
    boundary with a hash of the whole of it before ``suffix`` (PostgreSQL would cut it silently,
    making two long names one).

    >>> fit_identifier("a_" + "x" * 70)[-9:], len(fit_identifier("a_" + "x" * 70))
    ('_43afd6bc', 63)
    """
    if len((name + suffix).encode()) <= 63:
        return name + suffix
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    room = 63 - len(suffix.encode()) - len(digest) - 1
    return f"{name.encode()[:room].decode(errors='ignore')}_{digest}{suffix}"


def fresh_name(name: str, taken: set[str]) -> str:
    """``name``, or ``name_2``, ``name_3``... the first not in ``taken`` (which it is added to),
    each within PostgreSQL's 63 bytes (:func:`fit_identifier`)."""
    out, n = fit_identifier(name), 2
    while out in taken:
        out, n = fit_identifier(name, f"_{n}"), n + 1
    taken.add(out)
    return out


def widen(a: str | None, b: str | None) -> str | None:
    """The narrower scalar type both ``a`` and ``b`` fit in (None for no value seen yet)."""
    if a is None:
        return b
    if b is None:
        return a
    if a == b:
        return a
    if a not in SCALAR_TYPES or b not in SCALAR_TYPES:
        return "jsonb"
    if "boolean" in (a, b) and {a, b} & {"integer", "bigint", "double precision", "numeric"}:
        # true and 3 in one column: jsonb keeps both as they are (a number column would hold
        # no boolean; text would make true and "true" one value)
        return "jsonb"
    return SCALAR_TYPES[max(SCALAR_TYPES.index(a), SCALAR_TYPES.index(b))]


@dataclass
class RuleSpec:
    """A validation rule on one column: ``required`` or ``one_of`` (with ``values``)."""

    kind: str
    column: str
    values: list[Any] = field(default_factory=list)
    inferred: bool = False
    #: ``error``, ``warning`` or ``off``; empty: a warning when ``inferred``, else an error.
    severity: str = ""


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
    #: The staged level's name when it is not ``table`` (levels sharing a table, with a hook).
    level: str = ""
    #: Parent fields copied into each row: ``[[parent_column, name], ...]`` (with a hook).
    inherit: list[list[str]] = field(default_factory=list)
    #: Fields landing in another column than their own: ``[[field, column], ...]``, the column
    #: being ``"value"`` or ``"fk->table.column"`` (with a hook; see ``Level.columns``).
    into: list[list[str]] = field(default_factory=list)
    #: Keys the columns leave out are expected (keys that are data, or more keys than columns go):
    #: kept in ``extra`` and not reported as drift.
    open: bool = False


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
    #: What a later export's undeclared keys and types do (see :data:`DRIFT_POLICIES`).
    drift: str = "keep"
    #: Whether an export must have files of this source.
    required: bool = True
    #: ``fail`` or ``quarantine`` (a file that is not valid JSON is left out and listed).
    on_bad_file: str = "fail"


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
    #: A Python module whose ``extend(dataset)`` returns the dataset with what a spec does not
    #: declare: its target tables and transform, rules in code, cleaning, post-load SQL... (the
    #: built-ins are a spec and such a hook). Empty: the spec's own tables, a table a level.
    hook: str = ""
    #: The dataset's version (what changes staged output); empty: a hash of the spec.
    version: str = ""
    description: str = ""

    def source(self, name: str) -> SourceSpec:
        """The source called ``name`` (KeyError if there is none)."""
        for src in self.sources:
            if src.name == name:
                return src
        raise KeyError(name)

    def to_toml(self) -> str:
        """The spec as readable TOML, with comments saying what was inferred (a spec with a hook,
        declared rather than inferred, gets no counts and no keys: its hook has the tables)."""
        declared = bool(self.hook)
        out: list[str] = [
            f"# Dataset spec for {self.name!r}: its sources and staged levels; the module {self.hook} adds "
            "its tables, transform and rules." if declared else
            f"# Dataset spec for {self.name!r}, inferred by etl init: edit it, then load with it.",
            "# Rules marked inferred = true were proposed from the data; keep, change or delete them.",
            f"name = {_s(self.name)}",
            f"root = {_s(self.root)}",
        ]
        if declared:
            del out[1]
        out += [f"{k} = {_s(v)}" for k, v in (("hook", self.hook), ("version", self.version),
                                             ("description", self.description)) if v]
        out.append("warnings = [" + "".join(f"\n  {_s(w)}," for w in self.warnings) +
                   ("\n]" if self.warnings else "]"))
        for sk in self.skipped:
            out += ["", "[[skipped]]", f"file = {_s(sk.file)}", f"offset = {sk.offset}",
                    f"error = {_s(sk.error)}"]
        for src in self.sources:
            out += ["", "", "[[sources]]", f"name = {_s(src.name)}",
                    f"kind = {_s(src.kind)}  # object: a record a file; array: records in a top-level "
                    "array; ndjson: a record a line",
                    f"patterns = {_arr(src.patterns)}"]
            if not declared:
                out.append(f"files = {src.files}")
            out.append(f"drift = {_s(src.drift)}  # keys or types this spec does not know: keep (in extra, "
                       "reported), evolve (new columns), freeze (stop), off (type errors reject rows)")
            if not src.required:
                out.append("required = false")
            if src.on_bad_file != "fail":
                out.append(f"on_bad_file = {_s(src.on_bad_file)}")
            for lv in src.levels:
                out += ["", "[[sources.levels]]"]
                if not declared:
                    where = " (the records)" if lv.path == "" else f" from {_comment_text(lv.path)}"
                    out.append(f"# {lv.rows:,} rows{where}")
                out += [f"path = {_s(lv.path)}", f"table = {_s(lv.table)}"]
                if not declared:
                    out.append(f"rows = {lv.rows}")
                if lv.parent is not None:
                    out.append(f"parent = {_s(lv.parent)}")
                if lv.level:
                    out.append(f"level = {_s(lv.level)}")
                if lv.inherit:
                    out.append("inherit = [" + ", ".join(_arr(i) for i in lv.inherit) + "]")
                if lv.into:
                    out.append("into = [" + ", ".join(_arr(i) for i in lv.into) + "]")
                if not declared:
                    out += _key(lv.key)
                if lv.open:
                    out.append("open = true  # keys no column names are expected: kept in extra, not drift")
                for col in lv.columns:
                    if declared:
                        out += ["", "[[sources.levels.columns]]", f"name = {_s(col.name)}",
                                f"json = {_arr(col.json)}", f"type = {_s(col.type)}"]
                        continue
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
                    if rule.severity:
                        out.append(f"severity = {_s(rule.severity)}")
        return "\n".join(out) + "\n"

    @classmethod
    def from_toml(cls, text: str) -> Spec:
        """The spec ``text`` describes (as :meth:`to_toml` writes it, or written by hand: counts,
        ``kind`` and ``key`` may be left out). Raises :class:`SpecFormatError` naming the entry
        that is wrong."""
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise SpecFormatError(f"not valid TOML: {exc}") from None
        return cls(
            name=check_dataset_name(_req(doc, "name", str, "the spec")),
            root=str(doc.get("root", ".")),
            hook=str(doc.get("hook", "")), version=str(doc.get("version", "")),
            description=str(doc.get("description", "")),
            warnings=list(doc.get("warnings", [])),
            skipped=[SkippedFile(**_only(sk, SkippedFile, "[[skipped]]")) for sk in doc.get("skipped", [])],
            sources=[_source(src, i) for i, src in enumerate(_list(doc, "sources", "the spec"))],
        )


#: A dataset's name: its PostgreSQL schema, with room for the load's ``<name>__old<ledger id>``
#: and ``<name>__b<ledger id>`` beside it within PostgreSQL's 63 bytes (a longer name would be
#: cut by the server: the build schema could become the live one's name).
DATASET_NAME = re.compile(r"[a-z][a-z0-9_]{0,39}")
#: Schema names a dataset cannot take (the toolkit's ledger, PostgreSQL's own).
TAKEN_SCHEMAS = ("etl", "public", "information_schema")


def check_dataset_name(name: str) -> str:
    """``name`` when it can name a dataset (:data:`DATASET_NAME`, not :data:`TAKEN_SCHEMAS`,
    no ``__``); :class:`SpecFormatError` saying why otherwise.

    >>> check_dataset_name("my_export")
    'my_export'
    """
    if not DATASET_NAME.fullmatch(name) or "__" in name:
        msg = (f"dataset name {name!r} is not a lower-case identifier of at most 40 characters "
               "(letters, digits and single _, starting with a letter), e.g. my_export")
        raise SpecFormatError(msg)
    if name in TAKEN_SCHEMAS or name.startswith("pg_"):
        msg = f"dataset name {name!r} is a schema PostgreSQL or the toolkit uses; choose another"
        raise SpecFormatError(msg)
    return name


class SpecFormatError(ValueError):
    """A spec file that cannot be read: the message names the entry."""


#: A source's ``drift`` policy: ``keep`` undeclared keys in the row's ``extra`` and report them,
#: ``evolve`` the spec (new columns, wider types), ``freeze`` (stop with the difference), ``off``
#: (not looked for: undeclared keys are kept in ``extra`` unreported and a value of another type
#: is a type error the ``types`` rule rejects, as the built-in datasets do).
DRIFT_POLICIES = ("keep", "evolve", "freeze", "off")
SEVERITIES = ("error", "warning", "off")


def _req(doc: dict[str, Any], key: str, kind: type, where: str) -> Any:
    if key not in doc:
        raise SpecFormatError(f"{where} has no {key!r}")
    value = doc[key]
    if not isinstance(value, kind):
        raise SpecFormatError(f"{where}: {key} = {value!r} is not a {kind.__name__}")
    return value


def _list(doc: dict[str, Any], key: str, where: str) -> list[dict[str, Any]]:
    value = doc.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise SpecFormatError(f"{where}: {key} must be an array of tables ([[{key}]])")
    return value


def _only(entry: dict[str, Any], cls: type, where: str) -> dict[str, Any]:
    known = set(cls.__dataclass_fields__)  # type: ignore[attr-defined]
    unknown = sorted(set(entry) - known)
    if unknown:
        raise SpecFormatError(f"{where}: unknown entr{'y' if len(unknown) == 1 else 'ies'} "
                              f"{', '.join(unknown)} (known: {', '.join(sorted(known))})")
    return entry


def _source(src: dict[str, Any], i: int) -> SourceSpec:
    where = f"source {src.get('name', i + 1)!r}"
    _only(src, SourceSpec, where)
    drift = src.get("drift", "keep")
    if drift not in DRIFT_POLICIES:
        raise SpecFormatError(f"{where}: drift = {drift!r}; use one of {', '.join(DRIFT_POLICIES)}")
    patterns = src.get("patterns", ["**/*.json"])
    if isinstance(patterns, str):
        patterns = [patterns]
    return SourceSpec(
        name=_req(src, "name", str, f"source {i + 1}"), kind=str(src.get("kind", "object")),
        patterns=list(patterns), files=int(src.get("files", 0)), drift=drift,
        required=bool(src.get("required", True)), on_bad_file=str(src.get("on_bad_file", "fail")),
        levels=[_level(lv, where) for lv in _list(src, "levels", where)])


def _level(lv: dict[str, Any], where: str) -> LevelSpec:
    where = f"{where}, level {lv.get('table', lv.get('path', '?'))!r}"
    _only(lv, LevelSpec, where)
    key = lv.get("key", {"surrogate": True})
    if not isinstance(key, dict):
        raise SpecFormatError(f"{where}: key must be a table, e.g. {{columns = [\"id\"]}}")
    _only(key, KeySpec, f"{where}, key")
    rules = []
    for r in _list(lv, "rules", where):
        _only(r, RuleSpec, f"{where}, rule")
        rule = RuleSpec(**r)
        if rule.severity and rule.severity not in SEVERITIES:
            raise SpecFormatError(f"{where}, rule {rule.kind} on {rule.column}: severity = "
                                  f"{rule.severity!r}; use one of {', '.join(SEVERITIES)}")
        rules.append(rule)
    columns = []
    for c in _list(lv, "columns", where):
        cwhere = f"{where}, column {c.get('name', '?')!r}"
        _only(c, ColumnSpec, cwhere)
        name = _req(c, "name", str, cwhere)
        _req(c, "type", str, cwhere)
        col = ColumnSpec(**{"json": [name], **c})
        if col.type not in TYPES:
            raise SpecFormatError(f"{where}, column {col.name!r}: type = {col.type!r}; use one of "
                                  f"{', '.join(TYPES)}")
        if isinstance(col.json, str):
            col.json = [col.json]
        columns.append(col)
    return LevelSpec(path=_req(lv, "path", str, where), table=_req(lv, "table", str, where),
                     rows=int(lv.get("rows", 0)), parent=lv.get("parent"), key=KeySpec(**key),
                     columns=columns, rules=rules, open=bool(lv.get("open", False)),
                     level=str(lv.get("level", "")), inherit=[list(i) for i in lv.get("inherit", [])],
                     into=[list(i) for i in lv.get("into", [])])


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


def _comment_text(text: str) -> str:
    """``text`` for a TOML comment: control characters (a key's line break) written as JSON
    escapes, which TOML does not allow there.

    >>> _comment_text("Kids" + chr(10) + "[]")
    'Kids\\\\n[]'
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else json.dumps(c)[1:-1] for c in text)


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
