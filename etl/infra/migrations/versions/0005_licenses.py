"""The licenses dataset's live schema: schema licenses with datasets, images and search_results.

Written out on purpose (not generated from etl.datasets.licenses at run time): tests compare
this against the dataset's table definitions, so a change to either side shows up as a
difference. Merge loads (``etl load --mode merge``) upsert into these tables.

Revision ID: 0005_licenses
Revises: 0004_generations
Create Date: 2025-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005_licenses"
down_revision: str | Sequence[str] | None = "0004_generations"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "licenses"


def upgrade() -> None:
    op.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
    op.create_table(
        "datasets",
        sa.Column("tag", sa.Text(), nullable=False, autoincrement=False),
        sa.Column("kind", sa.Text(), nullable=False, autoincrement=False),
        sa.Column("created", sa.TIMESTAMP(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("tag", name="datasets_pkey"),
        schema=SCHEMA,
    )
    op.create_table(
        "images",
        sa.Column("sha256", sa.Text(), nullable=False, autoincrement=False),
        sa.Column("size", sa.BigInteger(), nullable=False, autoincrement=False),
        sa.Column("width", sa.Integer(), nullable=True),
        sa.Column("height", sa.Integer(), nullable=True),
        sa.Column("path", sa.Text(), nullable=False, autoincrement=False),
        sa.PrimaryKeyConstraint("sha256", name="images_pkey"),
        schema=SCHEMA,
    )
    op.create_table(
        "search_results",
        sa.Column("dataset", sa.Text(), nullable=False, autoincrement=False),
        sa.Column("state", sa.Text(), nullable=False, autoincrement=False),
        sa.Column("search_name", sa.Text(), nullable=False, autoincrement=False),
        sa.Column("license_key", sa.Text(), nullable=False, autoincrement=False),
        sa.Column("license_number", sa.Text(), nullable=True),
        sa.Column("search_timestamp", sa.TIMESTAMP(timezone=True), nullable=True),
        sa.Column("license_status", sa.Text(), nullable=True),
        sa.Column("license_type", sa.Text(), nullable=True),
        sa.Column("issue_date", sa.Date(), nullable=True),
        sa.Column("expiration_date", sa.Date(), nullable=True),
        sa.Column("licensee", sa.Text(), nullable=True),
        sa.Column("street", sa.Text(), nullable=True),
        sa.Column("suite", sa.Text(), nullable=True),
        sa.Column("city", sa.Text(), nullable=True),
        sa.Column("address_state", sa.Text(), nullable=True),
        sa.Column("zip_code", sa.Text(), nullable=True),
        sa.Column("result_status", sa.Text(), nullable=True),
        sa.Column("result_type", sa.Text(), nullable=True),
        sa.Column("image_sha256", sa.Text(), nullable=True),
        sa.Column("source_file", sa.Text(), nullable=False, autoincrement=False),
        sa.Column("raw", postgresql.JSONB(astext_type=sa.Text()), nullable=False, autoincrement=False),
        sa.PrimaryKeyConstraint("dataset", "state", "search_name", "license_key",
                                name="search_results_pkey"),
        sa.ForeignKeyConstraint(["dataset"], ["licenses.datasets.tag"],
                                name="search_results_dataset_fkey"),
        sa.ForeignKeyConstraint(["image_sha256"], ["licenses.images.sha256"],
                                name="search_results_image_sha256_fkey"),
        schema=SCHEMA,
    )


def downgrade() -> None:
    # The licenses schema also holds what loads added (indexes): drop it all.
    op.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
