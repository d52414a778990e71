"""Validate: the dataset's cleaning steps and rules, in Polars, over a staged run. No database.

Writes ``report.json`` (per rule: severity, failing rows, examples with file and record; per
cleaning step: rows changed) and ``rejects/<level>.parquet`` (every row that broke an
error-severity rule, with the rules and reasons). Levels are checked parents first and
references are checked against the *accepted* rows of their target, so rejecting a power also
rejects its effects — nothing downstream points at a row that will not be loaded.

The rules run are the dataset's own and built-in ones (:func:`etl.validate.rules.effective_rules`): per
level ``<level>.types`` (every field has its declared type), ``<level>.parent`` (the record a
nested row sits in was accepted) and ``<level>.<column>.storable`` (the value fits its target
column: see :mod:`etl.storable`). The cleaning steps are :func:`etl.dataset.effective_cleaning`
(the built-in ``strip_nul`` first). A user can set any rule's severity (``error``, ``warning``
or ``off``) per run: ``--rule NAME=SEVERITY``, ``ETL_RULES``, or ``[tool.etl.rules]`` (see
:class:`etl.config.RuleOverride`); the report says which severity each rule ran with and where
an override came from.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from etl.config import RuleOverride
from etl.dataset import (
    EXTRA_NUL_ROWS,
    PATCH,
    STAGED_EXTRA,
    STRIP_NUL,
    Dataset,
    Rule,
    ancestor_path,
    cleaning_changed,
    effective_cleaning,
)
from etl.metrics import Phase, timed
from etl.run import Run, apply_cleaning, locks_staging, replace_dir, run_folder, write_json_atomic
from etl.staging_fs import work_dir
from etl.validate.errors import ValidationFailed
from etl.validate.rules import resolve_rules

log = logging.getLogger(__name__)

LINEAGE = ["_file", "_record", "_path"]
#: The name under which a level's accepted lineage keys are kept for its children's parent rules.
LINEAGE_KEY = "<lineage>"
EXAMPLES = 3
#: Example values longer than this are cut in the report (with their length).
EXAMPLE_CHARS = 200

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True, slots=True)
class ValidationResult:
    run: Run
    report: dict[str, Any]
    phase: Phase
    #: What this step added to the run's manifest (written by :meth:`Run.advance`).
    additions: Mapping[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return bool(self.report["status"] == "passed")


#: The lineage key of a row: source file, record number, JSON path.
_SEP = "\x1f"


def _lineage_key(path: pl.Expr) -> pl.Expr:
    return pl.concat_str([pl.col("_file"), pl.col("_record").cast(pl.String), path], separator=_SEP)


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
        case "check" | "storable":
            assert rule.expr is not None
            return (~rule.expr()).fill_null(False)
        case "parent":
            assert rule.ref is not None
            parent_path = ancestor_path(pl.col("_path"), rule.ref[1])
            return ~_lineage_key(parent_path).is_in(accepted_keys[(rule.ref[0], LINEAGE_KEY)].implode())
        case "types":
            return pl.col("_type_errors").list.len() > 0
    raise ValueError(f"unknown rule kind {rule.kind}")


def _rechecked(df: pl.DataFrame, lf: pl.LazyFrame, rules: Sequence[Rule]) -> pl.DataFrame:
    """The flags of rules with a ``recheck`` narrowed to the rows that really break them: the
    flagged rows' values are read again (one column, those rows only) and judged in Python."""
    for j, rule in enumerate(rules):
        flag = f"__fail{j}"
        if rule.recheck is None or not df.get_column(flag).any():
            continue
        rows = df.get_column(flag).arg_true()
        values = (lf.select(rule.columns[0]).with_row_index("__row")
                  .filter(pl.col("__row").is_in(rows.implode())).collect(engine="streaming"))
        fails = rule.recheck(values.get_column(rule.columns[0]))
        cleared = values.get_column("__row").filter(~fails)
        if cleared.len():
            df = df.with_columns(df.get_column(flag).scatter(cleared, False))
    return df


def _read_rows(lf: pl.LazyFrame, rows: pl.Series) -> pl.DataFrame:
    """Rows ``rows`` (ascending row numbers) of ``lf``, every column but the staged ``_extra``
    text, in one streaming pass that stops at the last of them: only those rows are held."""
    last = int(rows.max() or 0)  # type: ignore[arg-type]
    return (lf.drop(STAGED_EXTRA, strict=False).slice(0, last + 1).with_row_index("__row")
            .filter(pl.col("__row").is_in(rows.implode())).drop("__row")
            .collect(engine="streaming"))


def _rows_of(lf: pl.LazyFrame, rows: pl.Series) -> dict[int, dict[str, Any]]:
    """Rows ``rows`` of ``lf`` (any order, repeats allowed) as dicts by row number."""
    wanted = rows.unique().sort()
    if not wanted.len():
        return {}
    return dict(zip(wanted.to_list(), _read_rows(lf, wanted).to_dicts(), strict=True))


def preview(value: Any, width: int = EXAMPLE_CHARS) -> Any:
    """``value`` as an example shows it: long text cut (with its length), control characters
    (NUL first of all) written visibly as ``\\xNN``; lists element by element."""
    if isinstance(value, list):
        return [preview(v, width) for v in value[:20]]
    if not isinstance(value, str):
        return value
    text = value if len(value) <= width else value[:width] + f"… ({len(value):,} characters)"
    return re.sub(r"[\x00-\x08\x0b\x0c\x0e-\x1f]", lambda m: f"\\x{ord(m.group()):02x}", text)


def _example(row: dict[str, Any], rule: Rule) -> dict[str, Any]:
    cols = list(rule.columns) or []
    if rule.kind == "types":
        cols = ["_type_errors"]
    return {
        "file": row["_file"],
        "record": row["_record"],
        "path": row["_path"] or None,
        "values": {c: preview(row.get(c)) for c in cols if c in row},
    }


@locks_staging(run_folder)
def validate(
    run: Run,
    dataset: Dataset,
    *,
    max_reject_ratio: float = 0.0,
    rules: Sequence[RuleOverride] = (),
    report_file: Path | None = None,
    progress: Progress | None = None,
) -> ValidationResult:
    """Run the dataset's cleaning steps and rules over ``run``; write the report and rejects.

    ``rules``: severity overrides (``Settings.rules``: flags, ``ETL_RULES``, ``[tool.etl]
    rules``); a rule set to ``off`` is not run. Raises nothing for failing rules: the result
    says whether the run passed (no level has more error-rejected rows than
    ``max_reject_ratio`` of its rows). The CLI turns that into exit 1. Raises
    :class:`ConfigError` for an override naming no rule.

    >>> result = validate(run, dataset, rules=parse_rule_overrides(["powers.level.range=warning"],
    ...                                                   source="--rule"))   # doctest: +SKIP
    """
    run = run.current()
    run.check_dataset(dataset)
    resolved = resolve_rules(dataset, rules)
    active = [r for r in resolved if not r.off]
    cleaning = effective_cleaning(dataset)
    with timed("validate") as phase:
        order = _level_order(dataset)
        accepted_keys: dict[tuple[str, str], pl.Series] = {}
        needed_keys: dict[str, set[str]] = {}
        for rule in (r.rule for r in active):
            if rule.kind == "references" and rule.ref:
                needed_keys.setdefault(rule.ref[0], set()).add(rule.ref[1])
            elif rule.kind == "parent" and rule.ref:
                needed_keys.setdefault(rule.ref[0], set()).add(LINEAGE_KEY)
        rules_out: list[dict[str, Any]] = []
        cleaning_out: list[dict[str, Any]] = []
        levels_out: dict[str, dict[str, Any]] = {}
        tmp = work_dir(run.path, ".rejects.tmp")  # local; moved (uploaded) into place below
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        total_rows = 0
        for i, level in enumerate(order):
            raw = run.raw(level)
            # The originals a cleaning step replaced go to _patch, not into _extra: the rules
            # read the typed columns, and _extra's text is only checked, as staged.
            lf = apply_cleaning(dataset, level, raw, patch_only=True).drop(PATCH)
            schema = lf.collect_schema()
            level_resolved = [r for r in active if r.rule.level == level]
            level_rules = [r.rule for r in level_resolved]
            steps = [c for c in cleaning if c.level == level]
            flags = [_fails(r, schema, accepted_keys).alias(f"__fail{j}")
                     for j, r in enumerate(level_rules)]
            raw_schema = raw.collect_schema()
            # _extra's NULs were counted as it was staged (not read again here: it is the
            # widest column); a run staged without that count reads it.
            staged = run.manifest["levels"].get(level, {})
            known = {j: int(staged[EXTRA_NUL_ROWS]) for j, c in enumerate(steps)
                     if c.column == STAGED_EXTRA and c.name == STRIP_NUL and EXTRA_NUL_ROWS in staged}
            changed = [cleaning_changed(c, raw_schema[c.column]).alias(f"__clean{j}")
                       for j, c in enumerate(steps) if j not in known]
            # Only the rules' flags (and the keys later levels look up) are held: the level's
            # columns stream through the flags and are dropped, so memory does not grow with a
            # level's width or size (an inferred spec's 326k effects of 87 columns held 525 MB
            # at x5, 900 MB at x10). Examples and rejected rows are read again, those rows only.
            flag_names = [f"__fail{j}" for j in range(len(level_rules))]
            needed = needed_keys.get(level, set())
            key_cols = [_lineage_key(pl.col("_path")).alias(LINEAGE_KEY) if col == LINEAGE_KEY
                        else pl.col(col) for col in sorted(needed)]
            # (one bit a row besides, so a level with no rule and no key still counts its rows)
            df = (lf.with_columns(flags)
                  .select(pl.col("_record").is_null().alias("__none"), *flag_names, *key_cols)
                  .collect(engine="streaming"))
            df = _rechecked(df, lf, level_rules)
            if changed:
                read = iter(raw.select([e.sum() for e in changed]).collect(engine="streaming").row(0))
            else:
                read = iter(())
            counts = [known[j] if j in known else next(read) for j in range(len(steps))]
            for j, c in enumerate(steps):
                cleaning_out.append({"name": c.name, "level": level, "column": c.column,
                                     "description": c.description, "changed": int(counts[j] or 0)})
            rows = df.height
            total_rows += rows
            error_flags = [f"__fail{j}" for j, r in enumerate(level_rules) if r.severity == "error"]
            any_error = pl.any_horizontal([pl.col(f) for f in error_flags]) if error_flags else None
            # Counts and the few example rows only, read again in one pass for all rules.
            firsts = [df.get_column(f).arg_true().head(EXAMPLES) for f in flag_names]
            examples = _rows_of(lf, pl.concat([pl.Series([], dtype=pl.UInt32), *firsts]))
            for j, res in enumerate(level_resolved):
                flag = df.get_column(flag_names[j])
                rules_out.append(res.to_dict(int(flag.sum()), [
                    _example(examples[r], res.rule) for r in firsts[j].to_list()]))
            rules_out += [r.to_dict(None, []) for r in resolved if r.off and r.rule.level == level]
            flagged = (df.select(any_error.alias("e")).to_series() if any_error is not None
                       else pl.repeat(False, rows, eager=True))
            n_rejected = int(flagged.sum())
            if n_rejected:
                failing = df.filter(flagged)
                names = pl.concat_list([
                    pl.when(pl.col(f"__fail{j}")).then(pl.lit(r.name)).otherwise(None)
                    for j, r in enumerate(level_rules) if r.severity == "error"
                ]).list.drop_nulls()
                reasons = pl.concat_list([
                    pl.when(pl.col(f"__fail{j}")).then(pl.lit(r.describe())).otherwise(None)
                    for j, r in enumerate(level_rules) if r.severity == "error"
                ]).list.drop_nulls()
                why = failing.select(_rules=names, _reasons=reasons)
                (_read_rows(lf, flagged.arg_true()).hstack(why.get_columns())
                 .write_parquet(tmp / f"{level}.parquet"))
                del failing, why
            levels_out[level] = {
                "rows": rows,
                "rejected": n_rejected,
                "ratio": (n_rejected / rows) if rows else 0.0,
            }
            for col in needed:  # the key column alone, filtered: never a copy of the level
                keys = df.get_column(col).filter(~flagged)
                accepted_keys[(level, col)] = keys if col == LINEAGE_KEY else keys.drop_nulls()
            del df, flagged
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
            # Severity overrides as given (flag, environment, pyproject.toml), in precedence order.
            "overrides": [ov.to_dict() for ov in rules
                          if ov.dataset is None or ov.dataset == dataset.name],
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
    additions = {"validation": {"status": status, "max_reject_ratio": max_reject_ratio,
                                "rejected": {k: v["rejected"] for k, v in levels_out.items()},
                                "failed_levels": failed_levels},
                 "phases": {"validate": phase.to_dict()}}
    run = run.advance(additions)
    log.info("validated %s: %s (%d rows, %d rejected)", run.id, status, total_rows,
             phase.extra["rejected"])
    return ValidationResult(run, report, phase, additions)


def failing_rules(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The report's rules that failed on some row (errors first), for tables and JSON errors."""
    failing = [r for r in report["rules"] if r.get("failed")]
    return sorted(failing, key=lambda r: r["severity"] != "error")


def require_passed(result: ValidationResult) -> None:
    """Raise :class:`ValidationFailed` when ``result`` did not pass; the exception carries the
    report (``exc.report``) so a caller can show the failing rules."""
    if result.passed:
        return
    rep = result.report
    worst = ", ".join(f"{name} ({rep['levels'][name]['rejected']} of {rep['levels'][name]['rows']})"
                      for name in rep["failed_levels"])
    errors = [r["name"] for r in failing_rules(rep) if r["severity"] == "error"]
    exc = ValidationFailed(
        f"validation failed: rows rejected beyond the allowed ratio {rep['max_reject_ratio']} in {worst}"
        + (f" (rules: {', '.join(errors[:5])}{', …' if len(errors) > 5 else ''})" if errors else ""),
        dataset=rep["dataset"], run=rep["run_id"],
        hint=f"see {result.run.path / 'report.json'} and rejects/; fix the export, relax one rule "
             f"(--rule NAME=warning) or pass --max-reject-ratio")
    exc.report = rep
    raise exc
