"""Alembic environment: the run ledger and the read cache's tables (schema ``etl``).

The datasets' live schemas are not migrated: each is built from its dataset's tables by every
full load (and created empty by ``etl db upgrade``, see :mod:`etl.infra.live`).

Run through ``etl db upgrade`` (or :func:`etl.infra.ledger.upgrade`), which builds the Config in code;
an ``alembic.ini`` is not needed. Alembic's version table lives in schema ``etl``.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import context

from etl.infra.pg import lock_key
from etl.infra.schema import LEDGER_SCHEMA, ledger_metadata

config = context.config

target = ledger_metadata()
SCHEMAS = {LEDGER_SCHEMA}


def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    """Autogenerate looks at the ledger's schema only."""
    if type_ == "schema":
        return name in SCHEMAS
    if type_ == "table":
        return name != "alembic_version"
    return True


def _options() -> dict[str, Any]:
    return {
        "target_metadata": target,
        "version_table_schema": LEDGER_SCHEMA,
        "include_schemas": True,
        "include_name": include_name,
        "compare_type": True,
    }


def run_migrations_offline() -> None:
    """Write the SQL instead of running it (``alembic upgrade head --sql``)."""
    url = config.attributes.get("url") or config.get_main_option("sqlalchemy.url")
    context.configure(url=url, literal_binds=True, dialect_opts={"paramstyle": "named"}, **_options())
    with context.begin_transaction():
        # The version table is created inside schema etl, so the schema comes first.
        context.execute(f"CREATE SCHEMA IF NOT EXISTS {LEDGER_SCHEMA}")
        context.run_migrations()


def run_migrations_online() -> None:
    url = config.attributes.get("url") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no database URL: run `etl db upgrade` or set sqlalchemy.url")
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    with engine.connect() as connection:
        # One migrator at a time: a second `etl db upgrade` waits, then finds nothing to do.
        connection.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": lock_key("migrations")})
        try:
            connection.execute(sa.text(f"CREATE SCHEMA IF NOT EXISTS {LEDGER_SCHEMA}"))
            connection.commit()
            context.configure(connection=connection, **_options())
            with context.begin_transaction():
                context.run_migrations()
            connection.commit()
        finally:
            connection.rollback()
            connection.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": lock_key("migrations")})
            connection.commit()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
