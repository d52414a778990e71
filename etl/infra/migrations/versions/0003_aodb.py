"""The aodb dataset's live schema: schema aodb and its twelve target tables, with keys and references.

Written out on purpose (not generated from etl.datasets.aodb at run time): tests compare this
against the dataset's table definitions, so a change to either side shows up as a difference.

Revision ID: 0003_aodb
Revises: 0002_mids
Create Date: 2025-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003_aodb"
down_revision: str | Sequence[str] | None = "0002_mids"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "aodb"


def upgrade() -> None:
    op.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
    op.create_table(
        "items",
        sa.Column("aoid", sa.BigInteger(), nullable=False, autoincrement=False),
        sa.Column("name", sa.Text(), nullable=True),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("ql", sa.Integer(), nullable=True),
        sa.Column("item_class", sa.Integer(), nullable=True),
        sa.Column("is_nano", sa.Boolean(), nullable=False, autoincrement=False),
        sa.Column("db_type", sa.BigInteger(), nullable=True),
        sa.Column("version", sa.BigInteger(), nullable=True),
        sa.Column("source_file", sa.Text(), nullable=False, autoincrement=False),
        sa.Column("source_record", sa.BigInteger(), nullable=False, autoincrement=False),
        sa.PrimaryKeyConstraint("aoid", name="items_pkey"),
        schema=SCHEMA,
    )
    op.create_table(
        "stat_values",
        sa.Column("stat_value_id", sa.Integer(), nullable=False, autoincrement=False),
        sa.Column("stat", sa.Integer(), nullable=False, autoincrement=False),
        sa.Column("value", sa.BigInteger(), nullable=False, autoincrement=False),
        sa.PrimaryKeyConstraint("stat_value_id", name="stat_values_pkey"),
        sa.UniqueConstraint("stat", "value", name="stat_values_stat_value_key"),
        schema=SCHEMA,
    )
    op.create_table(
        "item_stats",
        sa.Column("aoid", sa.BigInteger(), nullable=False, autoincrement=False),
        sa.Column("position", sa.Integer(), nullable=False, autoincrement=False),
        sa.Column("stat_value_id", sa.Integer(), nullable=False, autoincrement=False),
        sa.PrimaryKeyConstraint("aoid", "position", name="item_stats_pkey"),
        sa.ForeignKeyConstraint(["aoid"], ["aodb.items.aoid"],
                                name="item_stats_aoid_fkey"),
        sa.ForeignKeyConstraint(["stat_value_id"], ["aodb.stat_values.stat_value_id"],
                                name="item_stats_stat_value_id_fkey"),
        schema=SCHEMA,
    )
    op.create_table(
        "criteria",
        sa.Column("criterion_id", sa.Integer(), nullable=False, autoincrement=False),
        sa.Column("value1", sa.BigInteger(), nullable=False, autoincrement=False),
        sa.Column("value2", sa.BigInteger(), nullable=False, autoincrement=False),
        sa.Column("operator", sa.Integer(), nullable=False, autoincrement=False),
        sa.PrimaryKeyConstraint("criterion_id", name="criteria_pkey"),
        sa.UniqueConstraint("value1", "value2", "operator", name="criteria_value1_value2_operator_key"),
        schema=SCHEMA,
    )
    op.create_table(
        "actions",
        sa.Column("action_id", sa.BigInteger(), nullable=False, autoincrement=False),
        sa.Column("aoid", sa.BigInteger(), nullable=False, autoincrement=False),
        sa.Column("position", sa.Integer(), nullable=False, autoincrement=False),
        sa.Column("action", sa.Integer(), nullable=False, autoincrement=False),
        sa.PrimaryKeyConstraint("action_id", name="actions_pkey"),
        sa.UniqueConstraint("aoid", "position", name="actions_aoid_position_key"),
        sa.ForeignKeyConstraint(["aoid"], ["aodb.items.aoid"],
                                name="actions_aoid_fkey"),
        schema=SCHEMA,
    )
    op.create_table(
        "action_criteria",
        sa.Column("action_id", sa.BigInteger(), nullable=False, autoincrement=False),
        sa.Column("position", sa.Integer(), nullable=False, autoincrement=False),
        sa.Column("criterion_id", sa.Integer(), nullable=False, autoincrement=False),
        sa.PrimaryKeyConstraint("action_id", "position", name="action_criteria_pkey"),
        sa.ForeignKeyConstraint(["action_id"], ["aodb.actions.action_id"],
                                name="action_criteria_action_id_fkey"),
        sa.ForeignKeyConstraint(["criterion_id"], ["aodb.criteria.criterion_id"],
                                name="action_criteria_criterion_id_fkey"),
        schema=SCHEMA,
    )
    op.create_table(
        "spell_data",
        sa.Column("spell_data_id", sa.BigInteger(), nullable=False, autoincrement=False),
        sa.Column("aoid", sa.BigInteger(), nullable=False, autoincrement=False),
        sa.Column("position", sa.Integer(), nullable=False, autoincrement=False),
        sa.Column("event", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("spell_data_id", name="spell_data_pkey"),
        sa.UniqueConstraint("aoid", "position", name="spell_data_aoid_position_key"),
        sa.ForeignKeyConstraint(["aoid"], ["aodb.items.aoid"],
                                name="spell_data_aoid_fkey"),
        schema=SCHEMA,
    )
    op.create_table(
        "spells",
        sa.Column("spell_entry_id", sa.BigInteger(), nullable=False, autoincrement=False),
        sa.Column("spell_data_id", sa.BigInteger(), nullable=False, autoincrement=False),
        sa.Column("position", sa.Integer(), nullable=False, autoincrement=False),
        sa.Column("spell_id", sa.BigInteger(), nullable=False, autoincrement=False),
        sa.Column("target", sa.Integer(), nullable=True),
        sa.Column("tick_count", sa.Integer(), nullable=True),
        sa.Column("tick_interval", sa.BigInteger(), nullable=True),
        sa.Column("spell_format", sa.Text(), nullable=True),
        sa.Column("stat", sa.Integer(), nullable=True),
        sa.Column("amount", sa.BigInteger(), nullable=True),
        sa.Column("params", postgresql.JSONB(astext_type=sa.Text()), nullable=False, autoincrement=False),
        sa.PrimaryKeyConstraint("spell_entry_id", name="spells_pkey"),
        sa.UniqueConstraint("spell_data_id", "position", name="spells_spell_data_id_position_key"),
        sa.ForeignKeyConstraint(["spell_data_id"], ["aodb.spell_data.spell_data_id"],
                                name="spells_spell_data_id_fkey"),
        schema=SCHEMA,
    )
    op.create_table(
        "spell_criteria",
        sa.Column("spell_entry_id", sa.BigInteger(), nullable=False, autoincrement=False),
        sa.Column("position", sa.Integer(), nullable=False, autoincrement=False),
        sa.Column("criterion_id", sa.Integer(), nullable=False, autoincrement=False),
        sa.PrimaryKeyConstraint("spell_entry_id", "position", name="spell_criteria_pkey"),
        sa.ForeignKeyConstraint(["spell_entry_id"], ["aodb.spells.spell_entry_id"],
                                name="spell_criteria_spell_entry_id_fkey"),
        sa.ForeignKeyConstraint(["criterion_id"], ["aodb.criteria.criterion_id"],
                                name="spell_criteria_criterion_id_fkey"),
        schema=SCHEMA,
    )
    op.create_table(
        "attack_defense",
        sa.Column("aoid", sa.BigInteger(), nullable=False, autoincrement=False),
        sa.Column("kind", sa.Text(), nullable=False, autoincrement=False),
        sa.Column("position", sa.Integer(), nullable=False, autoincrement=False),
        sa.Column("stat", sa.Integer(), nullable=False, autoincrement=False),
        sa.Column("value", sa.BigInteger(), nullable=False, autoincrement=False),
        sa.PrimaryKeyConstraint("aoid", "kind", "position", name="attack_defense_pkey"),
        sa.ForeignKeyConstraint(["aoid"], ["aodb.items.aoid"],
                                name="attack_defense_aoid_fkey"),
        schema=SCHEMA,
    )
    op.create_table(
        "animation_mesh",
        sa.Column("aoid", sa.BigInteger(), nullable=False, autoincrement=False),
        sa.Column("animation_stat", sa.Integer(), nullable=True),
        sa.Column("animation_value", sa.BigInteger(), nullable=True),
        sa.Column("mesh_stat", sa.Integer(), nullable=True),
        sa.Column("mesh_value", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("aoid", name="animation_mesh_pkey"),
        sa.ForeignKeyConstraint(["aoid"], ["aodb.items.aoid"],
                                name="animation_mesh_aoid_fkey"),
        schema=SCHEMA,
    )
    op.create_table(
        "shop_hash",
        sa.Column("aoid", sa.BigInteger(), nullable=False, autoincrement=False),
        sa.Column("position", sa.Integer(), nullable=False, autoincrement=False),
        sa.Column("hash", sa.Text(), nullable=True),
        sa.Column("min_level", sa.Integer(), nullable=True),
        sa.Column("max_level", sa.Integer(), nullable=True),
        sa.Column("base_amount", sa.Integer(), nullable=True),
        sa.Column("regen_amount", sa.Integer(), nullable=True),
        sa.Column("regen_interval", sa.Integer(), nullable=True),
        sa.Column("spawn_chance", sa.Integer(), nullable=True),
        sa.Column("entry", postgresql.JSONB(astext_type=sa.Text()), nullable=False, autoincrement=False),
        sa.PrimaryKeyConstraint("aoid", "position", name="shop_hash_pkey"),
        sa.ForeignKeyConstraint(["aoid"], ["aodb.items.aoid"],
                                name="shop_hash_aoid_fkey"),
        schema=SCHEMA,
    )


def downgrade() -> None:
    # The aodb schema also holds what loads added (indexes): drop it all.
    op.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
