"""Cached reads a build planner makes, as functions a web backend imports.

Each function takes a :class:`~etl.infra.cache.Cache` (one per process, shared by its threads) and
returns a JSON-able dict: ``{"dataset", "generation", ...}`` plus what was asked for. The
generation says which load the answer comes from (handy as an HTTP ETag). PostgreSQL builds the
JSON itself, so a value goes from the database to both cache tiers as bytes, untouched.

    >>> from etl.infra.cache import Cache
    >>> from etl import query
    >>> with Cache("postgresql://etl@localhost/etl", redis_url="redis://localhost:6379/0") as c:
    ...     query.power(c, 42)["power"]["full_name"]

Staleness: see :mod:`etl.infra.cache` (a read that starts after a load's swap committed sees that load).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from etl.errors import ConfigError
from etl.infra.cache import Cache, Fetched
from etl.infra.errors import NotFound

log = logging.getLogger(__name__)


_GEN = "(SELECT generation FROM etl.generations WHERE dataset = %(dataset)s)"


def _row(alias: str, table: str, *, drop: tuple[str, ...] = ()) -> str:
    """SQL for a mids row as a jsonb object, column by column (``to_jsonb(row)`` would convert
    the ``extra`` json, and jsonb refuses the ``\u0000`` a real description holds: such an
    ``extra`` comes as its JSON text instead)."""
    from etl.datasets.mids import DATASET

    parts = []
    for col in DATASET.table(table).columns:
        if col.name in drop:
            continue
        if col.name == "extra":
            value = (f"CASE WHEN strpos({alias}.extra::text, '\\u0000') > 0 "
                     f"THEN to_jsonb({alias}.extra::text) ELSE {alias}.extra::jsonb END")
        else:
            value = f"{alias}.{col.name}"
        parts.append(f"jsonb_build_object('{col.name}', {value})")
    return "(" + " || ".join(parts) + ")"


_POWER_SQL = f"""
SELECT (
  SELECT ({_row("p", "powers")} || jsonb_build_object(
            'powerset', ps.full_name,
            'effects', coalesce((SELECT jsonb_agg({_row("e", "power_effects", drop=("power_id",))}
                                                  ORDER BY e.effect_index)
                                 FROM mids.power_effects e WHERE e.power_id = p.power_id), '[]'::jsonb),
            'requirements', coalesce((SELECT jsonb_agg(to_jsonb(r) - 'power_id'
                                                       ORDER BY r.kind, r.group_index, r.position)
                                      FROM mids.power_requirements r WHERE r.power_id = p.power_id),
                                     '[]'::jsonb)))::text
  FROM mids.powers p JOIN mids.powersets ps ON ps.powerset_id = p.powerset_id
  WHERE p.power_id = %(arg)s
), {_GEN}
"""

_POWERSET_SQL = f"""
SELECT (
  SELECT ({_row("ps", "powersets")} || jsonb_build_object(
            'powers', coalesce((SELECT jsonb_agg(jsonb_build_object(
                                         'power_id', p.power_id, 'full_name', p.full_name,
                                         'display_name', p.display_name, 'level', p.level,
                                         'power_type', p.power_type, 'end_cost', p.end_cost,
                                         'recharge_time', p.recharge_time)
                                       ORDER BY p.level, p.power_id)
                                FROM mids.powers p WHERE p.powerset_id = ps.powerset_id), '[]'::jsonb)))::text
  FROM mids.powersets ps
  WHERE ps.full_name = %(arg)s OR lower(ps.full_name) = lower(%(arg)s)
  ORDER BY (ps.full_name = %(arg)s) DESC, ps.powerset_id
  LIMIT 1
), {_GEN}
"""

# Built with json, not jsonb: an archetype's summary is ~100 KB, and json_agg over the row
# (row_to_json) builds it about three times faster than to_jsonb of each row with keys removed.
_SUMMARY_COLUMNS = ("power_id, power_full_name, power_name, available_level, power_type, end_cost, "
                    "recharge_time, cast_time, accuracy, max_boosts, powerset_id, powerset_full_name, "
                    "powerset_name, powerset_type, effect_count, distinct_effect_types, total_mag")
_BUILD_SUMMARY_SQL = f"""
SELECT (
  WITH at AS (
    SELECT a.archetype_id, a.class_name, a.display_name
    FROM mids.archetypes a
    WHERE a.class_name = %(arg)s OR lower(a.class_name) = lower(%(arg)s)
       OR lower(a.display_name) = lower(%(arg)s) OR lower(a.class_name) = 'class_' || lower(%(arg)s)
    ORDER BY (a.class_name = %(arg)s) DESC, a.archetype_id
    LIMIT 1
  ), rows AS (
    SELECT {_SUMMARY_COLUMNS} FROM mids.power_build_summary s
    WHERE s.powerset_id IN (SELECT ps.powerset_id FROM mids.powersets ps, at
                            WHERE ps.archetype_id = at.archetype_id OR ps.at_class = at.class_name)
  )
  SELECT json_build_object(
           'archetype', json_build_object('archetype_id', at.archetype_id,
                                          'class_name', at.class_name,
                                          'display_name', at.display_name),
           'powersets', (SELECT count(DISTINCT powerset_id) FROM rows),
           'power_count', (SELECT count(*) FROM rows),
           'powers', coalesce((SELECT json_agg(r ORDER BY r.powerset_full_name, r.available_level,
                                               r.power_id)
                               FROM rows r), '[]'::json))::text
  FROM at
), {_GEN}
"""


@dataclass(frozen=True, slots=True)
class Query:
    """One cached query of a dataset: its SQL and how its argument is read and shown."""

    dataset: str
    name: str
    sql: str
    parse: Callable[[str], Any]
    what: str  # for messages: "power 42"
    hint: str


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"not a power id: {text!r}", hint="give the numeric power_id, e.g. 42") from None


QUERIES: dict[tuple[str, str], Query] = {
    ("mids", "power"): Query("mids", "power", _POWER_SQL, _int, "power",
                             "power ids are mids.powers.power_id (see `etl query mids powerset NAME`)"),
    ("mids", "powerset"): Query("mids", "powerset", _POWERSET_SQL, str, "powerset",
                                "powersets are named like Blaster_Ranged.Fire_Blast (full_name)"),
    ("mids", "build-summary"): Query("mids", "build-summary", _BUILD_SUMMARY_SQL, str, "archetype",
                                     "archetypes are named like Class_Blaster or Blaster"),
}


def get_query(dataset: str, name: str) -> Query:
    try:
        return QUERIES[(dataset, name)]
    except KeyError:
        known = ", ".join(f"{d} {n}" for d, n in QUERIES)
        raise ConfigError(f"no cached query {name!r} for dataset {dataset!r}",
                          hint=f"known queries: {known}") from None


def fetch(cache: Cache, dataset: str, name: str, arg: str | int) -> Fetched:
    """The raw cached read (JSON bytes, the tier that answered, the generation): what the
    benchmark and a backend that sends bytes straight on use."""
    q = get_query(dataset, name)
    value = q.parse(str(arg))
    return cache.fetch(dataset, name, str(value), q.sql, {"arg": value})


def run(cache: Cache, dataset: str, name: str, arg: str | int) -> dict[str, Any]:
    """``name(arg)`` on ``dataset`` as a dict; raises :class:`NotFound` when nothing matches."""
    q = get_query(dataset, name)
    got = fetch(cache, dataset, name, arg)
    doc = orjson.loads(got.doc)
    if doc is None:
        raise NotFound(f"no {q.what} {arg!r} in {dataset} (generation {got.generation})",
                       dataset=dataset, hint=q.hint)
    key = "summary" if name == "build-summary" else name
    return {"dataset": dataset, "generation": got.generation, key: doc}


def power(cache: Cache, power_id: int, *, dataset: str = "mids") -> dict[str, Any]:
    """A power by id, with its powerset's name, its effects and its requirements."""
    return run(cache, dataset, "power", power_id)


def powerset(cache: Cache, name: str, *, dataset: str = "mids") -> dict[str, Any]:
    """A powerset by full name (``Blaster_Ranged.Fire_Blast``, case-insensitive), with its powers."""
    return run(cache, dataset, "powerset", name)


def build_summary(cache: Cache, archetype: str, *, dataset: str = "mids") -> dict[str, Any]:
    """The build summary of an archetype (``Class_Blaster`` or ``Blaster``): one row per power of
    its powersets, from the materialized view power_build_summary."""
    return run(cache, dataset, "build-summary", archetype)


# ------------------------------------------------------------------------------ warming


def default_keys(cache: Cache, dataset: str) -> list[tuple[str, str]]:
    """What to warm when nothing is known to be hot: every archetype's build summary and every
    powerset."""
    if dataset != "mids":
        return []
    with cache._pg().cursor() as cur:  # the warming thread's own connection
        archetypes = [r[0] for r in cur.execute(
            "SELECT DISTINCT at_class FROM mids.powersets WHERE at_class IS NOT NULL "
            "UNION SELECT a.class_name FROM mids.archetypes a JOIN mids.powersets ps "
            "ON ps.archetype_id = a.archetype_id ORDER BY 1").fetchall()]
        sets = [r[0] for r in cur.execute(
            "SELECT full_name FROM mids.powersets ORDER BY full_name").fetchall()]
    return [("build-summary", a) for a in archetypes] + [("powerset", s) for s in sets]


def warm(cache: Cache, dataset: str, *, top: int = 200) -> dict[str, Any]:
    """Preload the ``top`` hottest keys of ``dataset`` (as counted by every process's reads) for
    the current generation, topped up with :func:`default_keys`; what was loaded and how long it
    took."""
    start = time.perf_counter()
    keys = cache.hot_keys(dataset, top)
    hot = len(keys)
    if len(keys) < top:
        seen = set(keys)
        keys += [k for k in default_keys(cache, dataset) if k not in seen][: top - len(keys)]
    tiers: dict[str, int] = {}
    for name, arg in keys:
        if (dataset, name) not in QUERIES:
            continue
        try:
            got = fetch(cache, dataset, name, arg)
        except ConfigError:
            log.info("skipping hot key %s %r: no longer a valid argument", name, arg)
            continue
        tiers[got.tier] = tiers.get(got.tier, 0) + 1
    return {"dataset": dataset, "generation": cache.generation(dataset), "keys": len(keys),
            "from_hot_list": hot, "tiers": tiers, "seconds": round(time.perf_counter() - start, 3)}
