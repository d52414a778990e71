"""The keys phase and the dataset's SQL: primary and unique keys (each table read back for its
checksum on the way), foreign keys added NOT VALID then validated, then ``sql/<dataset>/``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from etl.errors import EtlError
from etl.infra import pg
from etl.infra.pg import quote_ident
from etl.infra.schema import constraints_sql, fkey_index_sql, fkey_name, uncovered_foreign_keys
from etl.load import plan
from etl.load._utils import sql_files
from etl.load.verify import verify_table

if TYPE_CHECKING:
    from etl.load.state import Load


def keys_all(load: Load, order: list[str]) -> None:
    """The ``keys`` phase: a ``keys:<table>`` step per table, then ``fkeys`` and a
    ``validate:<fk>`` step per foreign key, tables concurrently."""
    with load.pool("etl-keys") as pool:
        list(pool.map(lambda name: _keys(load, name), order))
        plan.step(load, "fkeys", lambda conn: _fkeys(load, conn))
        # Biggest referencing tables first; one table's keys share a lock, so group them.
        fks = sorted(_foreign_keys(load), key=lambda f: -int(load.entries[f[0]]["rows"]))
        by_table: dict[str, list[tuple[str, str]]] = {}
        for fk in fks:
            by_table.setdefault(fk[0], []).append(fk)
        list(pool.map(lambda group: _validate_fks(load, group), by_table.values()))
    load.close_workers()


def _keys(load: Load, name: str) -> None:
    """Primary and unique keys of one table, its statistics (ANALYZE) and its content read
    back for verification, in one step: tables run concurrently, so the slow parts (ANALYZE
    of wide text tables, the read-back) overlap."""
    stmts = [s for s in constraints_sql(load.dataset, load.build)
             if f".{quote_ident(name)} ADD CONSTRAINT" in s and "FOREIGN KEY" not in s]
    stmts += [fkey_index_sql(load.build, load.tables[name], fk)
              for fk in uncovered_foreign_keys(load.tables[name])]
    stmts.append(f"ANALYZE {quote_ident(load.build)}.{quote_ident(name)}")

    def run(conn: Any) -> dict[str, Any]:
        # Read the committed table back for verification first (on this worker's ADBC
        # connection, whose transaction ends before ALTER TABLE below takes its lock).
        rows, checksum = verify_table(load, name)
        for stmt in stmts:
            conn.execute(stmt)
        return {"rows": rows, "checksum": checksum}

    plan.step(load, f"keys:{name}", run)


def _fkeys(load: Load, conn: Any) -> None:
    """Every foreign key, added NOT VALID (no scan, so no long lock on the referenced
    tables); ``validate:<name>`` steps then check them, concurrently."""
    for stmt in constraints_sql(load.dataset, load.build):
        if "FOREIGN KEY" in stmt and stmt.startswith("ALTER TABLE"):
            conn.execute(stmt + " NOT VALID")


def _foreign_keys(load: Load) -> list[tuple[str, str]]:
    return [(t.name, fkey_name(t, fk)) for t in load.dataset.tables for fk in t.foreign_keys]


def _validate_fks(load: Load, group: list[tuple[str, str]]) -> None:
    for table, name in group:
        # VALIDATE takes SHARE UPDATE EXCLUSIVE on the referencing table only (and ROW SHARE on
        # the referenced one), so foreign keys of different tables check in parallel.
        def run(conn: Any, table: str = table, name: str = name) -> None:
            conn.execute(f"ALTER TABLE {quote_ident(load.build)}.{quote_ident(table)} "
                         f"VALIDATE CONSTRAINT {quote_ident(name)}")

        plan.step(load, f"validate:{name}", run)


def post_sql(load: Load, conn: Any) -> dict[str, Any]:
    """The ``sql`` step: the dataset's SQL files in the build schema (indexes, views)."""
    conn.execute(f"SET LOCAL search_path = {quote_ident(load.build)}, public")
    done = []
    for path in sql_files(load.dataset):
        try:
            conn.execute(path.read_text())
        except Exception as exc:
            if pg.is_transient(exc):
                raise
            raise EtlError(f"{load.dataset.name}/{path.name} failed: {exc}".strip(),
                           dataset=load.dataset.name, file=path,
                           hint="fix the SQL file, then run the load again (it resumes)") from exc
        done.append(path.name)
    return {"files": done}
