"""Each dataset's live schema, derived from the dataset's tables (defined once, in the dataset).

The Alembic migrations manage the toolkit's own tables only (the ledger, schema ``etl``). A
dataset's live schema is what its last full load swapped in, built from :attr:`Dataset.tables`
by :mod:`etl.infra.schema`; a new dataset version needs no migration, its next full load
builds the new schema. Before any load, :func:`ensure_live_schemas` (``etl db upgrade``) creates
the empty tables with their keys, so readers and merge loads find them; an existing live schema
is never changed here, only compared (:func:`live_schema_drift`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from etl.dataset import Dataset
from etl.infra import pg
from etl.infra.schema import constraints_sql, create_tables_sql, schema_diff, table_metadata

log = logging.getLogger(__name__)


def ensure_live_schemas(url: str, datasets: Iterable[Dataset]) -> list[str]:
    """Create the live schema of each dataset that has none (tables, keys, references), each in
    one transaction; the names of the schemas created."""
    created = []
    with pg.connect(url, autocommit=False) as conn:
        for ds in datasets:
            exists = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (ds.name,)).fetchone()
            if exists:
                continue
            conn.execute(f"CREATE SCHEMA {pg.quote_ident(ds.name)}")
            for stmt in [*create_tables_sql(ds, ds.name), *constraints_sql(ds, ds.name)]:
                conn.execute(stmt)
            conn.commit()
            created.append(ds.name)
            log.info("created the live schema %s (%d tables) from the dataset's tables",
                     ds.name, len(ds.tables))
    return created


def live_schema_drift(url: str, dataset: Dataset) -> list[Any]:
    """How the live schema differs from the dataset's tables (Alembic's autogenerate diff; empty
    when they agree). A difference is fixed by the next full load, which builds the schema anew."""
    import sqlalchemy as sa

    engine = sa.create_engine(pg.sqlalchemy_url(url), poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            return schema_diff(conn, table_metadata(dataset))
    finally:
        engine.dispose()
