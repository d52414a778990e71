"""Built-in ``storable`` rules: what validation passes, PostgreSQL accepts.

For every level with a home table (:attr:`etl.dataset.Level.table`), each staged field lands in
the home table's column of the same name (and ``_extra`` in ``extra``). Where the column cannot
hold every value the field's staged type can (a BIGINT in an ``integer`` column, NaN in an
integer column, text in ``jsonb``, a date before 4713 BC, NULL in a NOT NULL column), a rule
``<level>.<column>.storable`` rejects the rows whose value the column would refuse, so they are
kept in ``rejects/`` with the reason instead of stopping the load at COPY.

NUL characters are not a rule: the built-in cleaning step ``strip_nul`` removes them from every
text value first (see :func:`etl.dataset.effective_cleaning`). Invalid UTF-8 and lone UTF-16
surrogates never get this far: staging refuses such a file (DuckDB's JSON reader does), naming it.

>>> [r.name for r in storable_rules(get_dataset("mids"))][:2]   # doctest: +SKIP
['archetypes.class_name.storable', 'archetypes.display_name.storable']
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from decimal import Decimal, InvalidOperation

import polars as pl

from etl.dataset import EXTRA, STAGED_EXTRA, Column, Dataset, Rule, Table

#: PostgreSQL's integer types and the values they hold.
INT_RANGES: dict[str, tuple[int, int]] = {
    "smallint": (-(2**15), 2**15 - 1),
    "integer": (-(2**31), 2**31 - 1),
    "bigint": (-(2**63), 2**63 - 1),
}
#: PostgreSQL's dates: 4714-11-24 BC (proleptic Gregorian, ISO year -4713) to 5874897-12-31 AD,
#: as days since 1970-01-01 (the end is exclusive).
DATE_MIN_DAYS = -2_440_588
DATE_END_DAYS = 2_145_042_906
#: PostgreSQL's earliest timestamp (4714-11-24 00:00 BC, UTC) in microseconds since 1970; the
#: latest (294276 AD) is beyond what a Polars microsecond timestamp or a parsed date reaches.
TIMESTAMP_MIN_US = -210_866_803_200_000_000
#: What jsonb's numbers (``numeric``) hold: digits before and after the decimal point.
NUMERIC_INT_DIGITS = 131_072
NUMERIC_FRAC_DIGITS = 16_383

_INTEGERS = ("INTEGER", "BIGINT")
_DATE_FORMATS = ("%Y-%m-%d",)
_TIMESTAMP_FORMATS = ("%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S",
                      "%Y-%m-%d %H:%M:%S", "%Y-%m-%d")
#: JSON text worth a close look: NaN/Infinity (DuckDB's reader takes them, any case; PostgreSQL's
#: json does not), and for jsonb NUL escapes, big exponents, and texts long enough to hold a
#: number of more digits than numeric has. Each is a cheap vectorized test; NaN/Infinity are
#: looked for as letters first (fast), then as values on the few texts holding the letters.
_NAN_LETTERS = r"(?i)nan|inf"
_NAN_VALUE = r"(?i)[:,\[]\s*-?(?:nan|inf)"
_BIG_EXPONENT = r"[eE][+-]?[0-9]{4,}"


def _suspects(s: pl.Series, jsonb: bool) -> pl.Series:
    letters = s.str.contains(_NAN_LETTERS).fill_null(False)
    out = pl.Series(s.name, [False] * s.len(), dtype=pl.Boolean())
    if letters.any():
        idx = letters.arg_true()
        hit = s.gather(idx).str.contains(_NAN_VALUE).fill_null(False)
        out = out.scatter(idx.filter(hit), True)
    if jsonb:
        out = (out | s.str.contains("\\u0000", literal=True) | s.str.contains(_BIG_EXPONENT)
               | (s.str.len_bytes() > NUMERIC_FRAC_DIGITS)).fill_null(False)
    return out


Check = tuple[Callable[[pl.Expr], pl.Expr], str]


# ------------------------------------------------------------------------------ JSON for PostgreSQL


class _Refused(ValueError):
    pass


def _number(text: str) -> str:
    try:
        d = Decimal(text)
    except InvalidOperation:
        raise _Refused(f"number {text[:20]}… is not a number") from None
    _sign, digits, exponent = d.as_tuple()
    assert isinstance(exponent, int)
    before = max(len(digits) + exponent, 0)
    after = max(-exponent, 0)
    if before > NUMERIC_INT_DIGITS or after > NUMERIC_FRAC_DIGITS:
        raise _Refused(f"number {text[:20]}{'…' if len(text) > 20 else ''} is beyond numeric's range")
    return text


def _constant(text: str) -> None:
    raise _Refused(f"{text} is not JSON")


def json_refusal(text: str, *, jsonb: bool) -> str | None:
    """Why PostgreSQL's ``jsonb`` (or, with ``jsonb=False``, ``json``) would refuse ``text``,
    or None when it takes it. ``json`` checks the syntax (NaN and Infinity are not JSON) and
    UTF-16 surrogate pairs; ``jsonb`` also refuses ``\\u0000`` and numbers beyond ``numeric``'s
    range."""
    try:
        doc = json.loads(text, parse_float=_number if jsonb else str,
                         parse_int=_number if jsonb else str, parse_constant=_constant)
    except _Refused as exc:
        return str(exc)
    except (ValueError, RecursionError) as exc:
        return f"not valid JSON ({exc})"
    try:
        decoded = json.dumps(doc, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return "a string holds a lone UTF-16 surrogate (\\ud800-\\udfff)"
    if jsonb and b"\\u0000" in decoded:
        return "a string holds NUL (\\u0000), which jsonb cannot hold"
    return None


def _json_ok_batch(jsonb: bool, suspects_only: bool) -> Callable[[pl.Series], pl.Series]:
    def ok(s: pl.Series) -> pl.Series:
        look = _suspects(s, jsonb) if suspects_only else s.is_not_null()
        out = pl.Series(s.name, [True] * s.len(), dtype=pl.Boolean())
        if not look.any():
            return out
        idx = look.arg_true()
        bad = [i for i, text in zip(idx.to_list(), s.gather(idx).to_list(), strict=True)
               if json_refusal(text, jsonb=jsonb) is not None]
        return out.scatter(bad, False) if bad else out

    return ok


def suspect_json(e: pl.Expr, jsonb: bool) -> pl.Expr:
    """:func:`_suspects` as an expression (no Python per batch): true where a staged JSON text
    may hold what PostgreSQL refuses, so only those are parsed again (:func:`refused_json`)."""
    out = e.str.contains(_NAN_LETTERS) & e.str.contains(_NAN_VALUE)
    if jsonb:
        out = (out | e.str.contains("\\u0000", literal=True) | e.str.contains(_BIG_EXPONENT)
               | (e.str.len_bytes() > NUMERIC_FRAC_DIGITS))
    return out.fill_null(False)


def refused_json(jsonb: bool) -> Callable[[pl.Series], pl.Series]:
    """Per text of ``s``: whether PostgreSQL refuses it (``s`` holds only suspects)."""
    def refused(s: pl.Series) -> pl.Series:
        return pl.Series(s.name, [t is None or json_refusal(t, jsonb=jsonb) is not None
                                  for t in s.to_list()], dtype=pl.Boolean())

    return refused


# ------------------------------------------------------------------------------ the checks


def _int_range(pg: str) -> Check:
    lo, hi = INT_RANGES[pg]
    return (lambda e: e.is_between(lo, hi),
            f"a whole number within {pg}'s range [{lo}, {hi}]")


def _finite_int(pg: str) -> Check:
    lo, hi = INT_RANGES[pg]
    return (lambda e: e.is_finite() & e.is_between(float(lo), float(hi)),
            f"a finite number (not NaN or ±infinity) within {pg}'s range [{lo}, {hi}]")


def _date() -> Check:
    def ok(e: pl.Expr) -> pl.Expr:
        parsed = pl.coalesce([e.str.to_date(f, strict=False) for f in _DATE_FORMATS]).cast(pl.Int32)
        return parsed.is_null() | parsed.is_between(DATE_MIN_DAYS, DATE_END_DAYS - 1)

    return ok, "a date PostgreSQL can hold (4714-11-24 BC to 5874897-12-31 AD)"


def _timestamp() -> Check:
    def ok(e: pl.Expr) -> pl.Expr:
        parsed = pl.coalesce([e.str.strptime(pl.Datetime("us"), f, strict=False)
                              for f in _TIMESTAMP_FORMATS]).cast(pl.Int64)
        return parsed.is_null() | (parsed >= TIMESTAMP_MIN_US)

    return ok, "a time PostgreSQL can hold (from 4714-11-24 BC)"


def _json(jsonb: bool, *, suspects_only: bool) -> Check:
    fn = _json_ok_batch(jsonb, suspects_only)
    what = ("JSON that jsonb accepts (no NaN or Infinity, no \\u0000, numbers within numeric's "
            "range)" if jsonb else "JSON that PostgreSQL accepts (no NaN or Infinity)")
    return (lambda e: e.map_batches(fn, return_dtype=pl.Boolean(), is_elementwise=True), what)


def _elementwise(check: Check) -> Check:
    fn, what = check
    return (lambda e: e.list.eval(fn(pl.element()).fill_null(True)).list.all(),
            f"a list of which every element is {what}")


def column_checks(field_type: str, column: Column) -> list[Check]:
    """What a value of the staged ``field_type`` must be to go into ``column`` (NOT NULL aside)."""
    pg = column.type
    base_field, base_pg = field_type.replace("[]", ""), pg.replace("[]", "")
    depth = field_type.count("[]")
    if depth != pg.count("[]") and not (depth == 2 and pg.endswith("[]")):
        return []
    check: Check | None = None
    if base_pg in INT_RANGES and base_field in _INTEGERS and not (
            base_pg == "bigint" or (base_pg == "integer" and base_field == "INTEGER")):
        check = _int_range(base_pg)
    elif base_pg in INT_RANGES and base_field == "DOUBLE":
        check = _finite_int(base_pg)
    elif base_pg in ("jsonb", "json") and base_field in ("JSON", "VARCHAR") and depth == 0:
        # Staged JSON was parsed by DuckDB already (syntax, surrogates), but DuckDB takes NaN
        # and Infinity, which PostgreSQL refuses; jsonb has limits of its own. Only suspicious
        # texts are parsed again. Text (VARCHAR) must be JSON at all.
        check = _json(base_pg == "jsonb", suspects_only=base_field == "JSON")
    elif base_pg == "date" and base_field == "VARCHAR":
        check = _date()
    elif base_pg == "timestamptz" and base_field == "VARCHAR":
        check = _timestamp()
    if check is None:
        return []
    for _ in range(depth):
        check = _elementwise(check)
    return [check]


def _rule(level: str, table: Table, staged: str, field_type: str, column: Column) -> Rule | None:
    checks = column_checks(field_type, column)
    not_null = not column.nullable
    if not checks and not not_null:
        return None
    target = f"{table.name}.{column.name} ({column.type}{'' if column.nullable else ' NOT NULL'})"
    parts = (["not be NULL"] if not_null else []) + [f"be {what}" for _, what in checks]
    message = f"{staged} must {' and '.join(parts)} to be stored in {target}"

    base_pg = column.type
    if field_type == "JSON" and base_pg in ("json", "jsonb"):
        # Staged JSON: a native test finds the few texts worth parsing again, and only those
        # are parsed (the rule's recheck, on the rows it flagged). A Python function over every
        # batch of the wide _extra texts held them all at once (effects x5: +170 MB).
        jsonb = base_pg == "jsonb"

        def suspect_free() -> pl.Expr:
            ok = ~suspect_json(pl.col(staged), jsonb)
            return (ok & pl.col(staged).is_not_null()) if not_null else ok

        return Rule(f"{level}.{column.name}.storable", level, "storable", (staged,), "error",
                    expr=suspect_free, message=message, recheck=refused_json(jsonb))

    def passes() -> pl.Expr:
        e = pl.col(staged)
        ok = pl.all_horizontal([fn(e).fill_null(True) for fn, _ in checks]) if checks else pl.lit(True)
        return (ok & e.is_not_null()) if not_null else ok

    return Rule(f"{level}.{column.name}.storable", level, "storable", (staged,), "error",
                expr=passes, message=message)


def storable_rules(dataset: Dataset) -> tuple[Rule, ...]:
    """The built-in ``storable`` rules of ``dataset``: one per (level, home-table column) whose
    column could refuse a value of the field's staged type. Levels without a home table get none."""
    return tuple(_rules(dataset))


def _rules(dataset: Dataset) -> Iterator[Rule]:
    for lvl in dataset.levels.values():
        if lvl.table is None:
            continue
        table = dataset.table(lvl.table)
        columns = {c.name: c for c in table.columns}
        staged = [(f.name, f.name, f.type) for f in lvl.fields if f.name != STAGED_EXTRA]
        if EXTRA in columns:
            staged.append((STAGED_EXTRA, EXTRA, "JSON"))
        for name, column, type_ in staged:
            if column in columns:
                rule = _rule(lvl.name, table, name, type_, columns[column])
                if rule is not None:
                    yield rule

