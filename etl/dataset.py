"""The dataset mold: a frozen description of how an export is read, checked, reshaped and loaded.

A dataset is data, not a class tree. It names

* its **sources**: which files (by pattern) hold which kind of records, and the record *levels*
  inside them (a powerset file holds a powerset, its powers, their effects). Each level declares
  the fields it stages, by JSON key and type, so the stage reads only what is needed;
* its **cleaning** steps and validation **rules**, run by ``etl validate``;
* its **transform**: LazyFrames of staged levels in, one LazyFrame per target table out;
* its target **tables** (columns, keys, references) and the post-load SQL directory.

Built-ins live in :mod:`etl.datasets`; other packages add theirs through the ``etl.datasets``
entry point group (see :func:`etl.datasets.get_dataset`).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import polars as pl

if TYPE_CHECKING:
    from etl.staging_fs import StagePath

#: Staged field types, in DuckDB's spelling (they become the Parquet column types).
FieldType = Literal[
    "VARCHAR", "BIGINT", "INTEGER", "DOUBLE", "BOOLEAN", "JSON",
    "VARCHAR[]", "BIGINT[]", "DOUBLE[]", "VARCHAR[][]", "BIGINT[][]",
]
Severity = Literal["error", "warning"]
RuleKind = Literal["required", "range", "one_of", "unique", "references", "check", "types",
                   "storable", "parent"]
#: What staging does with a source file that is not valid JSON: stop the stage (``fail``), or
#: leave it out, listed with the reason in the manifest and the validation report (``quarantine``).
OnBadFile = Literal["fail", "quarantine"]

#: Lineage columns every staged row carries: source file, record number in that file (0-based),
#: JSON path of nested records inside it (``Powers[3].Effects[1]``), position in the parent list.
LINEAGE = ("_file", "_record", "_path", "_index")

#: The column of a home table (see :attr:`Level.table`) that keeps, as JSON text, every key of
#: the record that no typed column holds exactly; ``_extra`` is its staged form.
EXTRA = "extra"
STAGED_EXTRA = "_extra"
#: What the transform carries instead of ``_extra`` (a wide text column): where the row's
#: ``_extra`` sits (the level's number in the dataset, shifted left 40 bits, or'ed with the row's
#: number among the level's staged rows), and, where a cleaning step changed a typed value, the
#: export's originals as a JSON object (``_patch``; NULL elsewhere). The transform writes each
#: table sorted by its key and fetches the ``_extra`` texts into place a chunk at a time, so the
#: texts are never all in memory. A dataset's transform keeps these columns (and ``_file``,
#: ``_record``, ``_path``) on the rows of a home table; :data:`CARRY` names them all.
XREF = "_xref"
PATCH = "_patch"
CARRY = ("_file", "_record", "_path", XREF, PATCH)
XREF_SHIFT = 40


def ancestor_path(path: pl.Expr, *relpaths: str) -> pl.Expr:
    """The lineage ``_path`` of a nested row's ancestor: a nested row's path is its parent's path,
    ".", its level's path relative to the parent, and "[i]"; the suffixes of ``relpaths`` are
    taken off, innermost first."""
    for rel in relpaths:
        path = path.str.replace(rf"\.?{re.escape(rel)}\[\d+\]$", "")
    return path


def carried() -> pl.Expr:
    """The columns a transform keeps on a home table's rows (:data:`CARRY`, and ``_extra`` where
    the levels were read whole), whichever of them the frame has: ``lf.select(..., carried())``."""
    return pl.col("^(" + "|".join((*CARRY, STAGED_EXTRA)) + ")$")

#: The key of a :class:`Field` that stages the record itself, as compact JSON text, less the
#: lists its child levels are staged from (those become rows of their own). Useful for records
#: whose keys differ from one to the next: keep them all, losslessly, and type the common ones.
ELEMENT = "*"


@dataclass(frozen=True, slots=True)
class Field:
    """One staged column: ``name`` in Parquet, read from JSON ``key`` (dots go deeper).

    The key :data:`ELEMENT` (``"*"``, type ``JSON`` only) reads the whole record of the level."""

    name: str
    key: str
    type: FieldType = "VARCHAR"

    @property
    def json_path(self) -> str:
        return "$." + ".".join(f'"{part}"' for part in self.key.split("."))


@dataclass(frozen=True, slots=True)
class Level:
    """A kind of record inside a source file, staged as ``raw/<name>/*.parquet``.

    ``path`` is the array key holding the records inside the parent record (or inside the
    file's top-level object when ``parent`` is None); ``path=None`` means the file's records
    themselves. ``inherit`` copies parent fields into each child row (parent name, child name);
    the parent's own inherited columns can be named too, so a key reaches every level below.
    """

    name: str
    fields: tuple[Field, ...]
    path: str | None = None
    parent: str | None = None
    inherit: tuple[tuple[str, str], ...] = ()
    #: The level's home table: the target table that holds one row per record of this level.
    #: A field lands in the home table's column of the same name; the keys of the record that
    #: no such column holds exactly are kept whole in the table's ``extra`` column (JSON), so
    #: every source record can be rebuilt from its row (``etl reconcile``).
    table: str | None = None
    #: Fields whose values land in a column other than the home table's column of their name:
    #: (field, column), the column being the home table's ``"value"``, or ``"fk->table.column"``,
    #: the column of the row the home table's ``fk`` column points at (a value deduplicated into
    #: a lookup table). Such a key leaves ``extra`` too where that column holds it exactly, and
    #: ``etl reconcile`` reads it back through the reference.
    columns: tuple[tuple[str, str], ...] = ()

    def field(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"level {self.name} has no field {name}")

    @property
    def whole(self) -> bool:
        """Whether a field stages the record itself (key :data:`ELEMENT`)."""
        return any(f.key == ELEMENT for f in self.fields)


def inherited_field(levels: Mapping[str, Level], level: Level, name: str) -> Field:
    """The field that ``level``'s parent column ``name`` comes from: a field of the parent, or
    (for a column the parent inherits in turn) of an ancestor. KeyError when there is none."""
    if level.parent is None:
        raise KeyError(f"level {level.name} has no parent")
    parent = levels[level.parent]
    for f in parent.fields:
        if f.name == name:
            return f
    for src, dst in parent.inherit:
        if dst == name:
            return inherited_field(levels, parent, src)
    raise KeyError(f"level {level.name} inherits {name}, which its parent {parent.name} "
                   "neither has nor inherits")


@dataclass(frozen=True, slots=True)
class Source:
    """Files of one kind: matched by ``match`` (fnmatch on the path under the input root,
    then on the bare file name), holding the record ``levels``.

    ``on_bad_file="quarantine"`` suits exports of many small independent files (one search
    result each): a file that is not valid JSON is left out and listed, and the rest loads;
    ``etl stage --strict`` makes it fatal again. A source with no ``match`` patterns holds no
    JSON files: its levels are filled by a :class:`SideFiles` hook."""

    name: str
    match: tuple[str, ...]
    levels: tuple[Level, ...]
    required: bool = True
    on_bad_file: OnBadFile = "fail"


@dataclass(frozen=True, slots=True)
class SideInput:
    """What a :class:`SideFiles` hook gets: the staged rows it looks beside, where each input
    file was found, and a content-addressed store under the staging directory."""

    #: The staged rows of :attr:`SideFiles.beside` (lineage columns and fields).
    records: pl.DataFrame
    #: Input root of each staged file, by its relative path (``_file``): files beside it must
    #: resolve under this root, or they are refused unread.
    roots: Mapping[str, Path]
    #: Folder for copies of side files (``<staging_dir>/<dataset>/_store``), shared by runs: a
    #: local path, or a :class:`~etl.staging_fs.RemotePath` when the staging root is a URI.
    store: StagePath
    #: What stored paths are written relative to (the staging directory).
    store_base: StagePath
    threads: int


@dataclass(frozen=True, slots=True)
class SideFiles:
    """Files that sit beside a source's JSON files (screenshots, attachments), staged by a hook.

    After the JSON levels are staged, ``stage(SideInput)`` is called with the rows of level
    ``beside`` and returns the rows of level ``level`` (declared, with its fields, in a
    :class:`Source` without match patterns), lineage columns included. Each row's ``sha256``
    column (when there is one) joins the run id, so a changed side file is a new run."""

    level: str
    beside: str
    stage: Callable[[SideInput], pl.DataFrame]


@dataclass(frozen=True, slots=True)
class Rule:
    """A validation rule on one staged level. Build them with the helpers below."""

    name: str
    level: str
    kind: RuleKind
    columns: tuple[str, ...] = ()
    severity: Severity = "error"
    min: float | None = None
    max: float | None = None
    values: tuple[object, ...] = ()
    ref: tuple[str, str] | None = None
    expr: Callable[[], pl.Expr] | None = None
    when: Callable[[], pl.Expr] | None = None
    message: str = ""
    #: For a rule whose ``expr`` only finds suspects (a cheap native test): given the values of
    #: ``columns[0]`` on the rows it flagged, whether each really breaks the rule.
    recheck: Callable[[pl.Series], pl.Series] | None = None

    def describe(self) -> str:
        if self.message:
            return self.message
        cols = ", ".join(self.columns)
        match self.kind:
            case "required":
                return f"{cols} must be present"
            case "range":
                return f"{cols} must be within [{self.min}, {self.max}]"
            case "one_of":
                return f"{cols} must be one of {list(self.values)}"
            case "unique":
                return f"({cols}) must be unique"
            case "references":
                assert self.ref is not None
                return f"{cols} must name an existing {self.ref[0]}.{self.ref[1]}"
            case "types":
                return "every field must have its declared type"
            case _:
                return self.name


def required(level: str, *columns: str, severity: Severity = "error") -> Rule:
    return Rule(f"{level}.{'+'.join(columns)}.required", level, "required", columns, severity)


def in_range(level: str, column: str, lo: float | None, hi: float | None,
             *, severity: Severity = "error") -> Rule:
    return Rule(f"{level}.{column}.range", level, "range", (column,), severity, min=lo, max=hi)


def one_of(level: str, column: str, values: tuple[object, ...], *,
           severity: Severity = "error") -> Rule:
    return Rule(f"{level}.{column}.one_of", level, "one_of", (column,), severity, values=values)


def unique(level: str, *columns: str, severity: Severity = "error") -> Rule:
    return Rule(f"{level}.{'+'.join(columns)}.unique", level, "unique", columns, severity)


def references(level: str, column: str, target: str, target_column: str, *,
               severity: Severity = "error", when: Callable[[], pl.Expr] | None = None) -> Rule:
    """Every non-null ``column`` must equal some accepted ``target.target_column``."""
    return Rule(f"{level}.{column}.references", level, "references", (column,), severity,
                ref=(target, target_column), when=when)


def check(name: str, level: str, expr: Callable[[], pl.Expr], message: str, *,
          columns: tuple[str, ...] = (), severity: Severity = "error") -> Rule:
    """A row passes when ``expr()`` is true (null counts as passing); ``columns`` are shown
    in the report's examples."""
    return Rule(f"{level}.{name}", level, "check", columns, severity, expr=expr, message=message)


@dataclass(frozen=True, slots=True)
class Clean:
    """A cleaning step: ``column`` becomes ``fn(pl.col(column))``; changed rows are counted."""

    name: str
    level: str
    column: str
    fn: Callable[[pl.Expr], pl.Expr]
    description: str


#: The built-in cleaning step every text column of every level gets (see :func:`effective_cleaning`).
STRIP_NUL = "strip_nul"
STRIP_NUL_DESCRIPTION = "NUL (U+0000) removed from the text; PostgreSQL text cannot hold it"
STRIP_NUL_JSON_DESCRIPTION = ("NUL (\\u0000) removed from the strings of the JSON text; "
                              "PostgreSQL text and jsonb cannot hold it")
STRIP_NUL_EXTRA_DESCRIPTION = (
    "NUL (\\u0000) removed from the strings (and keys) of extra's JSON text; PostgreSQL's json "
    "operators refuse it, so one such row would stop every query of extra over its table (the "
    "original of a cleaned text value is counted at its column)")
#: The manifest's count, per level, of the staged rows whose ``_extra`` holds a NUL that the
#: built-in ``strip_nul`` removes (``etl validate`` reports it without reading ``_extra``).
EXTRA_NUL_ROWS = "extra_nul_rows"
_JSON_NUL = re.compile(r"\\(\\|u0000)")


def strip_nul(e: pl.Expr) -> pl.Expr:
    r"""Text without its NUL characters (``"a\x00b"`` → ``"ab"``)."""
    return e.str.replace_all("\x00", "", literal=True)


def strip_json_nul_text(text: str) -> str:
    r"""JSON text without the NULs its strings (and keys) hold: every ``\u0000`` escape is
    removed, an escaped backslash followed by ``u0000`` (``\\u0000``, text) is left alone.
    (A JSON text cannot hold a raw NUL: control characters are escaped.)"""
    return _JSON_NUL.sub(lambda m: "\\\\" if m.group(1) == "\\" else "", text)


def _nul_in(e: pl.Expr, depth: int) -> pl.Expr:
    """Whether the text (a list of texts, for ``depth`` 1…) holds NUL anywhere."""
    if depth == 0:
        return e.str.contains("\x00", literal=True)
    return e.list.eval(_nul_in(pl.element(), depth - 1)).list.any()


def _stripped(e: pl.Expr, depth: int) -> pl.Expr:
    if depth == 0:
        return strip_nul(e)
    return e.list.eval(_stripped(pl.element(), depth - 1))


def strip_json_nul_texts(s: pl.Series) -> pl.Series:
    """JSON texts without their NULs; only the rare values holding ``\\u0000`` are touched."""
    hit = s.str.contains("\\u0000", literal=True).fill_null(False)
    if not hit.any():
        return s
    values = s.to_list()
    for i in hit.arg_true().to_list():
        values[i] = strip_json_nul_text(values[i])
    return pl.Series(s.name, values, dtype=pl.String())


def strip_json_nul(e: pl.Expr) -> pl.Expr:
    """JSON texts (a column of them) without the ``\\u0000`` escapes their strings hold."""
    return e.map_batches(strip_json_nul_texts, return_dtype=pl.String(), is_elementwise=True)


def _depth(dtype: pl.DataType) -> int:
    depth = 0
    while isinstance(dtype, pl.List):
        dtype, depth = dtype.inner, depth + 1  # type: ignore[assignment]
    return depth


def _strip_nul_step(dtype: pl.DataType, json: bool) -> Callable[[pl.Expr], pl.Expr]:
    if json:
        return strip_json_nul
    depth = _depth(dtype)
    return lambda e: _stripped(e, depth)


def cleaning_changed(step: Clean, dtype: pl.DataType) -> pl.Expr:
    """True for the rows whose ``step.column`` (of ``dtype``) ``step`` changes: for the built-in
    ``strip_nul`` of text, the rows holding NUL (cheaper than cleaning and comparing)."""
    col = pl.col(step.column)
    if step.name == STRIP_NUL and step.description == STRIP_NUL_DESCRIPTION:
        return _nul_in(col, _depth(dtype)).fill_null(False)
    return step.fn(col).ne_missing(col)


def effective_cleaning(dataset: Dataset) -> tuple[Clean, ...]:
    """The cleaning steps ``etl validate`` runs and counts, and every reader of cleaned rows
    applies: first the built-in ``strip_nul`` on every text column of every level (own and
    inherited fields: VARCHAR, VARCHAR[], VARCHAR[][], and the ``\\u0000`` escapes of JSON
    fields and of ``_extra``), then the dataset's own steps.

    >>> [c.column for c in effective_cleaning(ds) if c.level == "powers"]   # doctest: +SKIP
    ['powerset_full_name', 'full_name', 'power_name', ..., 'trim_display_names' ...]
    """
    levels = dataset.levels
    steps: list[Clean] = []
    for lvl in levels.values():
        typed = [(dst, inherited_field(levels, lvl, src).type) for src, dst in lvl.inherit]
        typed += [(f.name, f.type) for f in lvl.fields]
        for column, type_ in typed:
            base = type_.replace("[]", "")
            if base not in ("VARCHAR", "JSON"):
                continue
            dtype: pl.DataType = pl.String()
            for _ in range(type_.count("[]")):
                dtype = pl.List(dtype)
            json = base == "JSON"
            steps.append(Clean(STRIP_NUL, lvl.name, column, _strip_nul_step(dtype, json),
                               STRIP_NUL_JSON_DESCRIPTION if json else STRIP_NUL_DESCRIPTION))
        if lvl.table is not None:  # last of the level's steps: see apply_cleaning
            steps.append(Clean(STRIP_NUL, lvl.name, STAGED_EXTRA, strip_json_nul,
                               STRIP_NUL_EXTRA_DESCRIPTION))
    for lvl in levels.values():
        for f in lvl.fields:
            if f.type.endswith("[]"):
                steps.append(Clean(NULL_IN_LIST, lvl.name, f.name, _null_in_list(f.type.count("[]")),
                                   NULL_IN_LIST_DESCRIPTION))
    return (*steps, *dataset.cleaning)


#: The built-in step every list column gets (see :func:`effective_cleaning`).
NULL_IN_LIST = "null_in_list"
NULL_IN_LIST_DESCRIPTION = (
    "a list holding a null is NULL in its column (the pinned adbc-driver-postgresql 1.8.0 would "
    "load the nulls as 0 or ''); extra keeps the list as the export wrote it")


def _null_in_list(depth: int) -> Callable[[pl.Expr], pl.Expr]:
    def holds_null(depth: int) -> pl.Expr:
        element = pl.element().is_null()
        if depth > 1:
            element = element | pl.element().list.eval(holds_null(depth - 1)).list.any()
        return element

    def step(e: pl.Expr) -> pl.Expr:
        return pl.when(e.list.eval(holds_null(depth)).list.any().fill_null(False)) \
            .then(None).otherwise(e)
    return step


@dataclass(frozen=True, slots=True)
class Column:
    """A target column, typed in PostgreSQL's terms."""

    name: str
    type: str
    nullable: bool = True


@dataclass(frozen=True, slots=True)
class ForeignKey:
    columns: tuple[str, ...]
    table: str
    ref_columns: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Table:
    """A target table: columns, primary key, unique keys, foreign keys."""

    name: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...]
    unique: tuple[tuple[str, ...], ...] = ()
    foreign_keys: tuple[ForeignKey, ...] = ()

    @property
    def polars_schema(self) -> pl.Schema:
        return pl.Schema({c.name: pg_to_polars(c.type) for c in self.columns})


_PG_TO_POLARS: dict[str, pl.DataType] = {
    "bigint": pl.Int64(),
    "integer": pl.Int32(),
    "smallint": pl.Int16(),
    "double precision": pl.Float64(),
    "real": pl.Float32(),
    "boolean": pl.Boolean(),
    "text": pl.String(),
    "jsonb": pl.String(),
    "json": pl.String(),
    "date": pl.Date(),
    "timestamptz": pl.Datetime("us", "UTC"),
}


def pg_to_polars(pg_type: str) -> pl.DataType:
    """The Polars dtype a target column of ``pg_type`` is written with."""
    if pg_type.endswith("[]"):
        return pl.List(pg_to_polars(pg_type[:-2]))
    try:
        return _PG_TO_POLARS[pg_type]
    except KeyError:
        raise ValueError(f"unsupported column type {pg_type!r}") from None


#: Staged field type → the target column types that hold its values exactly.
_HOLDS: dict[str, tuple[str, ...]] = {
    "VARCHAR": ("text",),
    "BIGINT": ("bigint",),
    "INTEGER": ("integer", "bigint"),
    "DOUBLE": ("double precision",),
    "BOOLEAN": ("boolean",),
    "JSON": ("jsonb", "json"),
    "VARCHAR[]": ("text[]",),
    "BIGINT[]": ("bigint[]",),
    "DOUBLE[]": ("double precision[]",),
    "VARCHAR[][]": ("text[][]", "text[]"),
    "BIGINT[][]": ("bigint[][]", "bigint[]"),
}


def field_column(level: Level, field: Field, tables: Mapping[str, Table]
                 ) -> tuple[str | None, Table, Column] | None:
    """Where ``field`` of ``level`` lands: (the home table's reference column, or None; the
    table; the column), by :attr:`Level.columns` or else the home table's column of the same
    name; None when there is no such column."""
    home = tables.get(level.table) if level.table is not None else None
    if home is None:
        return None
    target = dict(level.columns).get(field.name, field.name)
    fk, table = None, home
    if "->" in target:
        fk, _, rest = target.partition("->")
        name, _, target = rest.partition(".")
        if name not in tables:
            return None
        table = tables[name]
    col = next((c for c in table.columns if c.name == target), None)
    return (fk, table, col) if col is not None else None


def typed_in_table(field: Field, table: Table | None, level: Level | None = None,
                   tables: Mapping[str, Table] | None = None) -> bool:
    """Whether ``field`` lands in a column that holds its value exactly: a column of its level's
    home ``table`` with the same name (or the one :attr:`Level.columns` names, with ``level`` and
    the dataset's ``tables``) and of a type made for the field's type. Only such a field's key
    can leave the record's ``_extra`` (and only where its value is exact). Keys below the top
    level (dotted) always stay in ``_extra``: it keeps nested objects whole."""
    if table is None or field.key == ELEMENT or "." in field.key:
        return False
    if level is not None and level.columns:
        found = field_column(level, field, {**(tables or {}), table.name: table})
        return found is not None and found[2].type in _HOLDS.get(field.type, ())
    col = next((c for c in table.columns if c.name == field.name), None)
    return col is not None and col.type in _HOLDS.get(field.type, ())


Transform = Callable[[Mapping[str, pl.LazyFrame]], Mapping[str, pl.LazyFrame]]


@dataclass(frozen=True, slots=True)
class Dataset:
    """Everything the toolkit knows about one kind of export."""

    name: str
    version: str
    description: str
    sources: tuple[Source, ...]
    transform: Transform
    tables: tuple[Table, ...]
    rules: tuple[Rule, ...] = ()
    cleaning: tuple[Clean, ...] = ()
    #: Folder of post-load SQL files (``*.sql``, run in name order after the keys). The built-ins'
    #: are the repository's ``sql/<name>/`` (:func:`etl.shipped.shipped`); a plugin dataset ships
    #: its own as package data beside its module (``Path(__file__).parent / "sql"``).
    sql_dir: Path | None = None
    #: Files beside the JSON (screenshots…), staged by hooks.
    side_files: tuple[SideFiles, ...] = ()
    #: Table → column holding the import's tag (a name for one import among several in the
    #: same tables). ``etl load --tag`` sets it at load time; ``--delete-missing`` in merge
    #: mode deletes only rows carrying the import's tag(s).
    tag_columns: Mapping[str, str] = field(default_factory=dict)
    #: Reconciliation hints shown by ``etl datasets``: where each table's rows come from.
    notes: Mapping[str, str] = field(default_factory=dict)
    #: How to write an export of this dataset (``etl generate``, ``etl demo``); None: no generator.
    generator: Generator | None = None
    #: What ``etl bench`` measures by default, and how it makes exports of a given size.
    bench: BenchSpec | None = None
    #: The cached reads of the live data (``etl query``, ``etl cache warm``, ``etl bench-reads``).
    reads: Reads | None = None
    #: For a dataset built from a declarative spec (``etl init``): the spec's TOML text, which the
    #: stage keeps in the run (``spec.toml``) so that every later stage, and ``etl rebuild``, reads
    #: the very spec the run was staged with; and the file it was read from.
    spec_text: str | None = None
    spec_file: Path | None = None
    #: The export a spec was inferred from (its ``root``): what ``etl run NAME`` reads when given
    #: no source.
    default_source: Path | None = None
    #: For a spec dataset: what to do with keys and types the spec does not declare, per source
    #: (``keep``: kept in ``extra`` and reported; ``freeze``: stop; ``evolve``: add columns).
    drift: Mapping[str, str] = field(default_factory=dict)

    @property
    def levels(self) -> dict[str, Level]:
        """Every staged level by name, parents before children."""
        return {lvl.name: lvl for src in self.sources for lvl in src.levels}

    def level_source(self, level: str) -> Source:
        for src in self.sources:
            if any(lvl.name == level for lvl in src.levels):
                return src
        raise KeyError(level)

    def table(self, name: str) -> Table:
        for t in self.tables:
            if t.name == name:
                return t
        raise KeyError(f"dataset {self.name} has no table {name}")

    def fingerprint(self) -> dict[str, object]:
        """What about this dataset changes staged output: name, version, staged fields."""
        return {
            "name": self.name,
            "version": self.version,
            "sources": [
                {
                    "name": s.name,
                    "match": list(s.match),
                    **({"on_bad_file": s.on_bad_file} if s.on_bad_file != "fail" else {}),
                    "levels": [
                        {
                            "name": lvl.name,
                            "path": lvl.path,
                            "parent": lvl.parent,
                            "inherit": [list(i) for i in lvl.inherit],
                            "fields": [[f.name, f.key, f.type] for f in lvl.fields],
                            **({"table": lvl.table} if lvl.table else {}),
                            **({"columns": [list(c) for c in lvl.columns]} if lvl.columns else {}),
                        }
                        for lvl in s.levels
                    ],
                }
                for s in self.sources
            ],
        }


# ------------------------------------------------------------------------------ generators, bench, reads
# What a dataset declares about itself beyond reading and loading: the CLI builds `etl generate`,
# `etl demo`, `etl bench`, `etl query` and `etl bench-reads` from these, naming no dataset itself.


@dataclass(frozen=True, slots=True)
class Generated:
    """What a generator call wrote: ``files`` files of ``bytes`` bytes holding ``entries``
    records; ``counts`` says what, for people (``(("items", 1000), ("spells", 812))``);
    ``extra`` is kept with a bench export's figures (``{"images": 514}``)."""

    root: Path
    files: int
    bytes: int
    entries: int
    counts: tuple[tuple[str, int], ...] = ()
    extra: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class GenOption:
    """One option a generator takes: ``etl generate`` offers it as ``--name`` (underscores as
    dashes) and passes it as the keyword ``name``; ``type`` is ``int``, ``str`` or ``bool`` (a
    flag). ``default`` None: the generator decides (its help should say what)."""

    name: str
    type: type = int
    help: str = ""
    default: Any = None


@dataclass(frozen=True, slots=True)
class Generator:
    """A dataset's export generator: ``generate(out, seed=, template=, **options)`` writes an
    export in the real format under ``out`` (the same arguments, the same bytes).

    ``template``: a real export to amplify, described by ``template_help`` (empty: the generator
    takes none and ignores it). ``demo``: what ``etl demo`` passes (None: no demo of this dataset);
    ``demo_size`` names the option ``etl demo`` lets the user change."""

    generate: Callable[..., Generated]
    options: tuple[GenOption, ...] = ()
    template_help: str = ""
    demo: Mapping[str, Any] | None = None
    demo_size: str | None = None


@dataclass(frozen=True, slots=True)
class BenchSpec:
    """What ``etl bench`` measures by default for a dataset.

    ``export(out, size, seed, template)`` writes an export of about ``size`` ``unit`` (amplified
    from the real ``template`` where the dataset does that). ``real``: folder names under the
    shared data to prefer as the real export, in order (none: the bench never reads one);
    ``sample``: those to amplify from (read whole; default ``real``). ``copies(template, out,
    n)``, ``measure(export)`` and ``copy_version``: renamed copies of the real export for scale,
    measured with ``default_copies`` when a real export is found. ``reimport``: measure a first
    import and a merge of the same export instead of ``--unsafe-fast`` and the COPY ceiling."""

    sizes: tuple[int, ...]
    export: Callable[[Path, int, int, Path | None], Generated]
    unit: tuple[str, str] = ("entry", "entries")
    real: tuple[str, ...] = ()
    sample: tuple[str, ...] | None = None
    copies: Callable[[Path, Path, int], Generated] | None = None
    measure: Callable[[Path], Generated] | None = None
    copy_version: int = 1
    default_copies: tuple[int, ...] = ()
    reimport: bool = False


@dataclass(frozen=True, slots=True)
class ReadQuery:
    """One cached read: ``sql`` returns the answer as one JSON text (NULL: nothing found) for
    ``%(arg)s``, the argument as ``parse`` reads it from text. ``what`` names the argument in
    messages (``no power 42``), ``hint`` says what a valid one looks like, ``key`` is the
    answer's key in the result (default ``name``). ``metavar`` and ``help`` (with an example)
    make its ``etl query DATASET NAME ARG`` command."""

    name: str
    sql: str
    what: str
    hint: str
    help: str
    metavar: str = "ARG"
    parse: Callable[[str], Any] = str
    key: str = ""


@dataclass(frozen=True, slots=True)
class ReadBench:
    """How ``etl bench-reads`` reads a dataset while it reloads it: ``hot_keys(conn, rng)`` picks
    the (query, argument) pairs read; ``probe`` is a read whose answer is present after loading
    the full export and absent after loading the ``drop_probe``-ped copy of it (which deletes
    the probe's record from an export folder); ``marker``: a file every export has."""

    hot_keys: Callable[[Any, random.Random], list[tuple[str, str]]]
    probe: tuple[str, str]
    drop_probe: Callable[[Path], None]
    marker: str = ""


@dataclass(frozen=True, slots=True)
class Reads:
    """A dataset's cached reads: its queries; ``default_keys(cursor)`` what to warm when no key
    is known to be hot; ``help`` (with an example) of its ``etl query DATASET`` group;
    ``bench`` for ``etl bench-reads``."""

    queries: tuple[ReadQuery, ...]
    help: str = ""
    default_keys: Callable[[Any], list[tuple[str, str]]] | None = None
    bench: ReadBench | None = None

    def query(self, name: str) -> ReadQuery | None:
        return next((q for q in self.queries if q.name == name), None)
