"""A spec hook as a user would write one (tests/test_builtin_specs.py names it in a spec): the
spec's levels as declared, one table per level keyed by lineage, plus a derived table."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import polars as pl

from etl.dataset import Column, Dataset, Table


def extend(base: Dataset) -> Dataset:
    (records,) = base.levels.values()

    def transform(levels: Mapping[str, pl.LazyFrame]) -> dict[str, pl.LazyFrame]:
        rows = levels[records.name].with_columns(row_key=pl.col("_file"))
        sizes = rows.group_by("size").agg(things=pl.len().cast(pl.Int64)).filter(pl.col("size").is_not_null())
        return {"things": rows, "sizes": sizes}

    return replace(base, transform=transform, tables=(
        Table("things", (Column("row_key", "text", False), Column("name", "text"), Column("size", "bigint"),
                         Column("extra", "json", False)), ("row_key",)),
        Table("sizes", (Column("size", "bigint", False), Column("things", "bigint", False)), ("size",)),
    ))
