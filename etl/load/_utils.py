"""Small SQL helpers the load steps share."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from etl.dataset import Dataset, Table
from etl.errors import ConfigError
from etl.infra.pg import quote_ident


def lit(text: str) -> str:
    """``text`` as an SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def schema_exists(conn: Any, name: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (name,)).fetchone() is not None


def sql_files(dataset: Dataset) -> list[Path]:
    """The dataset's post-load SQL files (``sql_dir/*.sql``), run in file-name order after the keys;
    a ``sql_dir`` that is given but not there is an error, not a load without its views."""
    folder = dataset.sql_dir
    if folder is None:
        return []
    if not folder.is_dir():
        raise ConfigError(f"dataset {dataset.name!r}: its post-load SQL folder {folder} is not there",
                          hint="reinstall the package, or fix the dataset's sql_dir")
    return sorted(folder.glob("*.sql"))


def json_columns(table: Table) -> list[str]:
    """The table's ``jsonb`` columns: PostgreSQL stores them decoded (keys reordered, spacing
    and duplicate keys dropped), so they are sent in jsonb's binary form and compared by
    meaning. A ``json`` column is not one of them: PostgreSQL keeps its text exactly as sent,
    so it is sent and compared as plain text."""
    return [c.name for c in table.columns if c.type == "jsonb"]


def compared(table: Table, column: str, prefix: str = "") -> str:
    """``column`` as SQL that compares with ``=``, ``IS DISTINCT FROM`` and ``EXCEPT``: a
    ``json`` column has no equality operator, and its text (kept as sent) is what it holds."""
    kind = next((c.type for c in table.columns if c.name == column), None)
    expr = f"{prefix}{quote_ident(column)}"
    return f"{expr}::text" if kind == "json" else expr
