"""A spec inferred from a real export, run as a Dataset: stage → validate → transform (→ load)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import pytest

from etl import Settings
from etl.dataset import EXTRA, Dataset
from etl.load import load
from etl.run import Run
from etl.spec import Spec, infer
from etl.spec.dataset import to_dataset
from etl.stage import stage
from etl.transform import transform
from etl.validate import require_passed, validate
from tests.conftest import SHARED, require_shared

FL = SHARED / "licenses" / "states_baseline" / "FL"
AODB = SHARED / "aodb" / "items_100.json"


def _built(src: Path, tmp_path: Path) -> tuple[Spec, Dataset, Run]:
    spec = infer(src.stem.lower(), [src])
    ds = to_dataset(spec)
    staged = stage(ds, [src], settings=Settings(staging_dir=tmp_path / "staging"))
    require_passed(validate(staged.run, ds))
    return spec, ds, transform(staged.run, ds).run


def _records(src: Path) -> dict[tuple[str, int], dict[str, Any]]:
    """The export's records by (file relative to ``src``, record number)."""
    files = sorted(src.glob("*.json")) if src.is_dir() else [src]
    out: dict[tuple[str, int], dict[str, Any]] = {}
    for f in files:
        data = json.loads(f.read_text())
        for i, record in enumerate(data if isinstance(data, list) else [data]):
            out[(f.name, i)] = record
    return out


def _less_children(record: dict[str, Any], paths: set[str]) -> dict[str, Any]:
    """``record`` less the non-empty lists at the dotted ``paths`` (their records are rows)."""
    out = json.loads(json.dumps(record))
    for path in paths:
        *up, last = path.split(".")
        holder = out
        for part in up:
            holder = holder.get(part) if isinstance(holder, dict) else None
        if isinstance(holder, dict) and holder.get(last):
            del holder[last]
    return out


@pytest.mark.parametrize("src", [FL, AODB], ids=["licenses-FL", "aodb-items"])
def test_spec_runs_as_dataset(src: Path, tmp_path: Path) -> None:
    spec, ds, run = _built(require_shared(src), tmp_path)
    for level in (lv for s in spec.sources for lv in s.levels):
        table = run.table(level.table, lineage=True).collect()
        assert table.height == level.rows, level.table
        pk = list(ds.table(level.table).primary_key)
        assert not table.select(pk).is_duplicated().any()
    # No key is lost: every top-level key of a record is a typed column or in extra (a
    # non-empty list a child level's rows come from leaves extra: its records are rows).
    (root,) = [lv for s in spec.sources for lv in s.levels if lv.path == ""]
    typed = {c.json[0]: c.name for c in root.columns if len(c.json) == 1}
    jsonb = {c.name for c in root.columns if c.type == "jsonb"}
    children = {lv.path[:-2] for s in spec.sources for lv in s.levels if lv.parent == ""}
    rows = {(r["_file"], r["_record"]): r
            for r in run.table(root.table, lineage=True).collect().iter_rows(named=True)}
    records = _records(src)
    assert set(rows) == set(records)
    for at, record in records.items():
        row = rows[at]
        extra = json.loads(row[EXTRA])
        for key, value in _less_children(record, children).items():
            if key in extra:
                assert extra[key] == value
                continue
            column = typed[key]
            held = row[column] if column not in jsonb else json.loads(row[column])
            assert held == value, (at, key)


def test_child_rows_reference_their_parent(tmp_path: Path) -> None:
    _, ds, run = _built(require_shared(AODB), tmp_path)
    for table in ds.tables:
        for fk in table.foreign_keys:
            child = run.table(table.name).collect()
            parent = run.table(fk.table).collect()
            missing = child.select(fk.columns).join(parent.select(fk.ref_columns),
                                                    left_on=list(fk.columns), right_on=list(fk.ref_columns),
                                                    how="anti")
            assert missing.height == 0, (table.name, fk)


@pytest.mark.parametrize("src", [FL, AODB], ids=["licenses-FL", "aodb-items"])
def test_loads_into_postgres(src: Path, tmp_path: Path, pg_url: str) -> None:
    spec, ds, run = _built(require_shared(src), tmp_path)
    # every record of every file rebuilt from the loaded rows and their extra
    result = load(run, ds, database_url=pg_url, reconcile_sample=1.0)
    assert result.reconciled is not None and "skipped" not in result.reconciled, result.reconciled
    assert result.reconciled["records"] == sum(lv.rows for s in spec.sources for lv in s.levels)
    with psycopg.connect(pg_url) as conn:
        for level in (lv for s in spec.sources for lv in s.levels):
            n = conn.execute(f'SELECT count(*) FROM "{ds.name}"."{level.table}"').fetchone()
            assert n is not None and n[0] == level.rows, level.table


def test_mids_sources_levels_and_types(tmp_path: Path) -> None:
    """Several sources, nested levels three deep, every spec type but numeric."""
    spec, _, run = _built(require_shared(SHARED / "mids"), tmp_path)
    assert len(spec.sources) > 1
    for level in (lv for s in spec.sources for lv in s.levels):
        assert run.table(level.table).select("extra").collect().height == level.rows, level.table
