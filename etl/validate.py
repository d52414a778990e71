"""Validate: the dataset's cleaning steps and rules, in Polars, over a staged run. No database.

Writes ``report.json`` (per rule: severity, failing rows, examples with file and record; per
cleaning step: rows changed) and ``rejects/<level>.parquet`` (every row that broke an
error-severity rule, with the rules and reasons). Levels are checked parents first and
references are checked against the *accepted* rows of their target, so rejecting a power also
rejects its effects — nothing downstream points at a row that will not be loaded.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from etl.dataset import Dataset, Rule
from etl.errors import ValidationFailed
from etl.metrics import Phase, timed
from etl.run import MANIFEST, Run, replace_dir, write_json_atomic

log = logging.getLogger(__name__)

LINEAGE = ["_file", "_record", "_path"]
EXAMPLES = 3

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True, slots=True)
class ValidationResult:
    run: Run
    report: dict[str, Any]
    phase: Phase

    @property
    def passed(self) -> bool:
        return bool(self.report["status"] == "passed")


def _level_order(dataset: Dataset) -> list[str]:
    """Levels so that parents and reference targets come before the levels that need them."""
    levels = dataset.levels
    deps: dict[str, set[str]] = {name: set() for name in levels}
    for name, lvl in levels.items():
        if lvl.parent:
            deps[name].add(lvl.parent)
    for rule in dataset.rules:
        if rule.kind == "references" and rule.ref and rule.ref[0] != rule.level:
            deps[rule.level].add(rule.ref[0])
    order: list[str] = []
    seen: set[str] = set()

    def visit(name: str, trail: tuple[str, ...] = ()) -> None:
        if name in seen:
            return
        if name in trail:
            raise ValueError(f"reference cycle between levels: {' -> '.join((*trail, name))}")
        for dep in sorted(deps[name]):
            visit(dep, (*trail, name))
        seen.add(name)
        order.append(name)

    for name in levels:
        visit(name)
    return order


def _not_blank(col: str, dtype: pl.DataType) -> pl.Expr:
    e = pl.col(col).is_not_null()
    if dtype == pl.String:
        e = e & (pl.col(col).str.strip_chars() != "")
    return e


def _fails(rule: Rule, schema: pl.Schema, accepted_keys: dict[tuple[str, str], pl.Series]) -> pl.Expr:
    """An expression true where a row breaks ``rule``."""
    match rule.kind:
        case "required":
            return ~pl.all_horizontal([_not_blank(c, schema[c]) for c in rule.columns])
        case "range":
            c = pl.col(rule.columns[0])
            bad = pl.lit(False)
            if rule.min is not None:
                bad = bad | (c < rule.min)
            if rule.max is not None:
                bad = bad | (c > rule.max)
            return bad.fill_null(False)
        case "one_of":
            return (~pl.col(rule.columns[0]).is_in(list(rule.values))).fill_null(False)
        case "unique":
            key = pl.struct(rule.columns)
            present = pl.all_horizontal([pl.col(c).is_not_null() for c in rule.columns])
            return present & ~key.is_first_distinct()
        case "references":
            assert rule.ref is not None
            keys = accepted_keys[rule.ref]
            bad = ~pl.col(rule.columns[0]).is_in(keys.implode())
            if rule.when is not None:
                bad = bad & rule.when()
            return bad.fill_null(False)
        case "check":
            assert rule.expr is not None
            return (~rule.expr()).fill_null(False)
        case "types":
            return pl.col("_type_errors").list.len() > 0
    raise ValueError(f"unknown rule kind {rule.kind}")


def _example(row: dict[str, Any], rule: Rule) -> dict[str, Any]:
    cols = list(rule.columns) or []
    if rule.kind == "types":
        cols = ["_type_errors"]
    return {
        "file": row["_file"],
        "record": row["_record"],
        "path": row["_path"] or None,
        "values": {c: row.get(c) for c in cols if c in row},
    }


def validate(
    run: Run,
    *,
    max_reject_ratio: float = 0.0,
    report_file: Path | None = None,
    progress: Progress | None = None,
) -> ValidationResult:
    """Run the dataset's cleaning steps and rules over ``run``; write the report and rejects.

    Raises nothing for failing rules: the result says whether the run passed (no level has more
    error-rejected rows than ``max_reject_ratio`` of its rows). The CLI turns that into exit 1.
    """
    dataset = run.dataset()
    with timed("validate") as phase:
        order = _level_order(dataset)
        accepted_keys: dict[tuple[str, str], pl.Series] = {}
        needed_keys: dict[str, set[str]] = {}
        for rule in dataset.rules:
            if rule.kind == "references" and rule.ref:
                needed_keys.setdefault(rule.ref[0], set()).add(rule.ref[1])
        rules_out: list[dict[str, Any]] = []
        cleaning_out: list[dict[str, Any]] = []
        levels_out: dict[str, dict[str, Any]] = {}
        tmp = run.path / ".rejects.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        total_rows = 0
        for i, level in enumerate(order):
            raw = run.raw(level)
            lf = run.cleaned(level, dataset)
            schema = lf.collect_schema()
            level_rules = [Rule(f"{level}.types", level, "types")] + [
                r for r in dataset.rules if r.level == level]
            steps = [c for c in dataset.cleaning if c.level == level]
            flags = [_fails(r, schema, accepted_keys).alias(f"__fail{j}")
                     for j, r in enumerate(level_rules)]
            changed = [
                c.fn(pl.col(c.column)).ne_missing(pl.col(c.column)).alias(f"__clean{j}")
                for j, c in enumerate(steps)
            ]
            df = lf.with_columns(flags).collect()
            if changed:
                counts = raw.select([e.sum() for e in changed]).collect().row(0)
            else:
                counts = ()
            for j, c in enumerate(steps):
                cleaning_out.append({"name": c.name, "level": level, "column": c.column,
                                     "description": c.description, "changed": int(counts[j] or 0)})
            rows = df.height
            total_rows += rows
            error_flags = [f"__fail{j}" for j, r in enumerate(level_rules) if r.severity == "error"]
            for j, rule in enumerate(level_rules):
                failing = df.filter(pl.col(f"__fail{j}"))
                rules_out.append({
                    "name": rule.name,
                    "level": level,
                    "kind": rule.kind,
                    "severity": rule.severity,
                    "description": rule.describe(),
                    "failed": failing.height,
                    "examples": [_example(r, rule) for r in failing.head(EXAMPLES).to_dicts()],
                })
            any_error = pl.any_horizontal([pl.col(f) for f in error_flags]) if error_flags else pl.lit(False)
            rejected = df.filter(any_error)
            if rejected.height:
                names = pl.concat_list([
                    pl.when(pl.col(f"__fail{j}")).then(pl.lit(r.name)).otherwise(None)
                    for j, r in enumerate(level_rules) if r.severity == "error"
                ]).list.drop_nulls()
                reasons = pl.concat_list([
                    pl.when(pl.col(f"__fail{j}")).then(pl.lit(r.describe())).otherwise(None)
                    for j, r in enumerate(level_rules) if r.severity == "error"
                ]).list.drop_nulls()
                (rejected.with_columns(_rules=names, _reasons=reasons)
                 .drop([c for c in rejected.columns if c.startswith("__")])
                 .write_parquet(tmp / f"{level}.parquet"))
            levels_out[level] = {
                "rows": rows,
                "rejected": rejected.height,
                "ratio": (rejected.height / rows) if rows else 0.0,
            }
            for col in needed_keys.get(level, ()):
                accepted_keys[(level, col)] = df.filter(~any_error).get_column(col).drop_nulls()
            if progress:
                progress("validate", i + 1, len(order))
        failed_levels = [name for name, v in levels_out.items() if v["ratio"] > max_reject_ratio]
        status = "failed" if failed_levels else "passed"
        report = {
            "run_id": run.id,
            "dataset": dataset.name,
            "dataset_version": dataset.version,
            "status": status,
            "max_reject_ratio": max_reject_ratio,
            "failed_levels": failed_levels,
            "levels": levels_out,
            "rules": rules_out,
            "cleaning": cleaning_out,
            # Files a quarantining source left out at staging (not valid JSON), with the reason.
            "quarantined": [{k: q.get(k) for k in ("source", "relpath", "reason", "offset")}
                            for q in run.manifest.get("quarantined") or []],
        }
        replace_dir(tmp, run.path / "rejects")
        phase.rows = total_rows
    phase.extra = {"rejected": sum(v["rejected"] for v in levels_out.values())}
    report["phase"] = phase.to_dict()
    write_json_atomic(run.path / "report.json", report)
    if report_file is not None:
        Path(report_file).parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(Path(report_file), report)
    manifest = dict(run.manifest)
    manifest["validation"] = {"status": status, "max_reject_ratio": max_reject_ratio,
                              "rejected": {k: v["rejected"] for k, v in levels_out.items()},
                              "failed_levels": failed_levels}
    manifest.setdefault("phases", {})["validate"] = phase.to_dict()
    write_json_atomic(run.path / MANIFEST, manifest)
    run.manifest.clear()
    run.manifest.update(manifest)
    log.info("validated %s: %s (%d rows, %d rejected)", run.id, status, total_rows,
             phase.extra["rejected"])
    return ValidationResult(run, report, phase)


def require_passed(result: ValidationResult) -> None:
    """Raise :class:`ValidationFailed` when ``result`` did not pass."""
    if result.passed:
        return
    rep = result.report
    worst = ", ".join(f"{name} ({rep['levels'][name]['rejected']} of {rep['levels'][name]['rows']})"
                      for name in rep["failed_levels"])
    raise ValidationFailed(
        f"validation failed: rows rejected beyond the allowed ratio {rep['max_reject_ratio']} in {worst}",
        dataset=rep["dataset"], run=rep["run_id"],
        hint=f"see {result.run.path / 'report.json'} and rejects/; fix the export or pass "
             f"--max-reject-ratio")
