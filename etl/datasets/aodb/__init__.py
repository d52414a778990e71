"""``aodb``: the Anarchy Online item and nano export (Tinkertools' JSON form).

Input (see ``../shared/data/README.md``): one or more files holding a JSON array of items (or
NDJSON, one item a line). An item: ``DBType, AOID, Version, Name, Description,
StatValues[{Stat, RawValue}], AttackDefenseData{Attack[], Defense[]}|null,
AnimationMesh{Animation, Mesh}|null, ActionData{Actions[{Action, Criteria[{Value1, Value2,
Operator}]}]}|null, SpellData[{Event, Items[{SpellID, Target, TickCount, TickInterval,
SpellFormat, Criteria[], …}]}], ShopHashData``.

What this dataset exercises that ``mids`` does not:

* **Shared lookup rows.** ``(Stat, RawValue)`` pairs and ``(Value1, Value2, Operator)``
  criteria repeat across thousands of items. They are deduplicated here, in Polars, into
  ``stat_values`` and ``criteria``; items point at them through junction tables. No
  SELECT-then-INSERT, no upsert: the ids are the rank of the value in sorted order, so the same
  export gives the same ids whatever the file order, and a re-import gives the same rows.
* **Heterogeneous parameters.** Each spell carries its own keys (``Stat/Amount``,
  ``Texture/Location``, ``A/B/C``…). The spell is staged whole (a ``"*"`` field: the record as
  JSON, less its ``Criteria`` list, which becomes ``spell_criteria`` rows) into ``params``
  (jsonb), losslessly; the common keys get typed columns too.

Every other key is deterministic too: items are keyed by their AOID (unique per export, a
rule); actions, spell data and spells by their item's AOID and their position in its lists.
Order inside lists (stats, criteria, spells) is kept as ``position`` columns.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import polars as pl

from etl.dataset import (
    Column,
    Dataset,
    ForeignKey,
    Table,
    carried,
    check,
    in_range,
    references,
    required,
    unique,
)
from etl.datasets.aodb.gen import BENCH, GENERATOR
from etl.shipped import shipped
from etl.spec.dataset import read_dataset

VERSION = "3"

#: Stat ids with a meaning the items table shows as columns (Anarchy Online's stat numbers).
STAT_QL = 54
STAT_ITEM_CLASS = 76
#: ``DBType`` of nano programs in the game's resource database (items are 1000020).
DBTYPE_NANO = 1040005
#: Bounds the rules hold the data to.
MAX_QL = 1000
MAX_STAT = 65_535
MAX_OPERATOR = 255

# ------------------------------------------------------------------------------ staged levels
# The sources and the levels staged from them (which JSON keys become which typed fields) are
# declared in aodb.toml beside this module, a dataset spec like those `etl init` writes; this
# module is its hook (`extend`): what a spec does not declare.

# ------------------------------------------------------------------------------ checks

_CHILDREN = ("stat_values", "attacks", "defenses", "actions", "action_criteria", "spell_data",
             "spells", "spell_criteria")

_INT32 = (-(2**31), 2**31 - 1)


def _shop_hash_ok(values: pl.Series) -> pl.Series:
    """Whether each ``ShopHashData`` text becomes ``shop_hash`` rows PostgreSQL takes: JSON the
    transform reads, with its numbers within the ``integer`` columns (NULL passes)."""
    def ok(text: str | None) -> bool:
        if text is None:
            return True
        try:
            entries = _shop_entries(text)
        except (orjson.JSONDecodeError, TypeError, ValueError):
            return False
        return all(v is None or _INT32[0] <= v <= _INT32[1]
                   for row in entries for k, v in row.items() if k not in ("entry", "hash"))

    return pl.Series(values.name, [ok(t) for t in values.to_list()], dtype=pl.Boolean())


RULES = (
    required("items", "aoid"),
    unique("items", "aoid"),
    in_range("items", "aoid", 1, None),
    required("items", "name", severity="warning"),
    check("ql_range", "stat_values",
          lambda: (pl.col("stat") != STAT_QL) | pl.col("raw_value").is_between(0, MAX_QL),
          f"QL (stat {STAT_QL}) must be within [0, {MAX_QL}]", columns=("stat", "raw_value")),
    # What the transform derives beyond the storable rules' same-named columns (see
    # etl/storable.py): items.item_class (integer) from stat 76, the shop_hash rows.
    check("item_class_storable", "stat_values",
          lambda: (pl.col("stat") != STAT_ITEM_CLASS) | pl.col("raw_value").is_between(*_INT32),
          f"item class (stat {STAT_ITEM_CLASS}) must fit items.item_class (integer)",
          columns=("stat", "raw_value")),
    check("shop_hash_storable", "items",
          lambda: pl.col("shop_hash").map_batches(_shop_hash_ok, return_dtype=pl.Boolean(),
                                                  is_elementwise=True),
          "ShopHashData must be JSON whose MinLevel, MaxLevel, BaseAmount, RegenAmount, "
          "RegenInterval and SpawnChance fit shop_hash's integer columns", columns=("shop_hash",)),
    # Each nested row belongs to an accepted item with an AOID (rejecting an item rejects them).
    *(required(level, "aoid") for level in _CHILDREN),
    *(references(level, "aoid", "items", "aoid") for level in _CHILDREN),
    *(required(level, "stat", "raw_value") for level in ("stat_values", "attacks", "defenses")),
    *(in_range(level, "stat", 0, MAX_STAT) for level in ("stat_values", "attacks", "defenses")),
    required("actions", "action"),
    required("spell_data", "event", severity="warning"),
    required("spells", "spell_id"),
    in_range("spells", "tick_count", 0, None),
    in_range("spells", "tick_interval", 0, None),
    *(required(level, "value1", "value2", "operator")
      for level in ("action_criteria", "spell_criteria")),
    *(in_range(level, "operator", 0, MAX_OPERATOR)
      for level in ("action_criteria", "spell_criteria")),
)

# ------------------------------------------------------------------------------ target tables


def _cols(*spec: str) -> tuple[Column, ...]:
    out = []
    for s in spec:
        name, _, type_ = s.partition(":")
        out.append(Column(name, type_.rstrip("!"), not type_.endswith("!")))
    return tuple(out)


def _item_fk() -> ForeignKey:
    return ForeignKey(("aoid",), "items", ("aoid",))


TABLES = (
    Table("items", _cols(
        "aoid:bigint!", "name:text", "description:text", "ql:integer", "item_class:integer",
        "is_nano:boolean!", "db_type:bigint", "version:bigint", "source_file:text!",
        "source_record:bigint!", "extra:json!"), ("aoid",)),
    Table("stat_values", _cols("stat_value_id:integer!", "stat:integer!", "value:bigint!"),
          ("stat_value_id",), unique=(("stat", "value"),)),
    Table("item_stats", _cols("aoid:bigint!", "position:integer!", "stat_value_id:integer!",
                              "extra:json!"),
          ("aoid", "position"),
          foreign_keys=(_item_fk(), ForeignKey(("stat_value_id",), "stat_values",
                                               ("stat_value_id",)))),
    Table("criteria", _cols("criterion_id:integer!", "value1:bigint!", "value2:bigint!",
                            "operator:integer!"),
          ("criterion_id",), unique=(("value1", "value2", "operator"),)),
    Table("actions", _cols("action_id:bigint!", "aoid:bigint!", "position:integer!",
                           "action:integer!", "extra:json!"),
          ("action_id",), unique=(("aoid", "position"),), foreign_keys=(_item_fk(),)),
    Table("action_criteria", _cols("action_id:bigint!", "position:integer!",
                                   "criterion_id:integer!", "extra:json!"),
          ("action_id", "position"),
          foreign_keys=(ForeignKey(("action_id",), "actions", ("action_id",)),
                        ForeignKey(("criterion_id",), "criteria", ("criterion_id",)))),
    Table("spell_data", _cols("spell_data_id:bigint!", "aoid:bigint!", "position:integer!",
                              "event:integer", "extra:json!"),
          ("spell_data_id",), unique=(("aoid", "position"),), foreign_keys=(_item_fk(),)),
    Table("spells", _cols(
        "spell_entry_id:bigint!", "spell_data_id:bigint!", "position:integer!", "spell_id:bigint!",
        "target:integer", "tick_count:integer", "tick_interval:bigint", "spell_format:text",
        "stat:integer", "amount:bigint", "params:jsonb!", "extra:json!"),
        ("spell_entry_id",), unique=(("spell_data_id", "position"),),
        foreign_keys=(ForeignKey(("spell_data_id",), "spell_data", ("spell_data_id",)),)),
    Table("spell_criteria", _cols("spell_entry_id:bigint!", "position:integer!",
                                  "criterion_id:integer!", "extra:json!"),
          ("spell_entry_id", "position"),
          foreign_keys=(ForeignKey(("spell_entry_id",), "spells", ("spell_entry_id",)),
                        ForeignKey(("criterion_id",), "criteria", ("criterion_id",)))),
    Table("attack_defense", _cols("aoid:bigint!", "kind:text!", "position:integer!",
                                  "stat:integer!", "value:bigint!", "extra:json!"),
          ("aoid", "kind", "position"), foreign_keys=(_item_fk(),)),
    Table("animation_mesh", _cols("aoid:bigint!", "animation_stat:integer",
                                  "animation_value:bigint", "mesh_stat:integer",
                                  "mesh_value:bigint"),
          ("aoid",), foreign_keys=(_item_fk(),)),
    Table("shop_hash", _cols(
        "aoid:bigint!", "position:integer!", "hash:text", "min_level:integer",
        "max_level:integer", "base_amount:integer", "regen_amount:integer",
        "regen_interval:integer", "spawn_chance:integer", "entry:jsonb!"),
        ("aoid", "position"), foreign_keys=(_item_fk(),)),
)

# ------------------------------------------------------------------------------ transform


def _ranked(lf: pl.LazyFrame, by: list[str], name: str, dtype: pl.DataType) -> pl.LazyFrame:
    """Sort by ``by`` and number rows 1, 2, 3… as ``name`` (deterministic surrogate keys)."""
    return lf.sort(by).with_row_index(name, offset=1).with_columns(pl.col(name).cast(dtype))


def _positions(*names: str) -> list[pl.Expr]:
    """The list positions in a row's ``_path`` (``SpellData[2].Items[0]`` → 2, 0) as ``names``."""
    found = pl.col("_path").str.extract_all(r"\[(\d+)\]")
    return [found.list.get(i).str.strip_chars("[]").cast(pl.Int32).alias(n)
            for i, n in enumerate(names)]


def _of_items(lf: pl.LazyFrame, items: pl.LazyFrame) -> pl.LazyFrame:
    """Rows of ``lf`` whose own item was accepted (matched by file and record, so the rows of a
    rejected duplicate of an AOID do not attach to the accepted one)."""
    return lf.drop("aoid").join(items.select("_file", "_record", "aoid"),
                                on=["_file", "_record"], how="inner")


_SHOP_KEYS = {"hash": "Hash", "min_level": "MinLevel", "max_level": "MaxLevel",
              "base_amount": "BaseAmount", "regen_amount": "RegenAmount",
              "regen_interval": "RegenInterval", "spawn_chance": "SpawnChance"}


def _shop_entries(text: str) -> list[dict[str, Any]]:
    """``ShopHashData`` (``{"Items": [...]}``, a bare list, or one entry) as typed entries."""
    data = orjson.loads(text)
    entries = data.get("Items", [data]) if isinstance(data, dict) else data
    out = []
    for entry in entries if isinstance(entries, list) else [entries]:
        row: dict[str, Any] = {"entry": orjson.dumps(entry).decode()}
        e = entry if isinstance(entry, dict) else {}
        h = e.get("Hash")
        row["hash"] = h.get("Text") if isinstance(h, dict) else h if isinstance(h, str) else None
        for col, key in _SHOP_KEYS.items():
            if col != "hash":
                v = e.get(key)
                row[col] = v if isinstance(v, int) and not isinstance(v, bool) else None
        out.append(row)
    return out


_SHOP_DTYPE = pl.List(pl.Struct({"entry": pl.String, "hash": pl.String,
                                 **{c: pl.Int64 for c in _SHOP_KEYS if c != "hash"}}))


def transform(levels: Mapping[str, pl.LazyFrame]) -> dict[str, pl.LazyFrame]:
    """Accepted staged levels → the aodb target tables."""
    items = levels["items"]
    stats = _of_items(levels["stat_values"], items).with_columns(
        position=pl.col("_index").cast(pl.Int32))

    def stat_of(stat: int, name: str) -> pl.LazyFrame:
        return (stats.filter(pl.col("stat") == stat).sort("aoid", "position")
                .group_by("aoid").agg(pl.col("raw_value").first().cast(pl.Int32).alias(name)))

    items_out = (items.join(stat_of(STAT_QL, "ql"), on="aoid", how="left")
                 .join(stat_of(STAT_ITEM_CLASS, "item_class"), on="aoid", how="left")
                 .with_columns(is_nano=(pl.col("db_type") == DBTYPE_NANO).fill_null(False),
                               source_file=pl.col("_file"), source_record=pl.col("_record")))

    stat_values = _ranked(stats.select("stat", pl.col("raw_value").alias("value")).unique(),
                          ["stat", "value"], "stat_value_id", pl.Int32())
    item_stats = stats.join(stat_values, left_on=["stat", "raw_value"], right_on=["stat", "value"],
                            how="inner")

    actions = _ranked(_of_items(levels["actions"], items).with_columns(
        position=pl.col("_index").cast(pl.Int32)), ["aoid", "position"], "action_id", pl.Int64())
    action_crit = _of_items(levels["action_criteria"], items).with_columns(
        *_positions("action_position", "position"))
    spell_data = _ranked(_of_items(levels["spell_data"], items).with_columns(
        position=pl.col("_index").cast(pl.Int32)), ["aoid", "position"], "spell_data_id",
        pl.Int64())
    # Spells carry params (their whole JSON text, the largest column of the export). Their ids
    # and joins are worked out on their keys alone (``spell_keys``: where each staged spell came
    # from and its ids); the staged rows then get their ids by that place, in a left join that
    # keeps their order, so params is never sorted or gathered here (the transform writes the
    # table sorted a chunk at a time). At 1.2M spells an inner join held ~150 MB more, and a
    # place given by ``_path`` (text) ~40 MB more than by its list positions. A staged spell
    # has ids exactly when its item and its spell data were accepted.
    spell_place = ["_file", "_record", "data_position", "position"]
    spell_keys = _ranked(
        _of_items(levels["spells"].select("_file", "_record", "_path", "aoid"), items)
        .with_columns(*_positions("data_position", "position")).drop("_path"),
        ["aoid", "data_position", "position"], "spell_entry_id", pl.Int64(),
    ).join(spell_data.select("aoid", pl.col("position").alias("data_position"), "spell_data_id"),
           on=["aoid", "data_position"], how="inner")
    spells = (levels["spells"].drop("aoid")
              .with_columns(*_positions("data_position", "position"))
              .join(spell_keys.select(*spell_place, "spell_entry_id", "spell_data_id"),
                    on=spell_place, how="left", maintain_order="left")
              .filter(pl.col("spell_entry_id").is_not_null())
              .with_columns(stat=pl.col("stat").cast(pl.Int32, strict=False),
                            amount=pl.col("amount").cast(pl.Int64, strict=False)))
    spell_crit = _of_items(levels["spell_criteria"], items).with_columns(
        *_positions("data_position", "spell_position", "position"))

    crit_cols = ["value1", "value2", "operator"]
    criteria = _ranked(pl.concat([action_crit.select(crit_cols), spell_crit.select(crit_cols)])
                       .unique(), crit_cols, "criterion_id", pl.Int32())
    action_criteria = action_crit.join(
        actions.select("aoid", pl.col("position").alias("action_position"), "action_id"),
        on=["aoid", "action_position"], how="inner").join(criteria, on=crit_cols, how="inner")
    spell_criteria = spell_crit.join(
        spell_keys.select("aoid", "data_position", pl.col("position").alias("spell_position"),
                          "spell_entry_id"),
        on=["aoid", "data_position", "spell_position"], how="inner",
    ).join(criteria, on=crit_cols, how="inner")

    attack_defense = pl.concat([
        _of_items(levels[level], items).with_columns(kind=pl.lit(kind))
        for level, kind in (("attacks", "attack"), ("defenses", "defense"))
    ]).select("aoid", "kind", carried(), position=pl.col("_index").cast(pl.Int32), stat="stat",
              value="raw_value")

    mesh_cols = ["animation_stat", "animation_value", "mesh_stat", "mesh_value"]
    animation_mesh = items.filter(pl.any_horizontal(pl.col(c).is_not_null() for c in mesh_cols))

    shop_hash = (items.filter(pl.col("shop_hash").is_not_null())
                 .select("aoid", entries=pl.col("shop_hash").map_elements(
                     _shop_entries, return_dtype=_SHOP_DTYPE))
                 .with_columns(position=pl.int_ranges(pl.col("entries").list.len()))
                 .explode("entries", "position")
                 .filter(pl.col("entries").is_not_null())
                 .unnest("entries"))

    return {
        "items": items_out,
        "stat_values": stat_values,
        "item_stats": item_stats,
        "criteria": criteria,
        "actions": actions,
        "action_criteria": action_criteria,
        "spell_data": spell_data,
        "spells": spells,
        "spell_criteria": spell_criteria,
        "attack_defense": attack_defense,
        "animation_mesh": animation_mesh,
        "shop_hash": shop_hash,
    }


def extend(base: Dataset) -> Dataset:
    """The dataset aodb.toml declares, with what a spec does not: rules, cleaning, tables,
    transform and the rest."""
    return replace(
        base,
        transform=transform,
        tables=TABLES,
        rules=RULES,
        sql_dir=shipped("sql") / "aodb",
        notes={
            "items": "one per array element (AOID unique)",
            "stat_values": "distinct (Stat, RawValue) pairs of StatValues[]",
            "item_stats": "StatValues[] entries",
            "criteria": "distinct (Value1, Value2, Operator) of action and spell criteria",
            "action_criteria": "ActionData.Actions[].Criteria[] entries",
            "spells": "SpellData[].Items[] (params: the spell less Criteria, as jsonb)",
            "spell_criteria": "SpellData[].Items[].Criteria[] entries",
            "attack_defense": "AttackDefenseData.Attack[] and .Defense[] entries",
        },
        generator=GENERATOR,
        bench=BENCH,
    )


DATASET = read_dataset(Path(__file__).with_name("aodb.toml"), extend=extend)
