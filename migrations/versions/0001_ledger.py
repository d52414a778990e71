"""The run ledger: schema etl, tables etl.runs and etl.load_steps.

Revision ID: 0001_ledger
Revises:
Create Date: 2025-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001_ledger"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # env.py creates the schema before Alembic's version table; this keeps the script complete
    # when run on its own (offline SQL).
    op.execute("CREATE SCHEMA IF NOT EXISTS etl")
    op.create_table(
        "runs",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("dataset", sa.Text(), nullable=False),
        sa.Column("run_id", sa.Text(), nullable=False),
        sa.Column("manifest_sha256", sa.Text(), nullable=True),
        sa.Column("mode", sa.Text(), nullable=True),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("started_at", sa.TIMESTAMP(timezone=True), server_default=sa.text("now()"),
                  nullable=False),
        sa.Column("ended_at", sa.TIMESTAMP(timezone=True), nullable=True),
        sa.Column("phases", postgresql.JSONB(), nullable=True),
        sa.Column("rows", postgresql.JSONB(), nullable=True),
        sa.Column("peak_rss", sa.BigInteger(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("host", sa.Text(), nullable=True),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="runs_pkey"),
        schema="etl",
    )
    op.create_index("runs_dataset_started_at_idx", "runs", ["dataset", "started_at"], schema="etl")
    op.create_table(
        "load_steps",
        sa.Column("run", sa.BigInteger(), nullable=False),
        sa.Column("step", sa.Text(), nullable=False),
        sa.Column("done_at", sa.TIMESTAMP(timezone=True), server_default=sa.text("now()"),
                  nullable=False),
        sa.Column("detail", postgresql.JSONB(), nullable=True),
        sa.ForeignKeyConstraint(["run"], ["etl.runs.id"], name="load_steps_run_fkey", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("run", "step", name="load_steps_pkey"),
        schema="etl",
    )


def downgrade() -> None:
    # Schema etl stays: Alembic's version table lives in it.
    op.drop_table("load_steps", schema="etl")
    op.drop_index("runs_dataset_started_at_idx", table_name="runs", schema="etl")
    op.drop_table("runs", schema="etl")
