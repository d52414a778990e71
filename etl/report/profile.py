"""Column profiles of a staged run's Parquet: null share, distinct count, min/max, a histogram.

DuckDB reads the chunks a column at a time (Parquet is columnar) under a memory limit, spilling
to a temporary folder when a distinct count outgrows it, so the profile of a large run costs
two scans per table and bounded memory:

1. one aggregate per column: non-null count, distinct count, min and max (finite values for
   floats; lengths for text and lists, which decide the histogram's bins);
2. one ``histogram()`` per column over its bucket index: equal-width bins of the value
   (numbers), of the length (text with many values, lists), or the values themselves
   (booleans and text with few distinct values).
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from etl.staging_fs import RemotePath, StagePath

log = logging.getLogger(__name__)

#: Bins of a numeric or length histogram.
BINS = 20
#: Text with at most this many distinct values gets a bar per value instead of length bins.
CATEGORIES = 12
#: Characters of a text min/max kept in the profile.
SHOWN_CHARS = 48
#: Lineage and bookkeeping columns of the staged levels: not data, not profiled.
SKIPPED = frozenset({"_file", "_record", "_path", "_index", "_type_errors"})

Kind = Literal["number", "boolean", "text", "list", "time", "other"]

_NUMBERS = {"Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32", "UInt64", "Float32", "Float64"}


def kind_of(dtype: str) -> Kind:
    """What kind of profile a column of Polars dtype ``dtype`` (as the manifest spells it) gets."""
    if dtype in _NUMBERS:
        return "number"
    if dtype == "Boolean":
        return "boolean"
    if dtype == "String":
        return "text"
    if dtype.startswith("List("):
        return "list"
    if dtype == "Date" or dtype.startswith("Datetime"):
        return "time"
    return "other"


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _stats_exprs(n: int, col: str, kind: Kind) -> list[str]:
    c = _q(col)
    out = [f"count({c}) AS nn{n}", f"count(DISTINCT {c}) AS d{n}"]
    if kind == "number":
        finite = f"FILTER (WHERE isfinite({c}::DOUBLE))"
        out += [f"min({c}) {finite} AS lo{n}", f"max({c}) {finite} AS hi{n}"]
    elif kind == "text":
        out += [f"left(min({c}), {SHOWN_CHARS + 1}) AS lo{n}", f"left(max({c}), {SHOWN_CHARS + 1}) AS hi{n}",
                f"min(length({c})) AS llo{n}", f"max(length({c})) AS lhi{n}"]
    elif kind == "list":
        out += [f"min(len({c})) AS lo{n}", f"max(len({c})) AS hi{n}"]
    elif kind == "boolean":
        out += [f"min({c}::INT) AS lo{n}", f"max({c}::INT) AS hi{n}"]
    elif kind == "time":
        out += [f"min({c})::VARCHAR AS lo{n}", f"max({c})::VARCHAR AS hi{n}"]
    return out


def _bins(lo: float, hi: float, *, integral: bool) -> tuple[float, int]:
    """Bin width and count for values in [lo, hi]: one bin per integer when the range is small."""
    if integral and hi - lo + 1 <= BINS:
        return 1.0, int(hi - lo + 1)
    if hi <= lo:
        return 1.0, 1
    return (hi - lo) / BINS, BINS


def _bucket_expr(value: str, lo: float, width: float, bins: int) -> str:
    return f"least(greatest(floor(({value} - {lo!r}) / {width!r}), 0), {bins - 1})::INT"


def _plan_histogram(col: str, kind: Kind, dtype: str,
                    stats: Mapping[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """The expression whose ``histogram()`` makes the column's bars, and how to read them back."""
    c = _q(col)
    if stats["non_null"] == 0:
        return None
    if kind == "boolean" or (kind == "text" and stats["distinct"] <= CATEGORIES):
        return f"histogram({c})", {"type": "values"}
    if kind == "number":
        lo, hi = stats["min"], stats["max"]
        if lo is None or hi is None:
            return None
        integral = not dtype.startswith("Float")
        width, bins = _bins(float(lo), float(hi), integral=integral)
        value = f"{c}::DOUBLE"
        return (f"histogram({_bucket_expr(value, float(lo), width, bins)}) FILTER (WHERE isfinite({value}))",
                {"type": "bins", "of": "value", "lo": float(lo), "width": width, "bins": bins,
                 "integral": integral})
    if kind in ("text", "list"):
        lo, hi = ((stats["min_length"], stats["max_length"]) if kind == "text"
                  else (stats["min"], stats["max"]))
        if lo is None or hi is None:
            return None
        width, bins = _bins(float(lo), float(hi), integral=True)
        fn = "length" if kind == "text" else "len"
        return (f"histogram({_bucket_expr(f'{fn}({c})', float(lo), width, bins)})",
                {"type": "bins", "of": "length", "lo": float(lo), "width": width, "bins": bins,
                 "integral": True})
    return None


def _bars(counts: Mapping[Any, int] | None, plan: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The histogram as bars: ``label`` (a value, or a bin's range) and ``count``, in order."""
    counts = counts or {}
    if plan["type"] == "values":
        items = sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))
        return [{"label": _shown(k), "count": int(v)} for k, v in items]
    bars = []
    for i in range(plan["bins"]):
        start = plan["lo"] + i * plan["width"]
        end = start + plan["width"]
        if plan["integral"] and plan["width"] == 1.0:
            label = f"{_number(start)}"
        else:
            label = f"{_number(start)} \u2013 {_number(end)}"
        bars.append({"label": label, "count": int(counts.get(i, 0))})
    return bars


def _number(x: float) -> str:
    if float(x).is_integer():
        return f"{int(x):,}"
    return f"{x:,.4g}"


def _shown(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return _number(value) if math.isfinite(value) else str(value)
    text = str(value)
    if not text:
        return '""'
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "…"


def _sql_list(paths: Sequence[StagePath]) -> str:
    """A DuckDB list literal of file names (quotes doubled: any path is text, never SQL)."""
    return "[" + ", ".join("'" + str(p).replace("'", "''") + "'" for p in paths) + "]"


def profile_files(con: Any, files: Sequence[StagePath], schema: Mapping[str, str]) -> dict[str, Any]:
    """Profile the Parquet ``files`` of one table or level, whose columns and Polars dtypes are
    ``schema``: ``{"rows": N, "columns": [{name, dtype, kind, null_share, distinct, min, max,
    histogram: {of, bars}}]}`` (lineage columns left out)."""
    columns = [(name, dtype, kind_of(dtype)) for name, dtype in schema.items() if name not in SKIPPED]
    if not files:
        return {"rows": 0, "columns": [_column(name, dtype, kind, 0, {}, None)
                                       for name, dtype, kind in columns]}
    remote = [f for f in files if isinstance(f, RemotePath)]
    if remote:  # a remote staging root: DuckDB reads a pyarrow dataset on its filesystem
        import pyarrow.dataset as pads

        con = con.cursor()  # a connection of its own: the last profile's results stay unread
        con.register("_profiled", pads.dataset([f.path for f in remote], filesystem=remote[0].fs,
                                               format="parquet"))
        source = "_profiled"
    else:
        source = f"read_parquet({_sql_list(files)})"
    exprs = ["count(*) AS n"]
    for n, (name, _, kind) in enumerate(columns):
        exprs += _stats_exprs(n, name, kind)
    cur = con.execute(f"SELECT {', '.join(exprs)} FROM {source}")
    names = [d[0] for d in cur.description]
    row = dict(zip(names, cur.fetchone(), strict=True))
    rows = int(row["n"])
    stats = []
    for n, (_name, _dtype, _kind) in enumerate(columns):
        stats.append({"non_null": int(row[f"nn{n}"]), "distinct": int(row[f"d{n}"]),
                      "min": row.get(f"lo{n}"), "max": row.get(f"hi{n}"),
                      "min_length": row.get(f"llo{n}"), "max_length": row.get(f"lhi{n}")})
    plans = [_plan_histogram(name, kind, dtype, s)
             for (name, dtype, kind), s in zip(columns, stats, strict=True)]
    hist_exprs = [f"{p[0]} AS h{n}" for n, p in enumerate(plans) if p is not None]
    hist: dict[str, Any] = {}
    if hist_exprs and rows:
        cur = con.execute(f"SELECT {', '.join(hist_exprs)} FROM {source}")
        hist = dict(zip([d[0] for d in cur.description], cur.fetchone(), strict=True))
    out = []
    for n, ((name, dtype, kind), s, plan) in enumerate(zip(columns, stats, plans, strict=True)):
        histogram = None
        if plan is not None:
            histogram = {"of": plan[1].get("of", "value"), "bars": _bars(hist.get(f"h{n}"), plan[1])}
        out.append(_column(name, dtype, kind, rows, s, histogram))
    return {"rows": rows, "columns": out}


def _column(name: str, dtype: str, kind: Kind, rows: int, stats: Mapping[str, Any],
            histogram: dict[str, Any] | None) -> dict[str, Any]:
    non_null = int(stats.get("non_null", 0))
    lo, hi = stats.get("min"), stats.get("max")
    if kind == "boolean":
        lo = None if lo is None else bool(lo)
        hi = None if hi is None else bool(hi)
    return {
        "name": name, "dtype": dtype, "kind": kind,
        "nulls": rows - non_null, "null_share": (rows - non_null) / rows if rows else 0.0,
        "distinct": int(stats.get("distinct", 0)),
        # lists: the shortest and longest list
        "min": None if lo is None else _shown(lo), "max": None if hi is None else _shown(hi),
        "histogram": histogram,
    }


def profile_all(targets: Iterable[tuple[str, Sequence[StagePath], Mapping[str, str]]], *,
                memory_limit: str = "256MB", threads: int | None = None) -> dict[str, Any]:
    """Profile each ``(name, files, schema)`` with one DuckDB connection limited to
    ``memory_limit`` (spilling to a temporary folder beyond it)."""
    import duckdb

    with tempfile.TemporaryDirectory(prefix="etl-report-") as spill:
        con = duckdb.connect(config={"memory_limit": memory_limit, "temp_directory": spill,
                                     "preserve_insertion_order": False,
                                     **({"threads": threads} if threads else {})})
        try:
            out = {}
            for name, files, schema in targets:
                out[name] = profile_files(con, files, schema)
                log.debug("profiled %s: %d rows, %d columns", name, out[name]["rows"],
                          len(out[name]["columns"]))
            return out
        finally:
            con.close()
