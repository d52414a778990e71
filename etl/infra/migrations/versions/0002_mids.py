"""The mids dataset's live schema: schema mids and its nine target tables, with keys and references.

Written out on purpose (not generated from etl.datasets.mids at run time): tests compare this
against the dataset's table definitions, so a change to either side shows up as a difference.

Revision ID: 0002_mids
Revises: 0001_ledger
Create Date: 2025-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002_mids"
down_revision: str | Sequence[str] | None = "0001_ledger"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "mids"


def upgrade() -> None:
    op.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
    op.create_table(
        "archetypes",
        sa.Column("archetype_id", sa.Integer(), nullable=False, autoincrement=False),
        sa.Column("class_name", sa.Text(), nullable=False, autoincrement=False),
        sa.Column("display_name", sa.Text(), nullable=False, autoincrement=False),
        sa.Column("class_type", sa.Integer(), nullable=True),
        sa.Column("hitpoints", sa.BigInteger(), nullable=True),
        sa.Column("hp_cap", postgresql.DOUBLE_PRECISION(), nullable=True),
        sa.Column("res_cap", postgresql.DOUBLE_PRECISION(), nullable=True),
        sa.Column("damage_cap", postgresql.DOUBLE_PRECISION(), nullable=True),
        sa.Column("recharge_cap", postgresql.DOUBLE_PRECISION(), nullable=True),
        sa.Column("regen_cap", postgresql.DOUBLE_PRECISION(), nullable=True),
        sa.Column("recovery_cap", postgresql.DOUBLE_PRECISION(), nullable=True),
        sa.Column("perception_cap", postgresql.DOUBLE_PRECISION(), nullable=True),
        sa.Column("base_recovery", postgresql.DOUBLE_PRECISION(), nullable=True),
        sa.Column("base_regen", postgresql.DOUBLE_PRECISION(), nullable=True),
        sa.Column("base_threat", postgresql.DOUBLE_PRECISION(), nullable=True),
        sa.Column("primary_group", sa.Text(), nullable=True),
        sa.Column("secondary_group", sa.Text(), nullable=True),
        sa.Column("epic_group", sa.Text(), nullable=True),
        sa.Column("playable", sa.Boolean(), nullable=True),
        sa.Column("hero", sa.Boolean(), nullable=True),
        sa.Column("origins", postgresql.ARRAY(sa.Text()), nullable=True),
        sa.Column("desc_short", sa.Text(), nullable=True),
        sa.Column("desc_long", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("archetype_id", name="archetypes_pkey"),
        schema=SCHEMA,
    )
    op.create_table(
        "powersets",
        sa.Column("powerset_id", sa.Integer(), nullable=False, autoincrement=False),
        sa.Column("full_name", sa.Text(), nullable=False, autoincrement=False),
        sa.Column("set_name", sa.Text(), nullable=False, autoincrement=False),
        sa.Column("display_name", sa.Text(), nullable=True),
        sa.Column("group_name", sa.Text(), nullable=True),
        sa.Column("set_type", sa.Integer(), nullable=True),
        sa.Column("archetype_id", sa.Integer(), nullable=True),
        sa.Column("at_class", sa.Text(), nullable=True),
        sa.Column("sub_name", sa.Text(), nullable=True),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("source_file", sa.Text(), nullable=False, autoincrement=False),
        sa.PrimaryKeyConstraint("powerset_id", name="powersets_pkey"),
        sa.UniqueConstraint("full_name", name="powersets_full_name_key"),
        sa.ForeignKeyConstraint(["archetype_id"], ["mids.archetypes.archetype_id"],
                                name="powersets_archetype_id_fkey"),
        schema=SCHEMA,
    )
    op.create_table(
        "powers",
        sa.Column("power_id", sa.Integer(), nullable=False, autoincrement=False),
        sa.Column("powerset_id", sa.Integer(), nullable=False, autoincrement=False),
        sa.Column("full_name", sa.Text(), nullable=False, autoincrement=False),
        sa.Column("power_name", sa.Text(), nullable=False, autoincrement=False),
        sa.Column("display_name", sa.Text(), nullable=True),
        sa.Column("level", sa.Integer(), nullable=True),
        sa.Column("power_type", sa.Integer(), nullable=True),
        sa.Column("accuracy", postgresql.DOUBLE_PRECISION(), nullable=True),
        sa.Column("end_cost", postgresql.DOUBLE_PRECISION(), nullable=True),
        sa.Column("recharge_time", postgresql.DOUBLE_PRECISION(), nullable=True),
        sa.Column("cast_time", postgresql.DOUBLE_PRECISION(), nullable=True),
        sa.Column("range", postgresql.DOUBLE_PRECISION(), nullable=True),
        sa.Column("radius", postgresql.DOUBLE_PRECISION(), nullable=True),
        sa.Column("arc", sa.Integer(), nullable=True),
        sa.Column("max_targets", sa.Integer(), nullable=True),
        sa.Column("target", sa.Integer(), nullable=True),
        sa.Column("effect_area", sa.Integer(), nullable=True),
        sa.Column("max_boosts", sa.Integer(), nullable=True),
        sa.Column("toggle_cost", postgresql.DOUBLE_PRECISION(), nullable=True),
        sa.Column("static_index", sa.BigInteger(), nullable=True),
        sa.Column("boosts_allowed", postgresql.ARRAY(sa.Text()), nullable=True),
        sa.Column("enhancements", postgresql.ARRAY(sa.BigInteger()), nullable=True),
        sa.Column("set_types", postgresql.ARRAY(sa.BigInteger()), nullable=True),
        sa.Column("desc_short", sa.Text(), nullable=True),
        sa.Column("desc_long", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("power_id", name="powers_pkey"),
        sa.UniqueConstraint("full_name", name="powers_full_name_key"),
        sa.ForeignKeyConstraint(["powerset_id"], ["mids.powersets.powerset_id"],
                                name="powers_powerset_id_fkey"),
        schema=SCHEMA,
    )
    op.create_table(
        "power_effects",
        sa.Column("effect_id", sa.Integer(), nullable=False, autoincrement=False),
        sa.Column("power_id", sa.Integer(), nullable=False, autoincrement=False),
        sa.Column("effect_index", sa.Integer(), nullable=False, autoincrement=False),
        sa.Column("effect_type", sa.Integer(), nullable=True),
        sa.Column("damage_type", sa.Integer(), nullable=True),
        sa.Column("mez_type", sa.Integer(), nullable=True),
        sa.Column("mag", postgresql.DOUBLE_PRECISION(), nullable=True),
        sa.Column("scale", postgresql.DOUBLE_PRECISION(), nullable=True),
        sa.Column("probability", postgresql.DOUBLE_PRECISION(), nullable=True),
        sa.Column("duration", postgresql.DOUBLE_PRECISION(), nullable=True),
        sa.Column("modifier_table", sa.Text(), nullable=True),
        sa.Column("to_who", sa.Integer(), nullable=True),
        sa.Column("pv_mode", sa.Integer(), nullable=True),
        sa.Column("stacking", sa.Integer(), nullable=True),
        sa.Column("aspect", sa.Integer(), nullable=True),
        sa.Column("buffable", sa.Boolean(), nullable=True),
        sa.Column("resistible", sa.Boolean(), nullable=True),
        sa.Column("effect_name", sa.Text(), nullable=True),
        sa.Column("unique_id", sa.BigInteger(), nullable=True),
        sa.Column("ticks", sa.Integer(), nullable=True),
        sa.Column("delayed_time", postgresql.DOUBLE_PRECISION(), nullable=True),
        sa.PrimaryKeyConstraint("effect_id", name="power_effects_pkey"),
        sa.UniqueConstraint("power_id", "effect_index", name="power_effects_power_id_effect_index_key"),
        sa.ForeignKeyConstraint(["power_id"], ["mids.powers.power_id"],
                                name="power_effects_power_id_fkey"),
        schema=SCHEMA,
    )
    op.create_table(
        "power_requirements",
        sa.Column("power_id", sa.Integer(), nullable=False, autoincrement=False),
        sa.Column("kind", sa.Text(), nullable=False, autoincrement=False),
        sa.Column("group_index", sa.Integer(), nullable=False, autoincrement=False),
        sa.Column("position", sa.Integer(), nullable=False, autoincrement=False),
        sa.Column("class_name", sa.Text(), nullable=True),
        sa.Column("required_power", sa.Text(), nullable=True),
        sa.Column("required_power_id", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("power_id", "kind", "group_index", "position",
                                name="power_requirements_pkey"),
        sa.ForeignKeyConstraint(["power_id"], ["mids.powers.power_id"],
                                name="power_requirements_power_id_fkey"),
        schema=SCHEMA,
    )
    op.create_table(
        "enhancement_sets",
        sa.Column("set_id", sa.Integer(), nullable=False, autoincrement=False),
        sa.Column("uid", sa.Text(), nullable=False, autoincrement=False),
        sa.Column("display_name", sa.Text(), nullable=False, autoincrement=False),
        sa.Column("short_name", sa.Text(), nullable=True),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("set_type", sa.Integer(), nullable=True),
        sa.Column("level_min", sa.Integer(), nullable=True),
        sa.Column("level_max", sa.Integer(), nullable=True),
        sa.Column("enhancement_ids", postgresql.ARRAY(sa.BigInteger()), nullable=True),
        sa.Column("image", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("set_id", name="enhancement_sets_pkey"),
        sa.UniqueConstraint("uid", name="enhancement_sets_uid_key"),
        schema=SCHEMA,
    )
    op.create_table(
        "enhancements",
        sa.Column("enhancement_id", sa.Integer(), nullable=False, autoincrement=False),
        sa.Column("uid", sa.Text(), nullable=False, autoincrement=False),
        sa.Column("name", sa.Text(), nullable=False, autoincrement=False),
        sa.Column("short_name", sa.Text(), nullable=True),
        sa.Column("long_name", sa.Text(), nullable=True),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("type_id", sa.Integer(), nullable=True),
        sa.Column("sub_type_id", sa.Integer(), nullable=True),
        sa.Column("class_ids", postgresql.ARRAY(sa.BigInteger()), nullable=True),
        sa.Column("set_id", sa.Integer(), nullable=True),
        sa.Column("level_min", sa.Integer(), nullable=True),
        sa.Column("level_max", sa.Integer(), nullable=True),
        sa.Column("is_unique", sa.Boolean(), nullable=True),
        sa.Column("superior", sa.Boolean(), nullable=True),
        sa.Column("is_proc", sa.Boolean(), nullable=True),
        sa.Column("probability", postgresql.DOUBLE_PRECISION(), nullable=True),
        sa.Column("effect_chance", postgresql.DOUBLE_PRECISION(), nullable=True),
        sa.Column("static_index", sa.BigInteger(), nullable=True),
        sa.Column("recipe_name", sa.Text(), nullable=True),
        sa.Column("image", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("enhancement_id", name="enhancements_pkey"),
        sa.UniqueConstraint("uid", name="enhancements_uid_key"),
        sa.ForeignKeyConstraint(["set_id"], ["mids.enhancement_sets.set_id"],
                                name="enhancements_set_id_fkey"),
        schema=SCHEMA,
    )
    op.create_table(
        "set_bonuses",
        sa.Column("set_id", sa.Integer(), nullable=False, autoincrement=False),
        sa.Column("kind", sa.Text(), nullable=False, autoincrement=False),
        sa.Column("bonus_index", sa.Integer(), nullable=False, autoincrement=False),
        sa.Column("slotted", sa.Integer(), nullable=True),
        sa.Column("special", sa.Integer(), nullable=True),
        sa.Column("names", postgresql.ARRAY(sa.Text()), nullable=True),
        sa.Column("power_indexes", postgresql.ARRAY(sa.BigInteger()), nullable=True),
        sa.Column("alt_string", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("set_id", "kind", "bonus_index", name="set_bonuses_pkey"),
        sa.ForeignKeyConstraint(["set_id"], ["mids.enhancement_sets.set_id"],
                                name="set_bonuses_set_id_fkey"),
        schema=SCHEMA,
    )
    op.create_table(
        "salvage",
        sa.Column("salvage_id", sa.Integer(), nullable=False, autoincrement=False),
        sa.Column("internal_name", sa.Text(), nullable=False, autoincrement=False),
        sa.Column("external_name", sa.Text(), nullable=True),
        sa.Column("level_min", sa.Integer(), nullable=True),
        sa.Column("level_max", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("salvage_id", name="salvage_pkey"),
        sa.UniqueConstraint("internal_name", name="salvage_internal_name_key"),
        schema=SCHEMA,
    )


def downgrade() -> None:
    # The mids schema also holds what loads added (indexes, the materialized view): drop it all.
    op.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
