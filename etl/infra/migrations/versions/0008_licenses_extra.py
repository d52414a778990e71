"""licenses: every result file kept whole (``search_files``) and an ``extra`` json column on
``search_results`` for the keys of a license record that no typed column holds.

Rows loaded before this revision get ``{}`` (the default is dropped again: loads always fill
the column).

Revision ID: 0008_licenses_extra
Revises: 0007_aodb_extra
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0008_licenses_extra"
down_revision: str | Sequence[str] | None = "0007_aodb_extra"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "licenses"


def upgrade() -> None:
    op.add_column("search_results", sa.Column("extra", postgresql.JSON(), nullable=False,
                                              server_default=sa.text("'{}'::json")), schema=SCHEMA)
    op.alter_column("search_results", "extra", server_default=None, schema=SCHEMA)
    op.create_table(
        "search_files",
        sa.Column("dataset", sa.Text(), nullable=False),
        sa.Column("source_file", sa.Text(), nullable=False),
        sa.Column("raw", postgresql.JSONB(), nullable=False),
        sa.Column("extra", postgresql.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("dataset", "source_file", name="search_files_pkey"),
        sa.ForeignKeyConstraint(["dataset"], [f"{SCHEMA}.datasets.tag"],
                                name="search_files_dataset_fkey"),
        schema=SCHEMA,
    )


def downgrade() -> None:
    op.drop_table("search_files", schema=SCHEMA)
    op.drop_column("search_results", "extra", schema=SCHEMA)
