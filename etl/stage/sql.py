"""The SQL that unpacks a source's JSON records into its levels' typed rows (used by ``etl.stage``).

Every record is parsed once. One DuckDB JSON structure covers all levels of a source: each
level's fields at their keys (dotted keys as nested objects), each child level at its path as a
list of its own structure. ``from_json`` turns a record into one STRUCT; a level's rows are then
that STRUCT's lists unnested, level by level, from the record down.

Fields are declared so that their text is what ``json_extract_string`` gives (as staging did
when it extracted each level with JSON paths): INTEGER, BIGINT, DOUBLE and BOOLEAN fields as
``"VARCHAR"`` (``from_json`` writes a number as DuckDB writes it: ``12``, ``1000.0`` for ``1e3``,
``1e-07``; :func:`typed` reads them all the same), text, array and JSON fields as ``"JSON"``,
taken as text with ``json_extract_string(value, '$')`` (strings unquoted, numbers as written in
the export, objects and arrays as compact JSON) or cast to their list types. A value that does
not fit its type is staged as NULL and named in the row's ``_type_errors``: an object or an
array where a text field is declared too (never its JSON text).

What ``from_json`` cannot tell apart, and so is staged alike:

* a nested array element that is not an object (``"Effects": [1]``) and ``{}``: a row of NULLs
  (top-level records are checked to be objects before they get here);
* a JSON ``null`` and a missing key: NULL, for every field type (never the text ``'null'``);
* a list of records that is missing, ``null``, ``[]`` or not a list: no rows.

An array field holding a string is a type error, even when the string's text is a JSON array.

A field with the key :data:`etl.dataset.ELEMENT` (``"*"``) stages the record itself as compact
JSON text (for records whose keys differ from one to the next). Its level's list is then declared
as a list of ``"JSON"`` values in the source's structure, and each element is parsed once more,
with the level's own structure, as it is unnested; the lists its child levels are staged from
are removed from that text (a JSON merge patch), since they become rows of their own. For a
top-level record the text is the record as read, minified.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeAlias

from etl.dataset import ELEMENT, Field, Level
from etl.errors import ConfigError

#: A JSON structure for ``from_json``: a scalar type name, an object (dict) or a list of one
#: object (or of ``"JSON"`` values, for a level that stages its records whole).
Node: TypeAlias = str | dict[str, "Node"] | list["Node"]


def sql_str(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def typed(expr: str, type_: str) -> str:
    """SQL turning the text ``expr`` into ``type_`` (NULL when it does not fit).

    Numbers arrive as DuckDB writes them (``12``, ``12.0``, ``1000.0``, ``1e+16``): an integer
    type takes a number only when it is whole (``12.0`` and ``1e3`` yes, ``12.5`` no). Array
    types take the JSON text of an array."""
    if type_ in ("VARCHAR", "JSON"):
        return expr
    if type_ in ("BIGINT", "INTEGER"):
        return (f"CASE WHEN TRY_CAST({expr} AS DOUBLE) = TRY_CAST({expr} AS BIGINT) "
                f"THEN TRY_CAST({expr} AS {type_}) END")
    if type_ == "DOUBLE":
        return f"TRY_CAST({expr} AS DOUBLE)"
    if type_ == "BOOLEAN":
        return f"CASE {expr} WHEN 'true' THEN true WHEN 'false' THEN false END"
    if type_.endswith("[]"):
        return f"TRY_CAST({expr} AS {type_})"
    raise ConfigError(f"unsupported staged type {type_}")


def _json_type(field: Field) -> str:
    """How ``field`` is declared in the structure (see the module's docstring)."""
    return "JSON" if field.type in ("VARCHAR", "JSON") or field.type.endswith("[]") else "VARCHAR"


def _node(element: dict[str, Node], key: str) -> Node:
    node: Node = element
    for part in key.split("."):
        assert isinstance(node, dict)
        node = node[part]
    return node


def _is_text(node: Node, field: Field) -> bool:
    """Whether ``field``, declared as ``node``, is taken as text from a JSON value."""
    return node == "JSON" and field.type != "JSON" and not field.type.endswith("[]")


# ------------------------------------------------------------------------------ the structure


def _what(node: Node) -> str:
    return "a list of records" if isinstance(node, list) else "an object" if isinstance(node, dict) \
        else "a value"


def _object_at(obj: dict[str, Node], parts: Sequence[str], level: Level, key: str) -> dict[str, Node]:
    """The object at ``parts`` inside ``obj`` (made if new), on the way to ``key``."""
    for part in parts:
        node = obj.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(
                f"level {level.name}: key {key!r} needs {part!r} to be an object, but the "
                f"dataset's levels also read {part!r} as {_what(node)}",
                hint="read the whole value (type JSON) or only keys inside it, not both")
        obj = node
    return obj


def _list_at(obj: dict[str, Node], path: str, level: Level) -> dict[str, Node]:
    """The element structure of the list of records at dotted ``path`` in ``obj`` (made if new)."""
    *parents, last = path.split(".")
    holder = _object_at(obj, parents, level, path)
    node = holder.setdefault(last, [{}])
    if not isinstance(node, list):
        raise ConfigError(
            f"level {level.name}: its records sit at {path!r}, but the dataset's levels also read "
            f"{path!r} as {_what(node)}",
            hint="read the whole value (type JSON) or the records inside it, not both")
    element = node[0]
    assert isinstance(element, dict)  # lists of "JSON" are only set once every level is placed
    return element


#: In :func:`structure_and_textual`'s sets of fields read from text: the level's own list is read
#: from its parent's text (its key differs from another only in case), and a level has such a child.
BY_TEXT = "\0by text"
TEXT_CHILD = "\0text child"


def _collides(obj: dict[str, Node], parts: Sequence[str]) -> bool:
    """Whether a key on the way along ``parts`` differs from a key already in the structure only
    in case: DuckDB's STRUCT names ignore case, so ``Name`` and ``name`` cannot both be members
    (the second is read from the element's JSON text instead, see :func:`_raw`)."""
    node: Node = obj
    for part in parts:
        if not isinstance(node, dict):
            return False
        low = part.encode().lower()
        if any(k != part and k.encode().lower() == low for k in node):
            return True
        if part not in node:
            return False
        node = node[part]
    return False


def _put(obj: dict[str, Node], field: Field, level: Level) -> bool:
    """Place ``field`` in the structure ``obj``; False when its key is read from the element's
    text instead (:func:`_collides`)."""
    if field.key == ELEMENT:
        if field.type != "JSON":
            raise ConfigError(f"level {level.name}: field {field.name} reads the whole record "
                              f"({ELEMENT!r}), which must be of type JSON, not {field.type}")
        return True  # taken from the element's JSON text (see _field_value)
    if _collides(obj, field.key.split(".")):
        return False
    *parents, last = field.key.split(".")
    holder = _object_at(obj, parents, level, field.key)
    want = _json_type(field)
    node = holder.get(last)
    if node is None or node == "VARCHAR":
        holder[last] = want
    elif node == "JSON":
        pass  # a field read as text is taken from the JSON value (see _raw)
    else:
        raise ConfigError(
            f"level {level.name}: field {field.name} reads {field.key!r} as a value, but the "
            f"dataset's levels also read {field.key!r} as {_what(node)}",
            hint="read the whole value (type JSON) or the keys inside it, not both")
    return True


def source_structure(levels: Sequence[Level]) -> tuple[dict[str, Node], dict[str, dict[str, Node]]]:
    """The ``from_json`` structure of one record of a source holding ``levels`` (parents first),
    and each level's element structure inside it (see :func:`structure_and_textual`)."""
    record, where, _ = structure_and_textual(levels)
    return record, where


def structure_and_textual(levels: Sequence[Level]
                          ) -> tuple[dict[str, Node], dict[str, dict[str, Node]], dict[str, set[str]]]:
    """:func:`source_structure`, and per level the fields read from the element's JSON text
    (keys that differ from another only in case, :func:`_collides`): such a level's elements are
    staged as text too (declared ``"JSON"`` in their parent, parsed once more as unnested).

    Raises :class:`ConfigError` when two levels need one key as a value and as an object or list.
    """
    record: dict[str, Node] = {}
    where: dict[str, dict[str, Node]] = {}
    textual: dict[str, set[str]] = {lvl.name: set() for lvl in levels}
    for lvl in levels:
        home = record
        if lvl.parent is not None:
            if lvl.path is None:
                raise ConfigError(f"level {lvl.name} has a parent ({lvl.parent}) but no path")
            if lvl.parent not in where:
                raise ConfigError(f"level {lvl.name}: its parent {lvl.parent} is not an earlier "
                                  "level of the same source")
            home = where[lvl.parent]
        if lvl.path is None:
            node = record
        elif _collides(home, lvl.path.split(".")):
            # Its list is read from the parent's JSON text (see source_plan), its records parsed
            # with a structure of their own.
            node = {}
            textual[lvl.name].add(BY_TEXT)
            for root in [lvl.parent] if lvl.parent is not None else \
                    [r.name for r in levels if r.parent is None and r.path is None]:
                textual[root].add(TEXT_CHILD)
        else:
            node = _list_at(home, lvl.path, lvl)
        where[lvl.name] = node
    # Fields after all lists, so a field and a list on one key conflict whatever the order.
    for lvl in levels:
        for f in lvl.fields:
            if not _put(where[lvl.name], f, lvl):
                textual[lvl.name].add(f.name)
    # A level staged whole is read as JSON values in its parent's structure; its own structure
    # (``where``) parses each element again as it is unnested.
    for lvl in levels:
        # A level staged whole, or reading keys from its text, or with no structure of its own
        # (no columns: its records stay whole in extra; DuckDB refuses an empty STRUCT).
        if BY_TEXT in textual[lvl.name]:
            continue  # not in its parent's structure
        if (lvl.whole or textual[lvl.name] or not where[lvl.name]) and lvl.path is not None:
            holder: Node = record if lvl.parent is None else where[lvl.parent]
            *parents, last = lvl.path.split(".")
            for part in parents:
                assert isinstance(holder, dict)
                holder = holder[part]
            assert isinstance(holder, dict)
            holder[last] = ["JSON"]
    return record, where, textual


# ------------------------------------------------------------------------------ the queries


def _jpath(key: str) -> str:
    """The JSON path of the dotted ``key`` (each part quoted: case and odd characters kept)."""
    return "$" + "".join(f'."{p}"' for p in key.split("."))


def _access(expr: str, key: str) -> str:
    return expr + "".join(f"[{sql_str(part)}]" for part in key.split("."))


def _raw(element: dict[str, Node], field: Field, expr: str = "_e",
         children: Sequence[str] = (), textual: bool = False) -> str:
    """SQL for ``field``'s value in the parsed element ``expr``: text, or JSON for arrays.
    The whole element (:data:`ELEMENT`) is the element's text, ``_j``, less the lists at
    ``children`` (its child levels' paths); a ``textual`` field is read from ``_j`` by its path."""
    if field.key == ELEMENT:
        return element_text(children, "_j")
    node: Node
    if textual:
        where = sql_str(_jpath(field.key))
        node = _json_type(field)
        if node == "VARCHAR":  # a number or boolean's text, as from_json gives it
            return f"json_extract_string(_j, {where})"
        value = f"json_extract(_j, {where})"
    else:
        value = _access(expr, field.key)
        node = _node(element, field.key)
    if _is_text(node, field):
        # An object or array is no scalar: NULL and a type error (it stays whole in _extra),
        # never its JSON text in a text column (a 10,000-deep [[[... became a 20 KB name).
        return (f"CASE WHEN json_type({value}) IN ('OBJECT', 'ARRAY') THEN NULL "
                f"ELSE json_extract_string({value}, '$') END")
    return value


def _field_value(element: dict[str, Node], field: Field, expr: str = "_e",
                 children: Sequence[str] = (), textual: bool = False) -> str:
    raw = _raw(element, field, expr, children, textual)
    if field.type == "JSON":
        return f"CAST({raw} AS VARCHAR)"
    return typed(raw, field.type)


def element_text(child_paths: Sequence[str], expr: str) -> str:
    """SQL for the JSON text ``expr`` less the keys at the dotted ``child_paths``.

    A key is removed only where it holds a non-empty array (its records are rows of their own),
    so ``"A": null`` and ``"A": []`` stay as they were: the text stays lossless."""
    out = expr
    for path in child_paths:
        *parents, last = path.split(".")
        patch: object = {last: None}
        for part in reversed(parents):
            patch = {part: patch}
        where = "$" + "".join(f'."{p}"' for p in path.split("."))
        out = (f"CASE WHEN json_type({expr}, {sql_str(where)}) = 'ARRAY' "
               f"AND json_array_length({expr}, {sql_str(where)}) > 0 "
               f"THEN CAST(json_merge_patch({out}, {sql_str(json.dumps(patch))}) AS VARCHAR) "
               f"ELSE {out} END")
    return out


def _has_path(level: Level) -> bool:
    """Whether ``level``'s rows have a non-empty ``_path`` (all but the records themselves)."""
    return level.parent is not None or level.path is not None


def _unnest(src: str, arr: str, path: str, carry: Sequence[str], *, nested: bool) -> str:
    """Rows of the list ``arr`` (an expression over ``src``): lineage, ``carry`` columns, ``_e``.

    ``nested``: ``src`` has a non-empty ``_path`` that the rows' paths continue."""
    keep = "".join(", " + c for c in carry)
    prefix = "_ppath || '.' || " if nested else ""
    return (
        f"SELECT _file, _record, {prefix}{sql_str(path)} || '[' || CAST(_i - 1 AS VARCHAR) || ']' "
        f"AS _path, CAST(_i - 1 AS BIGINT) AS _index{keep}, _e FROM ("
        f"SELECT _file, _record{', _path AS _ppath' if nested else ''}{keep}, unnest(_arr) AS _e, "
        f"generate_subscripts(_arr, 1) AS _i FROM ("
        f"SELECT _file, _record{', _path' if nested else ''}{keep}, {arr} AS _arr FROM {src}))")


@dataclass(frozen=True, slots=True)
class SourcePlan:
    """How one source's record batches become level tables.

    ``parse`` (a SELECT over ``_records``: ``_file, _record, json``) gives ``_file, _record, _s``,
    ``_s`` being the parsed record; ``queries`` (SELECTs over that result, named ``_parsed``)
    give each level's staged rows, unnesting from ``_s`` down to the level.
    """

    structure: str
    parse: str
    queries: dict[str, str]


def source_plan(levels: Sequence[Level]) -> SourcePlan:
    """The parse and level queries for a source holding ``levels`` (parents first).

    Raises :class:`ConfigError` when the levels do not fit one structure (see
    :func:`source_structure`) or inherit a field their parent lacks.
    """
    record, where, textual = structure_and_textual(levels)
    structure = json.dumps(record, separators=(",", ":"))
    by_name = {lvl.name: lvl for lvl in levels}
    elements: dict[str, str] = {}
    # The lists each level's children are staged from (a top-level record holds the lists of
    # the source's other top-level levels).
    children: dict[str, list[str]] = {lvl.name: [] for lvl in levels}
    roots = [lvl.name for lvl in levels if lvl.parent is None and lvl.path is None]
    for lvl in levels:
        if lvl.path is None:
            continue
        if lvl.parent is not None:
            children[lvl.parent].append(lvl.path)
        else:
            for root in roots:
                children[root].append(lvl.path)
    whole_root = any(by_name[r].whole for r in roots)
    text_root = any(textual[r] for r in roots) or any(
        BY_TEXT in textual[lvl.name] for lvl in levels if lvl.parent is None)

    def array(lvl: Level, expr: str, text: str) -> str:
        """The list ``lvl``'s rows come from: at its path in the parsed parent ``expr``, or read
        from the parent's JSON ``text`` by its exact path (a key differing from another in case)."""
        if BY_TEXT in textual[lvl.name]:
            return f"TRY_CAST(json_extract({text}, {sql_str(_jpath(lvl.path or ''))}) AS JSON[])"
        return _access(expr, lvl.path or "")

    def texts(lvl: Level) -> bool:
        """Whether ``lvl``'s element rows carry ``_j``, the element's JSON text."""
        return lvl.whole or bool(textual[lvl.name])

    def value(lvl: Level, f: Field) -> str:
        return _field_value(where[lvl.name], f, children=children[lvl.name],
                            textual=f.name in textual[lvl.name])

    def whole(sql: str, lvl: Level) -> str:
        """Rows of ``sql`` (``_e`` a JSON value) with ``_j``, its text, and ``_e`` parsed."""
        carry = "".join(", " + ident(c) for _, c in lvl.inherit)
        element = sql_str(json.dumps(where[lvl.name], separators=(",", ":")))
        parsed = f"from_json(_e, {element})" if where[lvl.name] else "CAST(NULL AS VARCHAR)"
        return (f"SELECT _file, _record, _path, _index{carry}, CAST(_e AS VARCHAR) AS _j, "
                f"{parsed} AS _e FROM ({sql})")

    def element_rows(lvl: Level) -> str:
        """Lineage, inherited columns and ``_e`` (the parsed element) of each of lvl's rows,
        and ``_j``, its JSON text, for a level staged whole."""
        if lvl.name not in elements:
            if lvl.parent is None and lvl.path is None:
                sql = ("SELECT _file, _record, '' AS _path, CAST(NULL AS BIGINT) AS _index, _s AS _e"
                       f"{', _j' if texts(lvl) else ''} FROM _parsed")
            elif lvl.parent is None:
                sql = _unnest("_parsed", array(lvl, "_s", "_j"), lvl.path or "", (), nested=False)
            else:
                parent = by_name[lvl.parent]
                carried = {c for _, c in parent.inherit}
                inherited = []
                for p, c in lvl.inherit:
                    if any(f.name == p for f in parent.fields):
                        inherited.append(f"{value(parent, parent.field(p))} AS {ident(c)}")
                    elif p in carried:
                        inherited.append(f"{ident(p)} AS {ident(c)}")
                    else:
                        raise ConfigError(f"level {lvl.name} inherits {p}, which its parent "
                                          f"{parent.name} neither has nor inherits")
                pj = ", _j AS _pj" if BY_TEXT in textual[lvl.name] else ""
                src = (f"(SELECT _file, _record, _path{''.join(', ' + i for i in inherited)}, "
                       f"_e AS _pe{pj} FROM ({element_rows(parent)}))")
                sql = _unnest(src, array(lvl, "_pe", "_pj"), lvl.path or "",
                              [ident(c) for _, c in lvl.inherit], nested=_has_path(parent))
            if texts(lvl) and lvl.path is not None:
                sql = whole(sql, lvl)
            elements[lvl.name] = sql
        return elements[lvl.name]

    queries = {}
    for lvl in levels:
        element = where[lvl.name]
        inherit = "".join(", " + ident(c) for _, c in lvl.inherit)
        values = "".join(f", {value(lvl, f)} AS {ident(f.name)}" for f in lvl.fields)
        names = "".join(", " + ident(f.name) for f in lvl.fields)
        by_text = textual[lvl.name]
        checks = [f"CASE WHEN {_raw(element, f, textual=f.name in by_text)} IS NOT NULL "
                  f"AND {ident(f.name)} IS NULL THEN {sql_str(f.name)} END"
                  for f in lvl.fields if f.type not in ("VARCHAR", "JSON")]
        checks += [f"CASE WHEN json_type({_access('_e', f.key)}) IN ('OBJECT', 'ARRAY') "
                   f"THEN {sql_str(f.name)} END"
                   for f in lvl.fields if f.type == "VARCHAR" and f.key != ELEMENT
                   and f.name not in by_text and _is_text(_node(element, f.key), f)]
        checks += [f"CASE WHEN json_type(_j, {sql_str(_jpath(f.key))}) IN ('OBJECT', 'ARRAY') "
                   f"THEN {sql_str(f.name)} END"
                   for f in lvl.fields if f.type == "VARCHAR" and f.name in by_text]
        errors = (f"list_filter([{', '.join(checks)}], lambda x: x IS NOT NULL)" if checks
                  else "CAST([] AS VARCHAR[])")
        queries[lvl.name] = (
            f"SELECT _file, _record, _path, _index{inherit}{names}, {errors} AS _type_errors "
            f"FROM (SELECT _file, _record, _path, _index{inherit}{values}, _e"
            f"{', _j' if texts(lvl) else ''} FROM ({element_rows(lvl)}))")
    text = (", CAST(json(json) AS VARCHAR) AS _j" if whole_root
            else ", json AS _j" if text_root else "")
    parsed = f"from_json(json, {sql_str(structure)})" if record else "CAST(NULL AS VARCHAR)"
    parse = f"SELECT _file, _record, {parsed} AS _s{text} FROM _records"
    return SourcePlan(structure, parse, queries)
