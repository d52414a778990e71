"""Migrations (the ledger), live schemas derived from the datasets' tables, target-table DDL and
the agreement between them (real PostgreSQL, no mocks)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from etl.datasets import get_dataset
from etl.infra import ledger
from etl.infra.live import ensure_live_schemas, live_schema_drift
from etl.infra.pg import sqlalchemy_url
from etl.infra.schema import (
    constraints_sql,
    create_tables_sql,
    ledger_metadata,
    schema_diff,
    table_metadata,
)

MIDS = get_dataset("mids")
AODB = get_dataset("aodb")
LICENSES = get_dataset("licenses")
#: The migrations, in order: the ledger's only (dataset schemas come from the datasets' tables).
ALL = ["0001_ledger", "0004_generations"]
LIVE = {"mids": MIDS, "aodb": AODB, "licenses": LICENSES}


def upgrade_all(url: str) -> list[str]:
    """What `etl db upgrade` does: the ledger's migrations, then each dataset's live schema."""
    applied = ledger.upgrade(url)
    ensure_live_schemas(url, LIVE.values())
    return applied


@pytest.fixture
def engine(pg_url: str) -> Iterator[sa.Engine]:
    eng = sa.create_engine(sqlalchemy_url(pg_url), poolclass=sa.NullPool)
    yield eng
    eng.dispose()


def diff(engine: sa.Engine, metadata: sa.MetaData, schemas: set[str]) -> list[Any]:
    """Alembic autogenerate's diff between the database and ``metadata`` in ``schemas``."""

    def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
        if type_ == "schema":
            return name in schemas
        if type_ == "table":
            return name != "alembic_version"
        return True

    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={
            "include_schemas": True, "include_name": include_name,
            "compare_type": True, "compare_server_default": True,
        })
        return list(compare_metadata(ctx, metadata))


def expected() -> sa.MetaData:
    md = ledger_metadata()
    for ds in LIVE.values():
        table_metadata(ds, metadata=md)
    return md


def tables_in(engine: sa.Engine, schema: str) -> set[str]:
    return set(sa.inspect(engine).get_table_names(schema=schema))


def test_upgrade_creates_ledger_and_live_schema_once(pg_url: str, engine: sa.Engine) -> None:
    assert ledger.current(pg_url) is None
    applied = upgrade_all(pg_url)
    assert applied[:len(ALL)] == ALL
    assert ledger.current(pg_url) == ledger.heads()[0] == applied[-1]
    assert tables_in(engine, "etl") >= {"alembic_version", "runs", "load_steps"}
    for name, ds in LIVE.items():
        assert tables_in(engine, name) == {t.name for t in ds.tables}

    assert ledger.upgrade(pg_url) == []  # again: nothing to do
    assert ensure_live_schemas(pg_url, LIVE.values()) == []
    assert ledger.current(pg_url) == applied[-1]
    with engine.connect() as conn:
        # keys come from the transform: no SERIAL sequences (autogenerate would not notice them)
        sequences = conn.execute(sa.text(
            "SELECT count(*) FROM pg_sequences WHERE schemaname IN ('mids', 'aodb')"))
        assert sequences.scalar() == 0


def test_live_schema_comes_from_the_dataset_not_a_migration(pg_url: str, engine: sa.Engine) -> None:
    """A table is defined once: a dataset with another column gets it with no migration."""
    import dataclasses

    from etl.dataset import Column

    powers = MIDS.table("powers")
    wider = dataclasses.replace(powers, columns=(*powers.columns, Column("note", "text")))
    changed = dataclasses.replace(MIDS, tables=tuple(wider if t.name == "powers" else t
                                                     for t in MIDS.tables))
    ledger.upgrade(pg_url)
    assert ensure_live_schemas(pg_url, [changed]) == ["mids"]
    columns = {c["name"] for c in sa.inspect(engine).get_columns("powers", schema="mids")}
    assert "note" in columns
    assert live_schema_drift(pg_url, changed) == []
    assert live_schema_drift(pg_url, MIDS) != []  # the registered mids has no such column


def test_database_at_a_retired_revision_upgrades(pg_url: str, engine: sa.Engine) -> None:
    """A database migrated before the dataset schemas left Alembic (at 0008) keeps working."""
    ledger.upgrade(pg_url, "0001_ledger")
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE etl.alembic_version SET version_num = '0003_aodb'"))
    assert ledger.upgrade(pg_url) == ["0004_generations"]
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE etl.alembic_version SET version_num = '0008_licenses_extra'"))
    assert ledger.current(pg_url) == ledger.heads()[0]
    assert ledger.upgrade(pg_url) == []


def test_unreachable_database_names_the_next_step() -> None:
    from etl.infra.pg import DatabaseError

    with pytest.raises(DatabaseError) as exc:
        ledger.upgrade("postgresql://postgres@127.0.0.1:1/nowhere")
    assert exc.value.hint and "URL" in exc.value.hint


def test_upgrade_step_by_step(pg_url: str, engine: sa.Engine) -> None:
    assert ledger.upgrade(pg_url, "0001_ledger") == ["0001_ledger"]
    assert ledger.current(pg_url) == "0001_ledger"
    assert "mids" not in sa.inspect(engine).get_schema_names()
    assert ledger.upgrade(pg_url) == ["0004_generations"]
    assert "mids" not in sa.inspect(engine).get_schema_names()  # not Alembic's


def test_migrations_agree_with_dataset_tables(pg_url: str, engine: sa.Engine) -> None:
    upgrade_all(pg_url)
    assert diff(engine, expected(), {"etl", *LIVE}) == []
    with engine.connect() as conn:
        assert schema_diff(conn, expected()) == []


@pytest.mark.parametrize("change", [
    "ALTER TABLE mids.powers ALTER COLUMN level TYPE bigint",
    "ALTER TABLE mids.power_effects DROP COLUMN delayed_time",
    "ALTER TABLE mids.archetypes ALTER COLUMN display_name DROP NOT NULL",
    "ALTER TABLE mids.powers DROP CONSTRAINT powers_full_name_key",
    "ALTER TABLE mids.powers DROP CONSTRAINT powers_powerset_id_fkey",
    "ALTER TABLE etl.runs ADD COLUMN extra text",
    "CREATE TABLE mids.stray (id integer)",
    "ALTER TABLE aodb.spells ALTER COLUMN params TYPE json",
    "ALTER TABLE aodb.stat_values DROP CONSTRAINT stat_values_stat_value_key",
    "ALTER TABLE aodb.item_stats DROP CONSTRAINT item_stats_stat_value_id_fkey",
    "ALTER TABLE licenses.search_results ALTER COLUMN issue_date TYPE text",
    "ALTER TABLE licenses.search_results DROP CONSTRAINT search_results_image_sha256_fkey",
])
def test_agreement_check_has_teeth(pg_url: str, engine: sa.Engine, change: str) -> None:
    upgrade_all(pg_url)
    with engine.begin() as conn:
        conn.execute(sa.text(change))
    assert diff(engine, expected(), {"etl", *LIVE}) != []


def test_downgrade_removes_what_upgrade_created(pg_url: str, engine: sa.Engine) -> None:
    from alembic import command

    upgrade_all(pg_url)
    command.downgrade(ledger.alembic_config(pg_url), "base")
    assert ledger.current(pg_url) is None
    assert tables_in(engine, "etl") == {"alembic_version"}
    # the live schemas are the loads' (and ensure_live_schemas'), not the migrations'
    assert set(LIVE) <= set(sa.inspect(engine).get_schema_names())
    assert ledger.upgrade(pg_url)[:len(ALL)] == ALL


@pytest.mark.parametrize("unlogged", [False, True])
def test_loader_ddl_matches_table_metadata(engine: sa.Engine, unlogged: bool) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text('CREATE SCHEMA "mids_x"'))
        for stmt in create_tables_sql(MIDS, "mids_x", unlogged=unlogged):
            assert "PRIMARY KEY" not in stmt and "REFERENCES" not in stmt
            conn.execute(sa.text(stmt))
    # bare tables: no keys yet, so the diff names the missing unique keys, references and the
    # indexes of references no key covers
    bare = diff(engine, table_metadata(MIDS, "mids_x"), {"mids_x"})
    assert {d[0] for d in bare} == {"add_constraint", "add_fk", "add_index"}
    with engine.begin() as conn:
        for stmt in constraints_sql(MIDS, "mids_x"):
            conn.execute(sa.text(stmt))
    assert diff(engine, table_metadata(MIDS, "mids_x"), {"mids_x"}) == []
    # ...and the same DDL as create_all would give
    with engine.begin() as conn:
        conn.execute(sa.text('CREATE SCHEMA "mids_y"'))
        table_metadata(MIDS, "mids_y").create_all(conn)
    insp = sa.inspect(engine)
    for t in MIDS.tables:
        for what in ("get_columns", "get_pk_constraint", "get_unique_constraints", "get_foreign_keys"):
            x = getattr(insp, what)(t.name, schema="mids_x")
            y = getattr(insp, what)(t.name, schema="mids_y")
            assert _strip_schema(x) == _strip_schema(y), (t.name, what)


def _strip_schema(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_schema(v) for k, v in value.items() if k != "referred_schema"}
    if isinstance(value, list):
        return [_strip_schema(v) for v in value]
    return str(value) if isinstance(value, sa.types.TypeEngine) else value


def test_constraints_come_keys_first_and_names_fit() -> None:
    stmts = constraints_sql(MIDS, "mids__build_0123456789ab")
    kinds = ["FOREIGN KEY" in s for s in stmts]
    assert kinds == sorted(kinds)  # every primary/unique key before the first foreign key
    assert sum(kinds) == sum(len(t.foreign_keys) for t in MIDS.tables)
    md = table_metadata(MIDS, "mids__build_0123456789ab")
    for table in md.tables.values():
        assert table.schema == "mids__build_0123456789ab"
        for c in table.constraints:
            assert c.name and len(str(c.name)) <= 63
        for fk in table.foreign_keys:
            assert fk.column.table.schema == "mids__build_0123456789ab"


def test_identifiers_are_quoted() -> None:
    stmts = create_tables_sql(MIDS, 'odd "schema"')
    assert stmts[0].startswith('CREATE TABLE "odd ""schema"""."archetypes"')
    assert '"position" integer NOT NULL' in "\n".join(stmts)  # a keyword as a column name


def test_offline_sql(pg_url: str) -> None:
    """`alembic upgrade head --sql` works: the schema comes before the version table."""
    import contextlib
    import io

    from alembic import command

    cfg = ledger.alembic_config(pg_url)
    out = io.StringIO()
    cfg.output_buffer = out
    with contextlib.redirect_stdout(out):
        command.upgrade(cfg, "head", sql=True)
    sql = out.getvalue()
    assert sql.index("CREATE SCHEMA IF NOT EXISTS etl") < sql.index("CREATE TABLE etl.alembic_version")
    assert "CREATE TABLE mids." not in sql  # the datasets' tables are not the migrations'
    assert "CREATE TABLE etl.generations" in sql
