"""The cached reads of ``mids`` a build planner makes: a power, a powerset with its powers, an
archetype's build summary; what to warm, and what ``etl bench-reads`` reads.

Each query's SQL returns the answer as one JSON text built by PostgreSQL (see :mod:`etl.query`,
which runs them through the cache and adds the generation).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from etl.dataset import ReadBench, ReadQuery, Reads, Table
from etl.errors import ConfigError

#: The powerset the read bench's ``small`` export lacks: its presence tells which load a value
#: comes from.
PROBE_SET = "Blaster_Ranged.Fire_Blast"


def _row(tables: dict[str, Table], alias: str, table: str, *, drop: tuple[str, ...] = ()) -> str:
    """SQL for a mids row as a jsonb object, column by column (``to_jsonb(row)`` would convert
    the ``extra`` json, and jsonb refuses ``\\u0000``, which a generation loaded before NUL
    was stripped from ``extra`` may hold: such an ``extra`` comes as its JSON text instead)."""
    parts = []
    for col in tables[table].columns:
        if col.name in drop:
            continue
        if col.name == "extra":
            value = (f"CASE WHEN strpos({alias}.extra::text, '\\u0000') > 0 "
                     f"THEN to_jsonb({alias}.extra::text) ELSE {alias}.extra::jsonb END")
        else:
            value = f"{alias}.{col.name}"
        parts.append(f"jsonb_build_object('{col.name}', {value})")
    return "(" + " || ".join(parts) + ")"


def _power_sql(t: dict[str, Table]) -> str:
    return f"""
  SELECT ({_row(t, "p", "powers")} || jsonb_build_object(
            'powerset', ps.full_name,
            'effects', coalesce((SELECT jsonb_agg({_row(t, "e", "power_effects", drop=("power_id",))}
                                                  ORDER BY e.effect_index)
                                 FROM mids.power_effects e WHERE e.power_id = p.power_id), '[]'::jsonb),
            'requirements', coalesce((SELECT jsonb_agg(to_jsonb(r) - 'power_id'
                                                       ORDER BY r.kind, r.group_index, r.position)
                                      FROM mids.power_requirements r WHERE r.power_id = p.power_id),
                                     '[]'::jsonb)))::text
  FROM mids.powers p JOIN mids.powersets ps ON ps.powerset_id = p.powerset_id
  WHERE p.power_id = %(arg)s
"""


def _powerset_sql(t: dict[str, Table]) -> str:
    return f"""
  SELECT ({_row(t, "ps", "powersets")} || jsonb_build_object(
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
"""


# Built with json, not jsonb: an archetype's summary is ~100 KB, and json_agg over the row
# (row_to_json) builds it about three times faster than to_jsonb of each row with keys removed.
_SUMMARY_COLUMNS = ("power_id, power_full_name, power_name, available_level, power_type, end_cost, "
                    "recharge_time, cast_time, accuracy, max_boosts, powerset_id, powerset_full_name, "
                    "powerset_name, powerset_type, effect_count, distinct_effect_types, total_mag")
_BUILD_SUMMARY_SQL = f"""
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
"""


def _power_id(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"not a power id: {text!r}", hint="give the numeric power_id, e.g. 42") from None


def default_keys(cur: Any) -> list[tuple[str, str]]:
    """What to warm when nothing is known to be hot: every archetype's build summary and every
    powerset."""
    archetypes = [r[0] for r in cur.execute(
        "SELECT DISTINCT at_class FROM mids.powersets WHERE at_class IS NOT NULL "
        "UNION SELECT a.class_name FROM mids.archetypes a JOIN mids.powersets ps "
        "ON ps.archetype_id = a.archetype_id ORDER BY 1").fetchall()]
    sets = [r[0] for r in cur.execute("SELECT full_name FROM mids.powersets ORDER BY full_name").fetchall()]
    return [("build-summary", a) for a in archetypes] + [("powerset", s) for s in sets]


def hot_keys(conn: Any, rng: random.Random, *, powers: int = 60) -> list[tuple[str, str]]:
    """The read bench's hot key set: ``powers`` power ids, a dozen powersets (with the probe)
    and the archetypes."""
    ids = [r[0] for r in conn.execute("SELECT power_id FROM mids.powers ORDER BY power_id").fetchall()]
    sets = [r[0] for r in conn.execute("SELECT full_name FROM mids.powersets ORDER BY 1").fetchall()]
    ats = [r[0] for r in conn.execute(
        "SELECT DISTINCT at_class FROM mids.powersets WHERE at_class IS NOT NULL ORDER BY 1").fetchall()]
    keys = [("power", str(i)) for i in rng.sample(ids, min(powers, len(ids)))]
    keys += [("powerset", s) for s in rng.sample(sets, min(11, len(sets)))]
    keys += [("powerset", PROBE_SET)]
    keys += [("build-summary", a) for a in ats[:3]] + [("build-summary", "Blaster")]
    return keys


def drop_probe(export: Path) -> None:
    """Delete the probe powerset's file from (a copy of) an export."""
    for victim in (export / "db").rglob(f"*{PROBE_SET}.json"):
        victim.unlink()


def reads(tables: tuple[Table, ...]) -> Reads:
    """The reads of mids, their SQL built from its ``tables``."""
    t = {table.name: table for table in tables}
    return Reads(
        queries=(
            ReadQuery("power", _power_sql(t), "power",
                      "power ids are mids.powers.power_id (see `etl query mids powerset NAME`)",
                      help="A power by id, with its powerset, effects and requirements (JSON on "
                           "stdout).\n\n\b\nExample:\n  etl query mids power 42",
                      metavar="POWER_ID", parse=_power_id),
            ReadQuery("powerset", _powerset_sql(t), "powerset",
                      "powersets are named like Blaster_Ranged.Fire_Blast (full_name)",
                      help="A powerset by full name (case-insensitive), with its powers (JSON on "
                           "stdout).\n\n\b\nExample:\n  etl query mids powerset Blaster_Ranged.Fire_Blast",
                      metavar="NAME"),
            ReadQuery("build-summary", _BUILD_SUMMARY_SQL, "archetype",
                      "archetypes are named like Class_Blaster or Blaster",
                      help="An archetype's build summary: one row per power of its powersets, from "
                           "the materialized view power_build_summary (JSON on stdout). ARCHETYPE is "
                           "a class name or a display name.\n\n\b\nExamples:\n"
                           "  etl query mids build-summary Class_Blaster\n"
                           "  etl query mids build-summary blaster",
                      metavar="ARCHETYPE", key="summary"),
        ),
        help="Reads of the mids dataset: a power, a powerset with its powers, an archetype's build "
             "summary.\n\n\b\nExample:\n  etl query mids power 42",
        default_keys=default_keys,
        bench=ReadBench(hot_keys=hot_keys, probe=("powerset", PROBE_SET), drop_probe=drop_probe,
                        marker="I12.json"),
    )

