"""``mids``: the MidsReborn power database export (City of Heroes).

Input layout (see ``../shared/data/README.md``): ``I12.json`` (archetypes), ``EnhDB.json``
(enhancements and their sets), ``Salvage.json``, and ``db/**/*.json``, one powerset per file with
its powers and their effects nested inside.

Keys are deterministic. Archetypes, enhancements, enhancement sets and salvage keep the index
the export gives them (their position in their list, which the export's own cross references
use). Powersets, powers and effects are numbered in the order of their full names, so the same
export always gets the same ids whatever the file order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import polars as pl

from etl.dataset import (
    Clean,
    Column,
    Dataset,
    ForeignKey,
    Rule,
    Table,
    check,
    in_range,
    one_of,
    references,
    required,
    unique,
)
from etl.datasets.mids.gen import BENCH, GENERATOR
from etl.datasets.mids.queries import reads
from etl.shipped import shipped
from etl.spec.dataset import read_dataset

# ------------------------------------------------------------------------------ staged levels
# The sources and the levels staged from them (which JSON keys become which typed fields) are
# declared in mids.toml beside this module, a dataset spec like those `etl init` writes; this
# module is its hook (`extend`): the rules, cleaning, target tables and transform.

#: The header files' own levels (I12.json's Version, Issue, Entities…; whatever EnhDB.json and
#: Salvage.json hold beside their lists): one row each in ``documents``, all in ``extra``.
HEADER_FILES = ("archetypes_file", "enhancements_file", "salvage_file")

# ------------------------------------------------------------------------------ checks


def _blank_to_null(e: pl.Expr) -> pl.Expr:
    return pl.when(e.str.strip_chars() == "").then(None).otherwise(e)


def _minus_one_to_null(e: pl.Expr) -> pl.Expr:
    return pl.when(e < 0).then(None).otherwise(e)


CLEANING = (
    Clean("trim_display_names", "powers", "display_name", lambda e: e.str.strip_chars(),
          "power display names lose surrounding white space"),
    Clean("blank_max_boosts", "powers", "max_boosts", _blank_to_null,
          "an empty MaxBoosts means 'not set'"),
    Clean("no_archetype", "powersets", "n_archetype", _minus_one_to_null,
          "nArchetype -1 means the powerset belongs to no archetype"),
    Clean("no_set_index", "enhancements", "set_index", _minus_one_to_null,
          "nIDSet -1 means the enhancement belongs to no set"),
    Clean("no_level_min", "enhancements", "level_min", _minus_one_to_null,
          "LevelMin -1 means no lower level limit"),
    Clean("no_level_max", "enhancements", "level_max", _minus_one_to_null,
          "LevelMax -1 means no upper level limit"),
    Clean("blank_set_uid", "enhancements", "set_uid", _blank_to_null,
          "an empty UIDSet means the enhancement belongs to no set"),
    Clean("blank_named_power", "power_effects", "named_power", _blank_to_null,
          "an empty PowerFullName means the effect names no power (its parent holds it)"),
)

RULES = (
    required("archetypes", "class_name"),
    required("archetypes", "display_name", severity="warning"),
    unique("archetypes", "class_name", severity="warning"),
    in_range("archetypes", "hitpoints", 0, 1_000_000),
    # SetName may be empty: 17 pet powersets of the full export (db/Other/_Villain_Pets.*) have
    # SetName "" and no powers. The column is NOT NULL; a missing SetName is caught by the
    # built-in powersets.set_name.storable rule, and "" is stored as it is.
    required("powersets", "full_name"),
    unique("powersets", "full_name"),
    in_range("powersets", "set_type", 0, 100),
    required("powers", "full_name", "power_name"),
    unique("powers", "full_name"),
    references("powers", "powerset_full_name", "powersets", "full_name"),
    references("powers", "full_set_name", "powersets", "full_name"),
    in_range("powers", "level", 0, 60),
    in_range("powers", "accuracy", 0, 100),
    in_range("powers", "end_cost", 0, 10_000),
    in_range("powers", "recharge_time", 0, 1_000_000),
    check("max_boosts_number", "powers",
          lambda: pl.col("max_boosts").str.contains(r"^\d+$"),
          "MaxBoosts must be a whole number", columns=("max_boosts",)),
    references("power_effects", "power_full_name", "powers", "full_name"),
    # An effect's PowerFullName names the power it comes from, often another one than the power
    # it sits in (1,560 effects of the full export: effects shared between archetypes' versions
    # of a power, pets, boosts); only a name the export does not hold is worth a word (2 in the
    # full export, both in the Temporary_Powers file it lacks).
    Rule("power_effects.named_power.known", "power_effects", "references", ("named_power",),
         "warning", ref=("powers", "full_name"),
         message="PowerFullName, when set, should name a power of this export"),
    in_range("power_effects", "probability", 0, 1),
    in_range("power_effects", "effect_type", 0, 500),
    one_of("power_effects", "to_who", (0, 1, 2, 3, 4)),
    one_of("power_effects", "pv_mode", (0, 1, 2)),
    required("enhancements", "uid", "name"),
    unique("enhancements", "uid"),
    references("enhancements", "set_uid", "enhancement_sets", "uid"),
    in_range("enhancements", "level_min", 0, 60),
    in_range("enhancements", "level_max", 0, 60),
    required("enhancement_sets", "uid", "display_name"),
    unique("enhancement_sets", "uid"),
    references("set_bonuses", "set_uid", "enhancement_sets", "uid"),
    in_range("set_bonuses", "slotted", 0, 10),
    references("set_special_bonuses", "set_uid", "enhancement_sets", "uid"),
    required("salvage", "internal_name"),
    unique("salvage", "internal_name"),
    in_range("salvage", "level_min", 0, 60),
)

# ------------------------------------------------------------------------------ target tables


def _cols(*spec: str) -> tuple[Column, ...]:
    out = []
    for s in spec:
        name, _, type_ = s.partition(":")
        nullable = not type_.endswith("!")
        out.append(Column(name, type_.rstrip("!"), nullable))
    return tuple(out)


TABLES = (
    Table("archetypes", _cols(
        "archetype_id:integer!", "class_name:text!", "display_name:text!", "class_type:integer",
        "hitpoints:bigint", "hp_cap:double precision", "res_cap:double precision",
        "damage_cap:double precision", "recharge_cap:double precision", "regen_cap:double precision",
        "recovery_cap:double precision", "perception_cap:double precision",
        "base_recovery:double precision", "base_regen:double precision",
        "base_threat:double precision", "primary_group:text", "secondary_group:text",
        "epic_group:text", "playable:boolean", "hero:boolean", "origins:text[]",
        "desc_short:text", "desc_long:text", "extra:json!"), ("archetype_id",)),
    Table("powersets", _cols(
        "powerset_id:integer!", "full_name:text!", "set_name:text!", "display_name:text",
        "group_name:text", "set_type:integer", "archetype_id:integer", "at_class:text",
        "sub_name:text", "description:text", "source_file:text!", "extra:json!"), ("powerset_id",),
        unique=(("full_name",),),
        foreign_keys=(ForeignKey(("archetype_id",), "archetypes", ("archetype_id",)),)),
    Table("powers", _cols(
        "power_id:integer!", "powerset_id:integer!", "full_name:text!", "power_name:text!",
        "display_name:text", "level:integer", "power_type:integer", "accuracy:double precision",
        "end_cost:double precision", "recharge_time:double precision",
        "cast_time:double precision", "range:double precision", "radius:double precision",
        "arc:integer", "max_targets:integer", "target:integer", "effect_area:integer",
        "max_boosts:integer", "toggle_cost:double precision", "static_index:bigint",
        "boosts_allowed:text[]", "enhancements:bigint[]", "set_types:bigint[]",
        "desc_short:text", "desc_long:text", "extra:json!"), ("power_id",),
        unique=(("full_name",),),
        foreign_keys=(ForeignKey(("powerset_id",), "powersets", ("powerset_id",)),)),
    Table("power_effects", _cols(
        "effect_id:integer!", "power_id:integer!", "effect_index:integer!", "effect_type:integer",
        "damage_type:integer", "mez_type:integer", "mag:double precision",
        "scale:double precision", "probability:double precision", "duration:double precision",
        "modifier_table:text", "to_who:integer", "pv_mode:integer", "stacking:integer",
        "aspect:integer", "buffable:boolean", "resistible:boolean", "effect_name:text",
        "unique_id:bigint", "ticks:integer", "delayed_time:double precision", "extra:json!"), ("effect_id",),
        unique=(("power_id", "effect_index"),),
        foreign_keys=(ForeignKey(("power_id",), "powers", ("power_id",)),)),
    Table("power_requirements", _cols(
        "power_id:integer!", "kind:text!", "group_index:integer!", "position:integer!",
        "class_name:text", "required_power:text", "required_power_id:integer"),
        ("power_id", "kind", "group_index", "position"),
        foreign_keys=(ForeignKey(("power_id",), "powers", ("power_id",)),)),
    Table("enhancement_sets", _cols(
        "set_id:integer!", "uid:text!", "display_name:text!", "short_name:text",
        "description:text", "set_type:integer", "level_min:integer", "level_max:integer",
        "enhancement_ids:bigint[]", "image:text", "extra:json!"), ("set_id",), unique=(("uid",),)),
    Table("enhancements", _cols(
        "enhancement_id:integer!", "uid:text!", "name:text!", "short_name:text",
        "long_name:text", "description:text", "type_id:integer", "sub_type_id:integer",
        "class_ids:bigint[]", "set_id:integer", "level_min:integer", "level_max:integer",
        "is_unique:boolean", "superior:boolean", "is_proc:boolean",
        "probability:double precision", "effect_chance:double precision", "static_index:bigint",
        "recipe_name:text", "image:text", "extra:json!"), ("enhancement_id",), unique=(("uid",),),
        foreign_keys=(ForeignKey(("set_id",), "enhancement_sets", ("set_id",)),)),
    Table("set_bonuses", _cols(
        "set_id:integer!", "kind:text!", "bonus_index:integer!", "slotted:integer",
        "special:integer", "names:text[]", "power_indexes:bigint[]", "alt_string:text", "extra:json!"),
        ("set_id", "kind", "bonus_index"),
        foreign_keys=(ForeignKey(("set_id",), "enhancement_sets", ("set_id",)),)),
    Table("salvage", _cols(
        "salvage_id:integer!", "internal_name:text!", "external_name:text",
        "level_min:integer", "level_max:integer", "extra:json!"), ("salvage_id",),
        unique=(("internal_name",),)),
    Table("documents", _cols("document_id:integer!", "file:text!", "extra:json!"), ("document_id",),
          unique=(("file",),)),
)

# ------------------------------------------------------------------------------ transform


def _numbered(lf: pl.LazyFrame, by: list[str], name: str) -> pl.LazyFrame:
    """Number rows 1, 2, 3… as ``name`` in the order of ``by`` (deterministic surrogate keys).

    The numbers are worked out first, from ``by`` alone (sorted with each row's place, then put
    back in place order), and set beside the rows, which keep their order: sorting the level
    itself held all its columns at once (x10 copy: 460 MB for the effects)."""
    place = "__place"
    ids = (lf.select(by).with_row_index(place).sort(by).with_row_index(name, offset=1)
           .sort(place).select(pl.col(name).cast(pl.Int32)).collect(engine="streaming"))
    return pl.concat([lf, ids.lazy()], how="horizontal")


def transform(levels: Mapping[str, pl.LazyFrame]) -> dict[str, pl.LazyFrame]:
    """Accepted staged levels → the mids target tables."""
    archetypes = levels["archetypes"].with_columns(archetype_id=pl.col("_index").cast(pl.Int32))
    at_ids = archetypes.select("archetype_id")

    powersets = _numbered(levels["powersets"], ["full_name"], "powerset_id")
    powersets = powersets.join(
        at_ids.with_columns(n_archetype=pl.col("archetype_id")), on="n_archetype", how="left",
        maintain_order="left").with_columns(source_file=pl.col("_file"))

    ps_ids = powersets.select(pl.col("full_name").alias("powerset_full_name"), "powerset_id")
    powers = _numbered(levels["powers"], ["full_name"], "power_id").join(
        ps_ids, on="powerset_full_name", how="inner", maintain_order="left")
    powers = powers.with_columns(pl.col("max_boosts").cast(pl.Int32, strict=False))

    power_ids = powers.select(pl.col("full_name").alias("power_full_name"), "power_id")
    effects = _numbered(levels["power_effects"], ["power_full_name", "_index"], "effect_id").join(
        power_ids, on="power_full_name", how="inner", maintain_order="left",
    ).with_columns(effect_index=pl.col("_index").cast(pl.Int32))

    requirements = _requirements(powers, power_ids)

    sets = levels["enhancement_sets"].with_columns(
        set_id=pl.col("_index").cast(pl.Int32), enhancement_ids=pl.col("enhancement_indexes"))
    set_ids = sets.select(pl.col("uid").alias("set_uid"), pl.col("set_id").alias("set_by_uid"))
    enhancements = levels["enhancements"].with_columns(
        enhancement_id=pl.col("_index").cast(pl.Int32),
    ).join(set_ids, on="set_uid", how="left", maintain_order="left").with_columns(
        # The numeric index wins; where it is missing the set's UID still names it.
        set_id=pl.coalesce(pl.col("set_index").cast(pl.Int32), pl.col("set_by_uid")),
    )
    bonuses = pl.concat([
        levels["set_bonuses"].with_columns(kind=pl.lit("bonus")),
        levels["set_special_bonuses"].with_columns(kind=pl.lit("special")),
    ]).join(set_ids, on="set_uid", how="inner", maintain_order="left").with_columns(
        set_id=pl.col("set_by_uid"), bonus_index=pl.col("_index").cast(pl.Int32))
    salvage = levels["salvage"].with_columns(salvage_id=pl.col("_index").cast(pl.Int32))
    documents = _numbered(pl.concat([levels[name] for name in HEADER_FILES], how="diagonal_relaxed"),
                          ["_file", "_record"], "document_id").with_columns(file=pl.col("_file"))

    return {
        "archetypes": archetypes,
        "powersets": powersets,
        "powers": powers,
        "power_effects": effects,
        "power_requirements": requirements,
        "enhancement_sets": sets,
        "enhancements": enhancements,
        "set_bonuses": bonuses,
        "salvage": salvage,
        "documents": documents,
    }


def _requirements(powers: pl.LazyFrame, power_ids: pl.LazyFrame) -> pl.LazyFrame:
    base = powers.select("power_id", "requires_class", "requires_class_not",
                         "requires_power", "requires_power_not")
    classes = [
        base.select("power_id", pl.col(col).alias("class_name"))
        .with_columns(position=pl.int_ranges(pl.col("class_name").list.len()))
        .explode("class_name", "position")
        .filter(pl.col("class_name").is_not_null() & (pl.col("class_name") != ""))
        .with_columns(kind=pl.lit(kind), group_index=pl.lit(0), required_power=pl.lit(None, pl.String))
        for col, kind in (("requires_class", "class"), ("requires_class_not", "class_not"))
    ]
    power_reqs = [
        base.select("power_id", pl.col(col).alias("grp"))
        .with_columns(group_index=pl.int_ranges(pl.col("grp").list.len()))
        .explode("grp", "group_index")
        .with_columns(position=pl.int_ranges(pl.col("grp").list.len()))
        .explode("grp", "position")
        .rename({"grp": "required_power"})
        .filter(pl.col("required_power").is_not_null() & (pl.col("required_power") != ""))
        .with_columns(kind=pl.lit(kind), class_name=pl.lit(None, pl.String))
        for col, kind in (("requires_power", "power"), ("requires_power_not", "power_not"))
    ]
    cols = ["power_id", "kind", "group_index", "position", "class_name", "required_power"]
    reqs = pl.concat([f.select(cols) for f in (*classes, *power_reqs)], how="vertical_relaxed")
    return reqs.join(
        power_ids.rename({"power_full_name": "required_power", "power_id": "required_power_id"}),
        on="required_power", how="left", maintain_order="left",
    )


def extend(base: Dataset) -> Dataset:
    """The dataset mids.toml declares, with what a spec does not: rules, cleaning, tables,
    transform, post-load SQL, generator, bench and cached reads."""
    return replace(
        base,
        transform=transform,
        tables=TABLES,
        rules=RULES,
        cleaning=CLEANING,
        sql_dir=shipped("sql") / "mids",
        notes={
            "powersets": "one per db/**/*.json file",
            "powers": "Powers[] of each powerset",
            "power_effects": "Effects[] of each power",
            "power_requirements": "Requires.ClassName/ClassNameNot/PowerID/PowerIDNot entries",
            "set_bonuses": "Bonus[] plus the non-empty SpecialBonus[] of each set",
        },
        generator=GENERATOR,
        bench=BENCH,
        reads=reads(TABLES),
    )


DATASET = read_dataset(Path(__file__).with_name("mids.toml"), extend=extend)
VERSION = DATASET.version
