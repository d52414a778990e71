"""Duplicated keys in a JSON object: the last one wins, everywhere.

``{"a": 1, "a": 2}`` is ``{"a": 2}`` to Python's json, orjson and JavaScript; DuckDB's JSON
functions read it as ``1``, and a byte scan of the text sees both. So before a batch of records is
parsed, the records holding an object with a key twice are rewritten with the last value of each
key (numbers keep their text as written: ``1.00000000000000000001`` is not rounded), and counted:
the manifest's ``duplicate_keys`` says how many records had them, with the first few named.

Finding them is a byte scan in C (:func:`etl.stage._extra.dup_keys`); a record it flags (or
every record, when the extension is not built) is checked with a full parse. Example::

    >>> from etl.stage.dupkeys import dedupe_text
    >>> dedupe_text('{"a": 1, "b": [{"x": 1, "x": 2.50}], "a": 3}')
    '{"a":3,"b":[{"x":2.50}]}'
    >>> dedupe_text('{"a": 1}') is None
    True
"""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np
import pyarrow as pa

try:
    from etl.stage import _extra as _native  # type: ignore[attr-defined]
except ImportError:  # not built: every record is checked in Python (slower)
    _native = None

log = logging.getLogger(__name__)

#: How many records with duplicated keys the manifest names (the count is always whole).
EXAMPLES = 10


class _Raw(str):
    """A number's text as the export wrote it."""


class _Pairs(list[tuple[str, Any]]):
    """An object's members in order, duplicates included."""


def _parse(text: str) -> Any:
    return json.loads(text, object_pairs_hook=_Pairs, parse_int=_Raw, parse_float=_Raw,
                      parse_constant=_Raw)


def _has_dup(value: Any) -> bool:
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, _Pairs):
            if len({k for k, _ in v}) != len(v):
                return True
            stack.extend(x for _, x in v)
        elif isinstance(v, list):
            stack.extend(v)
    return False


def _dump(value: Any, out: list[str]) -> None:
    if isinstance(value, _Pairs):
        members: dict[str, Any] = {}
        for k, v in value:
            members[k] = v  # the last value, at the key's first place (as json.loads gives it)
        out.append("{")
        for i, (k, v) in enumerate(members.items()):
            if i:
                out.append(",")
            out.append(json.dumps(k))
            out.append(":")
            _dump(v, out)
        out.append("}")
    elif isinstance(value, list):
        out.append("[")
        for i, v in enumerate(value):
            if i:
                out.append(",")
            _dump(v, out)
        out.append("]")
    elif isinstance(value, _Raw):
        out.append(str(value))
    else:
        # ASCII with escapes: a lone surrogate (which json reads) stays an escape, as written,
        # never a character UTF-8 cannot hold
        out.append(json.dumps(value))


def dedupe_text(text: str) -> str | None:
    """``text`` (one JSON value) with each object's last value of a duplicated key only, compact;
    None when no object in it holds a key twice."""
    value = _parse(text)
    if not _has_dup(value):
        return None
    out: list[str] = []
    _dump(value, out)
    return "".join(out)


def _candidates(texts: pa.Array) -> list[int]:
    if _native is None:
        return list(range(len(texts)))
    arr = texts.cast(pa.large_string())
    bufs = arr.buffers()
    offsets = np.frombuffer(bufs[1], dtype=np.int64)[arr.offset: arr.offset + len(arr) + 1]
    found: list[int] = _native.dup_keys(bufs[2] if bufs[2] is not None else b"", offsets)
    return found


def last_wins(records: pa.Table) -> tuple[pa.Table, list[tuple[str, int]]]:
    """``records`` (``_file, _record, json``) with every record that holds a key twice rewritten
    (the last value wins), and those records' (file, record). Text that is not valid JSON is left
    as it is (the reader names it)."""
    texts = records.column("json").combine_chunks()
    changed: dict[int, str] = {}
    for i in _candidates(texts):
        text = texts[i].as_py()
        if text is None:
            continue
        try:
            new = dedupe_text(text)
        except ValueError:
            continue  # malformed: the parser names it
        except RecursionError:
            log.warning("%s record %s: nested too deep to check for duplicated keys; read as DuckDB "
                        "reads it", records.column("_file")[i].as_py(), records.column("_record")[i].as_py())
            continue
        if new is not None:
            changed[i] = new
    if not changed:
        return records, []
    files = records.column("_file")
    recs = records.column("_record")
    where = [(files[i].as_py(), int(recs[i].as_py())) for i in sorted(changed)]
    values = texts.to_pylist()
    for i, new in changed.items():
        values[i] = new
    column = pa.array(values, texts.type)
    log.info("%d record(s) hold a key twice; the last value of each is kept (first: %s record %d)",
             len(where), *where[0])
    return records.set_column(records.schema.get_field_index("json"), "json", column), where
