"""A dataset spec expressed as a :class:`~etl.dataset.Dataset`, so the pipeline can run it.

:func:`to_dataset` maps

* each :class:`SourceSpec` to a :class:`Source` (its patterns; the stage tells objects, arrays and
  NDJSON apart by itself, so the spec's ``kind`` needs no counterpart);
* each :class:`LevelSpec` to a staged :class:`Level` whose home table is the level's table: its
  typed columns read from the JSON key paths of the spec, every key no typed column holds exactly
  kept in the table's ``extra`` (json) column — nested objects flattened into columns stay whole
  there too, so nothing is lost;
* each level to one table, keyed by the spec's natural key (within the parent's key when the spec
  says so) or by a deterministic surrogate ``row_key`` (``file#record:path``); a child level's
  table holds its parent's key (``<parent table>_<column>``) with a foreign key to it;
* the spec's ``required`` and ``one_of`` rules to the dataset's rules (a rule the spec marks
  ``inferred`` is a warning, one the user wrote an error), plus ``required`` and ``unique`` rules
  for every natural key, so a duplicate is a validation error and not a failed transform.

Imports only the core modules (:mod:`etl.dataset`, :mod:`etl.errors`).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path

import polars as pl

from etl.dataset import (
    ELEMENT,
    EXTRA,
    LINEAGE,
    PATCH,
    STAGED_EXTRA,
    XREF,
    Column,
    Dataset,
    Field,
    FieldType,
    ForeignKey,
    Level,
    Rule,
    Severity,
    Source,
    Table,
    ancestor_path,
    carried,
    check,
    one_of,
    required,
    unique,
)
from etl.errors import ConfigError
from etl.spec.model import ColumnSpec, LevelSpec, Spec, SpecFormatError, fresh_name

log = logging.getLogger(__name__)

#: Spec column type → (staged field type, target column type). ``numeric`` (a number beyond what a
#: bigint or a double holds exactly) is staged and loaded as text; its key stays in ``extra``, where
#: the export's number is kept as written.
TYPES: dict[str, tuple[FieldType, str]] = {
    "text": ("VARCHAR", "text"),
    "bigint": ("BIGINT", "bigint"),
    "boolean": ("BOOLEAN", "boolean"),
    "double precision": ("DOUBLE", "double precision"),
    "numeric": ("VARCHAR", "text"),
    "jsonb": ("JSON", "jsonb"),
    "integer": ("INTEGER", "integer"),
    "json": ("JSON", "json"),
    "text[]": ("VARCHAR[]", "text[]"),
    "bigint[]": ("BIGINT[]", "bigint[]"),
    "double precision[]": ("DOUBLE[]", "double precision[]"),
    "text[][]": ("VARCHAR[][]", "text[][]"),
    "bigint[][]": ("BIGINT[][]", "bigint[][]"),
}
#: The surrogate key column of a level whose spec has no natural key.
SURROGATE = "row_key"
#: Names a spec column cannot have: the staged lineage and carried columns, and ``extra``.
RESERVED = frozenset((*LINEAGE, STAGED_EXTRA, XREF, PATCH, EXTRA, "_type_errors", "_j", "_e", "_s"))


@dataclass(frozen=True, slots=True)
class _KeyCol:
    """A key column of a level's table: staged (a field or an inherited column) when ``strip`` is
    None, else the surrogate of the ancestor whose path is the row's ``_path`` less the
    ``strip`` suffixes (level paths, innermost first; none: the row's own surrogate)."""

    name: str
    type: str
    strip: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class _Plan:
    spec: LevelSpec
    level: Level
    relpath: str | None
    key: tuple[_KeyCol, ...]
    refs: tuple[_KeyCol, ...]  # the parent's key, as this level's columns
    columns: tuple[ColumnSpec, ...]  # the typed columns kept, under their field names


def _version(spec: Spec) -> str:
    return spec.version or "spec-" + hashlib.sha256(spec.to_toml().encode()).hexdigest()[:12]


def _relpath(lv: LevelSpec) -> str | None:
    """The level's path inside its parent's record, as :attr:`Level.path` wants it."""
    if lv.path == "":
        return None
    if not lv.path.endswith("[]"):
        raise ConfigError(f"level {lv.table}: path {lv.path!r} does not end in []")
    rel = lv.path
    if lv.parent:
        if not rel.startswith(lv.parent + "."):
            raise ConfigError(f"level {lv.table}: path {lv.path!r} is not inside its parent {lv.parent!r}")
        rel = rel[len(lv.parent) + 1:]
    rel = rel[:-2]
    if "[]" in rel:
        raise ConfigError(f"level {lv.table}: path {lv.path!r} crosses a list that is no level",
                          hint="add the enclosing list as a level of its own")
    return rel




def _representable(col: ColumnSpec) -> bool:
    """Whether a :class:`Field` key can name the column's JSON path (its keys are joined with dots
    and quoted in a JSON path)."""
    return bool(col.json) and all(part and part != ELEMENT and "." not in part and '"' not in part
                                  and "\\" not in part for part in col.json)


def _surrogate(path: pl.Expr) -> pl.Expr:
    return pl.concat_str([pl.col("_file"), pl.lit("#"), pl.col("_record").cast(pl.String), pl.lit(":"),
                          path])


def _ancestor_path(strip: tuple[str, ...]) -> pl.Expr:
    """``_path`` less the suffixes ``.<path>[i]`` of the levels in ``strip`` (innermost first):
    the path of the ancestor record (the rule :mod:`etl.validate` uses for parent rows)."""
    return ancestor_path(pl.col("_path"), *strip)


def read_dataset(path: Path, *, home: Path | None = None,
                 extend: Callable[[Dataset], Dataset] | None = None) -> Dataset:
    """The dataset the spec file ``path`` describes (:func:`to_dataset`), carrying the spec's text
    so a run staged with it keeps it. ``home``: the folder whose ``sql/<name>/`` holds post-load
    SQL (default: the spec file's own folder)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the spec {path}: {exc.strerror}", file=path,
                          hint="give a spec file written by `etl init`, or a dataset name") from None
    try:
        spec = Spec.from_toml(text)
    except SpecFormatError as exc:
        raise ConfigError(f"spec {path}: {exc}", file=path,
                          hint="see the README's 'Dataset specs' section for the format") from None
    return to_dataset(spec, root=home or path.parent, file=path.resolve(), extend=extend)


def to_dataset(spec: Spec, *, root: Path | None = None, file: Path | None = None,
               extend: Callable[[Dataset], Dataset] | None = None) -> Dataset:
    """The :class:`Dataset` that stages, checks, reshapes and loads exports ``spec`` describes.

    ``root``: the folder the spec was read from; its ``sql/<name>/`` folder, when there is one,
    holds the post-load SQL (as the repository's ``sql/<name>/`` does for the built-ins).
    ``file``: the spec's file, recorded in the runs staged with it. A spec with a ``hook`` (or
    given ``extend``) declares the staged levels only: ``extend(dataset)`` (the hook module's)
    adds the tables, the transform and whatever else the dataset has in code."""
    if spec.hook or extend is not None:
        return _hooked(spec, file, extend)
    plans: dict[str, _Plan] = {}
    by_path: dict[tuple[str, str], str] = {}
    sources: list[Source] = []
    rules: list[Rule] = []
    tables: list[Table] = []
    seen_levels: set[str] = set()
    for src in spec.sources:
        levels: list[Level] = []
        for lv in src.levels:
            if lv.table in seen_levels:
                raise ConfigError(f"two levels are called {lv.table!r}", hint="rename one table in the spec")
            seen_levels.add(lv.table)
            parent = plans[by_path[(src.name, lv.parent)]] if lv.parent is not None else None
            if lv.parent is not None and parent is None:
                raise ConfigError(f"level {lv.table}: parent {lv.parent!r} is no level of source {src.name}")
            plan = _plan(lv, parent, rules)
            plans[lv.table] = plan
            by_path[(src.name, lv.path)] = lv.table
            levels.append(plan.level)
            tables.append(_table(plan, parent))
            rules.extend(_rules(plan))
        sources.append(Source(src.name, tuple(src.patterns), tuple(levels)))
    sql_dir = root / "sql" / spec.name if root is not None else None
    return Dataset(
        name=spec.name,
        version=_version(spec),
        description=f"inferred from a JSON export by etl init ({len(tables)} tables)",
        sources=tuple(sources),
        transform=_transform(dict(plans)),
        tables=tuple(tables),
        rules=tuple(rules),
        sql_dir=sql_dir if sql_dir is not None and sql_dir.is_dir() else None,
        spec_text=spec.to_toml(),
        spec_file=file,
        default_source=Path(spec.root) if spec.root else None,
        drift={src.name: src.drift for src in spec.sources},
        notes={p.level.name: f"one row per record at {p.spec.path or 'the top'} of source "
                             f"{p.spec.table}" for p in plans.values()},
    )


def _hooked(spec: Spec, file: Path | None, extend: Callable[[Dataset], Dataset] | None) -> Dataset:
    """A spec's staged levels as they are declared (a level's name, its table, its parent and the
    fields it inherits; no keys or tables of the spec's own), extended by its hook."""
    if extend is None:
        try:
            extend = import_module(spec.hook).extend
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"spec {spec.name}: hook {spec.hook!r} cannot be used: {exc}",
                              hint="name an importable module that defines extend(dataset)") from None
    sources: list[Source] = []
    names: set[str] = set()
    for src in spec.sources:
        by_path: dict[str, str] = {}
        levels: list[Level] = []
        for lv in src.levels:
            name = lv.level or lv.table
            if name in names:
                raise ConfigError(f"spec {spec.name}: two levels are called {name!r}")
            names.add(name)
            for col in lv.columns:
                if col.type not in TYPES:
                    raise ConfigError(f"level {name}, column {col.name}: unknown type {col.type!r}")
            parent = by_path.get(lv.parent) if lv.parent is not None else None
            if lv.parent is not None and parent is None:
                raise ConfigError(f"level {name}: parent {lv.parent!r} is no level of source {src.name}")
            levels.append(Level(name, tuple(Field(c.name, ".".join(c.json), TYPES[c.type][0])
                                            for c in lv.columns),
                                path=_relpath(lv), parent=parent,
                                inherit=tuple((a, b) for a, b in lv.inherit), table=lv.table or None,
                                columns=tuple((a, b) for a, b in lv.into)))
            by_path[lv.path] = name
        sources.append(Source(src.name, tuple(src.patterns), tuple(levels), required=src.required,
                              on_bad_file="quarantine" if src.on_bad_file == "quarantine" else "fail"))
    base = Dataset(
        name=spec.name, version=_version(spec), description=spec.description, sources=tuple(sources),
        transform=lambda levels: dict(levels), tables=(), spec_text=spec.to_toml(), spec_file=file,
        drift={src.name: src.drift for src in spec.sources},
        default_source=Path(spec.root) if spec.root not in ("", ".") else None)
    return extend(base)


def _plan(lv: LevelSpec, parent: _Plan | None, rules: list[Rule]) -> _Plan:
    taken: set[str] = set(RESERVED)
    columns: list[ColumnSpec] = []
    for col in lv.columns:
        if col.type not in TYPES:
            raise ConfigError(f"level {lv.table}, column {col.name}: unknown type {col.type!r}",
                              hint=f"use one of {', '.join(TYPES)}")
        if not _representable(col):
            log.warning("level %s: column %s (JSON %s) cannot be staged by key; its value stays in extra",
                        lv.table, col.name, col.json)
            continue
        name = col.name if col.name not in RESERVED else col.name + "_"
        columns.append(ColumnSpec(fresh_name(name, taken), col.json, col.type, col.nulls, col.note))
    relpath = _relpath(lv)
    refs: list[_KeyCol] = []
    inherit: list[tuple[str, str]] = []
    if parent is not None:
        parent_refs = {r.name for r in parent.refs}
        for kc in parent.key:
            # the parent's own key column is named after the parent; one it holds of its own
            # parent's key keeps its name (it names that table already)
            name = fresh_name(kc.name if kc.name in parent_refs else f"{parent.level.name}_{kc.name}", taken)
            if kc.strip is None:
                inherit.append((kc.name, name))
                refs.append(_KeyCol(name, kc.type))
            else:
                assert relpath is not None
                refs.append(_KeyCol(name, kc.type, (relpath, *kc.strip)))
    typed = {c.name: c for c in columns}
    by_spec = {orig.name: kept for orig, kept in zip(
        [c for c in lv.columns if _representable(c)], columns, strict=True)}
    key: list[_KeyCol] = []
    if lv.key.surrogate or not lv.key.columns or any(c not in by_spec for c in lv.key.columns):
        if not lv.key.surrogate:
            log.warning("level %s: key %s names columns it has not: a surrogate key instead",
                        lv.table, lv.key.columns)
        key.append(_KeyCol(fresh_name(SURROGATE, taken), "text", ()))
    else:
        naturals = [by_spec[c].name for c in lv.key.columns]
        if lv.key.within_parent:
            key.extend(refs)
        key.extend(_KeyCol(n, TYPES[typed[n].type][1]) for n in naturals)
    fields = tuple(Field(c.name, ".".join(c.json), TYPES[c.type][0]) for c in columns)
    level = Level(lv.table, fields, path=relpath, parent=parent.level.name if parent else None,
                  inherit=tuple(inherit), table=lv.table)
    return _Plan(lv, level, relpath, tuple(key), tuple(refs), tuple(columns))


def _table(plan: _Plan, parent: _Plan | None) -> Table:
    key_names = {k.name for k in plan.key}
    cols: list[Column] = [Column(k.name, k.type, False) for k in plan.key if k.strip is not None]
    cols += [Column(r.name, r.type, False) for r in plan.refs if r.name not in {c.name for c in cols}]
    cols += [Column(c.name, TYPES[c.type][1], c.name not in key_names) for c in plan.columns]
    cols.append(Column(EXTRA, "json", False))
    fks: tuple[ForeignKey, ...] = ()
    if parent is not None:
        fks = (ForeignKey(tuple(r.name for r in plan.refs), parent.level.name,
                          tuple(k.name for k in parent.key)),)
    return Table(plan.level.name, tuple(cols), tuple(k.name for k in plan.key), foreign_keys=fks)


def _rules(plan: _Plan) -> list[Rule]:
    name = plan.level.name
    kept = {c.name for c in plan.columns}
    renamed = {orig.name: c.name for orig, c in zip(
        [c for c in plan.spec.columns if _representable(c)], plan.columns, strict=True)}
    out: list[Rule] = []
    naturals = [k.name for k in plan.key if k.strip is None and k.name in kept]
    if naturals:
        out.append(required(name, *naturals))
    for r in plan.spec.rules:
        column = renamed.get(r.column)
        if column is None:
            log.warning("level %s: rule %s on %s, a column it has not; left out", name, r.kind, r.column)
            continue
        if r.severity == "off":
            continue
        severity: Severity = "warning" if r.severity == "warning" or (r.inferred and not r.severity) \
            else "error"
        if r.kind == "required":
            if column not in naturals:
                out.append(required(name, column, severity=severity))
        elif r.kind == "one_of":
            ctype = next(c.type for c in plan.columns if c.name == column)
            if ctype in ("jsonb", "numeric"):
                log.warning("level %s: one_of on %s column %s left out", name, ctype, column)
                continue
            out.append(one_of(name, column, tuple(r.values), severity=severity))
        else:
            raise ConfigError(f"level {name}: unknown rule kind {r.kind!r}", hint="use required or one_of")
    if naturals and not plan.spec.key.within_parent:
        out.append(unique(name, *naturals))
    elif naturals:
        # unique within the parent record: its path is the row's less the level's own suffix
        parent_path = _ancestor_path((plan.relpath,) if plan.relpath else ())
        cols = tuple(naturals)
        out.append(check("key_unique", name,
                         lambda: ~pl.struct("_file", "_record", parent_path, *cols).is_duplicated(),
                         f"({', '.join(cols)}) must be unique within the parent record", columns=cols))
    return out


def _transform(plans: Mapping[str, _Plan]) -> Callable[[Mapping[str, pl.LazyFrame]], dict[str, pl.LazyFrame]]:
    def transform(levels: Mapping[str, pl.LazyFrame]) -> dict[str, pl.LazyFrame]:
        out: dict[str, pl.LazyFrame] = {}
        for name, plan in plans.items():
            computed = {k.name: _surrogate(_ancestor_path(k.strip))
                        for k in (*plan.key, *plan.refs) if k.strip is not None}
            staged = [r.name for r in plan.refs if r.strip is None]
            staged += [k.name for k in plan.key if k.strip is None and k.name not in staged]
            own = [c.name for c in plan.columns if c.name not in staged]
            out[name] = levels[name].select(carried(), *staged, *own, **computed)
        return out
    return transform
