"""JSON texts as PostgreSQL's ``jsonb`` prints them.

PostgreSQL stores a jsonb value parsed and prints it in one form of its own: object keys ordered
by their length in bytes and then by their bytes, one member per key (of keys written twice, the
last), ``", "`` between members and elements and ``": "`` after keys, numbers as ``numeric``
prints them (never an exponent: ``1.5e1`` is ``15``, ``1.50e1`` is ``15.0``, ``1e-2`` is
``0.01``; zero without a minus sign) and strings with its own escapes (``\\b \\f \\n \\r \\t
\\" \\\\``, other control characters as ``\\u00XX``, everything else as the character itself).

:func:`pg_texts` rewrites staged JSON texts into that form, so the checksum of a staged jsonb
column equals the checksum of the same column read back from the database with no work on the
read-back side (see :func:`etl.run.frames_checksum`). The rewrite is a byte scan in C
(``etl/_jsonb.c``); this module's :func:`pg_form` is the same rule in Python, used when the
extension is not built. A text either cannot rewrite (not JSON, a ``\\u0000`` escape or a lone
surrogate, a number beyond what numeric holds, nesting beyond 1,000 levels) is kept as it is:
PostgreSQL would refuse it or print it in a way not foreseen here, and the comparison falls back
to comparing values by meaning.
"""

from __future__ import annotations

import importlib
import json
import re
from typing import Any

import polars as pl
import pyarrow as pa

try:  # by name: the package itself (etl/__init__) is above this module's layer
    _native: Any = importlib.import_module("etl._jsonb")
except ImportError:  # pragma: no cover - the extension is optional
    _native = None

#: A JSON number token, split into its parts.
_NUMBER = re.compile(r"(-?)(0|[1-9][0-9]*)(?:\.([0-9]+))?(?:[eE]([+-]?[0-9]+))?\Z")
_ESCAPES = {"\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", '"': '\\"', "\\": "\\\\"}
_MAX_DEPTH = 1000


class _Pairs(list[Any]):
    """An object's members as written (key, value), duplicates kept."""


class _Number(str):
    """A number token as it was written (json's parse hooks hand it over unparsed)."""


class _Refused(ValueError):
    """A text the rule does not rewrite (kept as it is)."""


def _refuse(_: str) -> Any:
    raise _Refused("NaN and Infinity are not JSON")


def numeric_text(token: str) -> str:
    """A JSON number token as PostgreSQL's ``numeric`` prints it."""
    m = _NUMBER.match(token)
    if m is None:
        raise _Refused(f"not a JSON number: {token!r}")
    sign, whole, frac, exp = m.group(1), m.group(2), m.group(3) or "", int(m.group(4) or 0)
    digits = whole + frac
    point = len(whole) + exp
    scale = max(0, len(frac) - exp)
    if point > 131072 or scale > 16383:
        raise _Refused("numeric holds 131,072 digits before the point and 16,383 after")
    head = (digits[:point] + "0" * (point - len(digits))).lstrip("0") if point > 0 else ""
    text = head or "0"
    if scale:
        text += "." + ("0" * -point + digits if point < 0 else digits[point:]).ljust(scale, "0")[:scale]
    return text if not sign or set(digits) <= {"0"} else "-" + text


def _string(s: str) -> str:
    if "\x00" in s or any(0xD800 <= ord(ch) < 0xE000 for ch in s):
        raise _Refused("jsonb refuses \\u0000 and lone surrogates")
    return '"' + "".join(_ESCAPES.get(ch) or (f"\\u{ord(ch):04x}" if ch < " " else ch) for ch in s) + '"'


def _write(value: Any, depth: int = 0) -> str:
    if depth >= _MAX_DEPTH:
        raise _Refused("nested too deep")
    if isinstance(value, _Number):
        return numeric_text(value)
    if isinstance(value, str):
        return _string(value)
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "null"
    if isinstance(value, _Pairs):
        return _object(value, depth)
    return "[" + ", ".join(_write(v, depth + 1) for v in value) + "]"


def _object(pairs: _Pairs, depth: int) -> str:
    last: dict[str, Any] = {}
    for key, v in pairs:  # pairs as written: the last of a key wins
        last[key] = v
    keys = sorted(last, key=lambda k: (len(k.encode("utf-8", "surrogatepass")),
                                       k.encode("utf-8", "surrogatepass")))
    return "{" + ", ".join(_string(k) + ": " + _write(last[k], depth + 1) for k in keys) + "}"


def pg_form(text: str) -> str:
    """``text`` as PostgreSQL's jsonb prints it; ``text`` itself when the rule does not apply."""
    try:
        value = json.loads(text, parse_float=_Number, parse_int=_Number, parse_constant=_refuse,
                           object_pairs_hook=_Pairs)
        return _write(value)
    except (ValueError, RecursionError):
        return text


def pg_texts(texts: pl.Series) -> pl.Series:
    """A String column of JSON texts in PostgreSQL's jsonb form (nulls stay null)."""
    if texts.len() == 0:
        return texts
    if _native is None:
        return texts.map_elements(pg_form, return_dtype=pl.String())
    arr = texts.to_arrow().cast(pa.large_string())
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    validity, offsets, data = arr.buffers()
    offsets_np = memoryview(offsets)[arr.offset * 8:(arr.offset + len(arr) + 1) * 8]
    out_data, out_offsets = _native.pg_text(data if data is not None else b"", offsets_np)
    if validity is not None and arr.offset:
        arr_v = pa.array(arr.is_valid())
        validity = arr_v.buffers()[1]
    out = pa.LargeStringArray.from_buffers(len(arr), pa.py_buffer(out_offsets), pa.py_buffer(out_data),
                                           validity if arr.null_count else None, arr.null_count)
    series = pl.Series(texts.name, out)
    return series.cast(pl.String())
