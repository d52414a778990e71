"""aodb: an ``extra`` json column on every table that holds one row per source record.

It keeps, as JSON text, every key of the record that no typed column holds exactly (see
``etl/stage/extra.py``), so each record of the export can be rebuilt from its row. Rows loaded
before this revision get ``{}`` (the default is dropped again: loads always fill the column).

Revision ID: 0007_aodb_extra
Revises: 0006_mids_extra
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0007_aodb_extra"
down_revision: str | Sequence[str] | None = "0006_mids_extra"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "aodb"
TABLES = ("items", "item_stats", "actions", "action_criteria", "spell_data", "spells",
          "spell_criteria", "attack_defense")


def upgrade() -> None:
    for table in TABLES:
        op.add_column(table, sa.Column("extra", postgresql.JSON(), nullable=False,
                                       server_default=sa.text("'{}'::json")), schema=SCHEMA)
        op.alter_column(table, "extra", server_default=None, schema=SCHEMA)


def downgrade() -> None:
    for table in TABLES:
        op.drop_column(table, "extra", schema=SCHEMA)
