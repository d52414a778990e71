"""Read-cache generations: etl.generations (one row per dataset, bumped by every swap) and
etl.instance (a random id naming this database in the shared Redis cache).

Revision ID: 0004_generations
Revises: 0001_ledger
Create Date: 2025-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004_generations"
down_revision: str | Sequence[str] | None = "0001_ledger"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "generations",
        sa.Column("dataset", sa.Text(), nullable=False),
        sa.Column("generation", sa.BigInteger(), nullable=False),
        sa.Column("run_id", sa.Text(), nullable=True),
        sa.Column("ledger_id", sa.BigInteger(), nullable=True),
        sa.Column("swapped_at", sa.TIMESTAMP(timezone=True), server_default=sa.text("now()"),
                  nullable=False),
        sa.PrimaryKeyConstraint("dataset", name="generations_pkey"),
        schema="etl",
    )
    op.create_table(
        "instance",
        sa.Column("singleton", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("id", postgresql.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("created_at", sa.TIMESTAMP(timezone=True), server_default=sa.text("now()"),
                  nullable=False),
        sa.PrimaryKeyConstraint("singleton", name="instance_pkey"),
        sa.CheckConstraint("singleton", name="instance_singleton_check"),
        schema="etl",
    )
    op.execute("INSERT INTO etl.instance DEFAULT VALUES")


def downgrade() -> None:
    op.drop_table("instance", schema="etl")
    op.drop_table("generations", schema="etl")
