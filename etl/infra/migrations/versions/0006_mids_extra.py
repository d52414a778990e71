"""mids: the header files' own keys (table ``documents``), and an ``extra`` json column on
every table that holds one row per source record.

It keeps, as JSON text, every key of the record that no typed column holds exactly (see
``etl/stage/extra.py``), so each record of the export can be rebuilt from its row. Rows loaded
before this revision get ``{}`` (the default is dropped again: loads always fill the column).

Revision ID: 0006_mids_extra
Revises: 0005_licenses
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006_mids_extra"
down_revision: str | Sequence[str] | None = "0005_licenses"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "mids"
TABLES = ("archetypes", "powersets", "powers", "power_effects", "enhancement_sets", "enhancements",
          "set_bonuses", "salvage")


def upgrade() -> None:
    op.create_table(
        "documents",
        sa.Column("document_id", sa.Integer(), nullable=False, autoincrement=False),
        sa.Column("file", sa.Text(), nullable=False),
        sa.Column("extra", postgresql.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("document_id", name="documents_pkey"),
        sa.UniqueConstraint("file", name="documents_file_key"),
        schema=SCHEMA,
    )
    for table in TABLES:
        op.add_column(table, sa.Column("extra", postgresql.JSON(), nullable=False,
                                       server_default=sa.text("'{}'::json")), schema=SCHEMA)
        op.alter_column(table, "extra", server_default=None, schema=SCHEMA)


def downgrade() -> None:
    op.drop_table("documents", schema=SCHEMA)
    for table in TABLES:
        op.drop_column(table, "extra", schema=SCHEMA)
