"""Target-table DDL from a dataset description, and the toolkit's own ledger tables.

Two views of the same tables:

* :func:`table_metadata` / :func:`ledger_metadata`: SQLAlchemy ``MetaData`` (what Alembic's
  autogenerate compares the live database against);
* :func:`create_tables_sql` + :func:`constraints_sql`: plain SQL for the loader, which creates bare
  tables in a build schema, bulk-loads them, and only then adds keys and references.

Both give the same schema: same column types, nullability and constraint names. Constraint
names follow PostgreSQL's own defaults (``<table>_pkey``, ``<table>_<cols>_key``,
``<table>_<cols>_fkey``) but are always given explicitly, so they are the same in every schema.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from etl.dataset import Dataset, ForeignKey, Table
from etl.infra.pg import quote_ident

#: The schema of the toolkit's own tables (run ledger, Alembic's version table).
LEDGER_SCHEMA = "etl"

#: PostgreSQL's identifier limit (NAMEDATALEN - 1).
MAX_IDENTIFIER = 63

_TYPES: dict[str, Any] = {
    "bigint": sa.BigInteger,
    "integer": sa.Integer,
    "smallint": sa.SmallInteger,
    "double precision": postgresql.DOUBLE_PRECISION,
    "real": postgresql.REAL,
    "boolean": sa.Boolean,
    "text": sa.Text,
    "jsonb": postgresql.JSONB,
    "json": postgresql.JSON,
    "date": sa.Date,
    "timestamptz": lambda: sa.TIMESTAMP(timezone=True),
}


def sa_type(pg_type: str) -> Any:
    """The SQLAlchemy type of a target column typed ``pg_type`` (``"bigint"``, ``"text[]"``)."""
    if pg_type.endswith("[]"):
        inner = pg_type[:-2]
        if inner.endswith("[]"):
            # PostgreSQL arrays have no fixed dimension count in the catalog: text[][] is text[].
            return sa_type(inner)
        return postgresql.ARRAY(sa_type(inner))
    try:
        return _TYPES[pg_type]()
    except KeyError:
        raise ValueError(f"unsupported column type {pg_type!r}; known: {', '.join(_TYPES)} "
                         "and arrays of them (type[])") from None


def _check_type(pg_type: str) -> str:
    sa_type(pg_type)  # raises on an unknown type
    return pg_type


# ------------------------------------------------------------------------------ constraint names


def _name(stem: str, suffix: str) -> str:
    """``<stem><suffix>``, or when that is over PostgreSQL's 63 bytes (which it would truncate,
    making two long names one), the stem cut short with a hash of the whole name before the
    suffix: deterministic, unique, still telling what it is.

    >>> _name("x" * 70, "_pkey")
    'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx_d221601c_pkey'
    """
    name = stem + suffix
    if len(name.encode()) <= MAX_IDENTIFIER:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    room = MAX_IDENTIFIER - len(suffix.encode()) - len(digest) - 1
    cut = stem.encode()[:room].decode(errors="ignore")  # never half a character
    return f"{cut}_{digest}{suffix}"


def pkey_name(table: Table) -> str:
    return _name(table.name, "_pkey")


def unique_name(table: Table, columns: Iterable[str]) -> str:
    return _name(f"{table.name}_{'_'.join(columns)}", "_key")


def fkey_name(table: Table, fk: ForeignKey) -> str:
    return _name(f"{table.name}_{'_'.join(fk.columns)}", "_fkey")


def fkey_index_name(table: Table, fk: ForeignKey) -> str:
    return _name(f"{table.name}_{'_'.join(fk.columns)}", "_fkey_idx")


def uncovered_foreign_keys(table: Table) -> list[ForeignKey]:
    """``table``'s foreign keys that no key of its own can serve: their columns are not the leading
    columns of the primary key or of a unique key. PostgreSQL checks a reference on every delete
    of a referenced row; without an index on the referencing columns each check reads the whole
    table, so deleting N referenced rows costs N scans (a merge with ``--delete-missing``)."""
    keys = [tuple(table.primary_key), *(tuple(u) for u in table.unique)]
    out = []
    for fk in table.foreign_keys:
        cols = tuple(fk.columns)
        if not any(k[:len(cols)] == cols for k in keys):
            out.append(fk)
    return out


# ------------------------------------------------------------------------------ SQLAlchemy metadata


def table_metadata(dataset: Dataset, schema: str | None = None,
                   metadata: sa.MetaData | None = None) -> sa.MetaData:
    """The dataset's target tables, with keys and references, in ``schema`` (default: the
    dataset's name). Pass ``metadata`` to add them to an existing collection."""
    schema = schema or dataset.name
    md = metadata if metadata is not None else sa.MetaData()
    tables: dict[str, sa.Table] = {}
    for t in dataset.tables:
        pk = set(t.primary_key)
        # autoincrement=False: keys come from the transform, never from a sequence (SERIAL).
        columns = [sa.Column(c.name, sa_type(c.type), nullable=c.nullable and c.name not in pk,
                             autoincrement=False) for c in t.columns]
        constraints: list[sa.Constraint] = [sa.PrimaryKeyConstraint(*t.primary_key, name=pkey_name(t))]
        constraints += [sa.UniqueConstraint(*u, name=unique_name(t, u)) for u in t.unique]
        indexes = [sa.Index(fkey_index_name(t, fk), *fk.columns) for fk in uncovered_foreign_keys(t)]
        tables[t.name] = sa.Table(t.name, md, *columns, *constraints, *indexes, schema=schema)
    for t in dataset.tables:
        for fk in t.foreign_keys:
            if fk.table not in tables:
                raise ValueError(f"dataset {dataset.name}: {t.name} references unknown table {fk.table}")
            ref = tables[fk.table]
            tables[t.name].append_constraint(sa.ForeignKeyConstraint(
                list(fk.columns), [ref.c[c] for c in fk.ref_columns], name=fkey_name(t, fk)))
    return md


def ledger_metadata(metadata: sa.MetaData | None = None) -> sa.MetaData:
    """The run ledger: ``etl.runs`` (one row per load), ``etl.load_steps`` (resume points), and the
    read cache's ``etl.generations`` and ``etl.instance``."""
    md = metadata if metadata is not None else sa.MetaData()
    sa.Table(
        "runs", md,
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), nullable=False),
        sa.Column("dataset", sa.Text, nullable=False),
        sa.Column("run_id", sa.Text, nullable=False),
        sa.Column("manifest_sha256", sa.Text),
        sa.Column("mode", sa.Text),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("started_at", sa.TIMESTAMP(timezone=True), nullable=False,
                  server_default=sa.text("now()")),
        sa.Column("ended_at", sa.TIMESTAMP(timezone=True)),
        sa.Column("phases", postgresql.JSONB),
        sa.Column("rows", postgresql.JSONB),
        sa.Column("peak_rss", sa.BigInteger),
        sa.Column("error", sa.Text),
        sa.Column("host", sa.Text),
        sa.Column("pid", sa.Integer),
        sa.PrimaryKeyConstraint("id", name="runs_pkey"),
        sa.Index("runs_dataset_started_at_idx", "dataset", "started_at"),
        schema=LEDGER_SCHEMA,
    )
    sa.Table(
        "load_steps", md,
        sa.Column("run", sa.BigInteger, nullable=False),
        sa.Column("step", sa.Text, nullable=False),
        sa.Column("done_at", sa.TIMESTAMP(timezone=True), nullable=False,
                  server_default=sa.text("now()")),
        sa.Column("detail", postgresql.JSONB),
        sa.PrimaryKeyConstraint("run", "step", name="load_steps_pkey"),
        sa.ForeignKeyConstraint(["run"], [f"{LEDGER_SCHEMA}.runs.id"], name="load_steps_run_fkey",
                                ondelete="CASCADE"),
        schema=LEDGER_SCHEMA,
    )
    # The read cache (etl.infra.cache, migration 0004): each dataset's generation, bumped by every swap,
    # and the random id naming this database in a shared Redis.
    sa.Table(
        "generations", md,
        sa.Column("dataset", sa.Text, nullable=False),
        sa.Column("generation", sa.BigInteger, nullable=False),
        sa.Column("run_id", sa.Text),
        sa.Column("ledger_id", sa.BigInteger),
        sa.Column("swapped_at", sa.TIMESTAMP(timezone=True), nullable=False,
                  server_default=sa.text("now()")),
        sa.PrimaryKeyConstraint("dataset", name="generations_pkey"),
        schema=LEDGER_SCHEMA,
    )
    sa.Table(
        "instance", md,
        sa.Column("singleton", sa.Boolean, nullable=False, server_default=sa.text("true")),
        sa.Column("id", postgresql.UUID, nullable=False, server_default=sa.text("gen_random_uuid()")),
        sa.Column("created_at", sa.TIMESTAMP(timezone=True), nullable=False,
                  server_default=sa.text("now()")),
        sa.PrimaryKeyConstraint("singleton", name="instance_pkey"),
        sa.CheckConstraint("singleton", name="instance_singleton_check"),
        schema=LEDGER_SCHEMA,
    )
    return md


# ------------------------------------------------------------------------------ plain SQL for the loader


def _q(schema: str, table: str) -> str:
    return f"{quote_ident(schema)}.{quote_ident(table)}"


def _cols(columns: Iterable[str]) -> str:
    return ", ".join(quote_ident(c) for c in columns)


def create_tables_sql(dataset: Dataset, schema: str, *, unlogged: bool = False) -> list[str]:
    """``CREATE [UNLOGGED] TABLE`` for every target table in ``schema``: columns and NOT NULL only.

    Keys, unique constraints and references come later from :func:`constraints_sql`, after the
    bulk load. The schema itself must exist."""
    kind = "UNLOGGED TABLE" if unlogged else "TABLE"
    out = []
    for t in dataset.tables:
        pk = set(t.primary_key)
        cols = ",\n  ".join(
            f"{quote_ident(c.name)} {_check_type(c.type)}"
            + ("" if c.nullable and c.name not in pk else " NOT NULL")
            for c in t.columns)
        out.append(f"CREATE {kind} {_q(schema, t.name)} (\n  {cols}\n)")
    return out


def constraints_sql(dataset: Dataset, schema: str) -> list[str]:
    """``ALTER TABLE … ADD CONSTRAINT`` for every primary key and unique key (in table order), then
    every foreign key (each referencing the same ``schema``)."""
    keys: list[str] = []
    refs: list[str] = []
    for t in dataset.tables:
        table = _q(schema, t.name)
        keys.append(f"ALTER TABLE {table} ADD CONSTRAINT {quote_ident(pkey_name(t))} "
                    f"PRIMARY KEY ({_cols(t.primary_key)})")
        keys += [f"ALTER TABLE {table} ADD CONSTRAINT {quote_ident(unique_name(t, u))} "
                 f"UNIQUE ({_cols(u)})" for u in t.unique]
        keys += [fkey_index_sql(schema, t, fk) for fk in uncovered_foreign_keys(t)]
        refs += [f"ALTER TABLE {table} ADD CONSTRAINT {quote_ident(fkey_name(t, fk))} "
                 f"FOREIGN KEY ({_cols(fk.columns)}) REFERENCES {_q(schema, fk.table)} "
                 f"({_cols(fk.ref_columns)})" for fk in t.foreign_keys]
    return keys + refs


def fkey_index_sql(schema: str, table: Table, fk: ForeignKey) -> str:
    """The index that serves ``fk``'s checks (see :func:`uncovered_foreign_keys`); ``IF NOT
    EXISTS``, so a merge can add it to a live schema built before it was made."""
    return (f"CREATE INDEX IF NOT EXISTS {quote_ident(fkey_index_name(table, fk))} "
            f"ON {_q(schema, table.name)} ({_cols(fk.columns)})")


# ------------------------------------------------------------------------------ drift check


def schema_diff(connection: sa.Connection, metadata: sa.MetaData, *,
                schemas: Iterable[str] | None = None) -> list[Any]:
    """Alembic's autogenerate diff between the database behind ``connection`` and ``metadata``,
    limited to ``schemas`` (default: the schemas ``metadata`` names), ignoring Alembic's own
    version table. Empty means they agree."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    wanted = set(schemas) if schemas is not None else {t.schema for t in metadata.tables.values()}

    def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
        if type_ == "schema":
            return name in wanted
        if type_ == "table":
            return name != "alembic_version"
        return True

    ctx = MigrationContext.configure(connection, opts={
        "include_schemas": True,
        "include_name": include_name,
        "compare_type": True,
        "compare_server_default": True,
    })
    return list(compare_metadata(ctx, metadata))
