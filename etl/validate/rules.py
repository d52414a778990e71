"""Which rules a validation runs, and at which severity.

:func:`effective_rules` is every rule of a dataset: the built-in ``<level>.types`` and
``<level>.parent`` rules, the dataset's own, and the built-in ``storable`` rules
(:mod:`etl.storable`). :func:`resolve_rules` applies the user's severity overrides
(:class:`etl.config.RuleOverride`: ``--rule``, ``ETL_RULES``, ``[tool.etl.rules]``).

>>> [r.rule.name for r in resolve_rules(get_dataset("mids")) if r.rule.kind == "parent"]   # doctest: +SKIP
['powers.parent', 'power_effects.parent', 'set_bonuses.parent', 'set_special_bonuses.parent']
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from etl.config import RuleOverride
from etl.dataset import Dataset, Rule
from etl.errors import ConfigError
from etl.storable import storable_rules


def effective_rules(dataset: Dataset) -> tuple[Rule, ...]:
    """Every rule ``etl validate`` runs on ``dataset``, at its default severity: per level the
    built-in ``<level>.types`` and, for a nested level, ``<level>.parent`` (the record it sits
    in was accepted: rejecting a record rejects what it holds, so nothing is left pointing at
    a row that will not be loaded), then the dataset's own rules, then the built-in
    ``storable`` rules (:func:`etl.storable.storable_rules`)."""
    # A spec dataset whose source keeps drift keeps a value of another type whole in the row's
    # extra (and the stage reports it): the row is loaded, the types rule only warns.
    types = tuple(Rule(f"{name}.types", name, "types",
                       severity="warning" if dataset.drift.get(dataset.level_source(name).name) == "keep"
                       else "error")
                  for name, level in dataset.levels.items() if level.fields)
    parents = tuple(
        Rule(f"{name}.parent", name, "parent", (), "error", ref=(level.parent, level.path or ""),
             message=f"the {level.parent} record it sits in must be accepted (a rejected record "
                     "takes the records inside it along)")
        for name, level in dataset.levels.items() if level.parent is not None)
    return (*types, *parents, *dataset.rules, *storable_rules(dataset))


def _is_glob(name: str) -> bool:
    return any(ch in name for ch in "*?[")


def _other_rule_names(dataset: Dataset) -> list[str]:
    from etl.datasets import available

    return [r.name for name, ds in available().items() if name != dataset.name
            for r in effective_rules(ds)]


def _unknown_rule(dataset: Dataset, override: RuleOverride, names: Sequence[str]) -> ConfigError:
    close = difflib.get_close_matches(override.name, names, n=5, cutoff=0.6)
    if not close:
        level = override.name.split(".")[0]
        close = [n for n in names if n.startswith(level + ".")][:8]
    where = "matches no rule" if _is_glob(override.name) else "is not a rule"
    return ConfigError(
        f"{override.name!r} (set by {override.source}) {where} of dataset {dataset.name}"
        + (f"; close names: {', '.join(close)}" if close else ""),
        dataset=dataset.name,
        hint=f"`etl validate {dataset.name} --list-rules` lists every rule with its severity")


@dataclass(frozen=True, slots=True)
class ResolvedRule:
    """A rule as this validation runs it: ``rule`` at its effective severity (unless ``off``),
    its ``default`` severity, and the ``override`` that changed it (None: the default)."""

    rule: Rule
    default: str
    override: RuleOverride | None = None

    @property
    def severity(self) -> str:
        return self.override.severity if self.override is not None else self.default

    @property
    def off(self) -> bool:
        return self.severity == "off"

    def to_dict(self, failed: int | None, examples: list[dict[str, Any]]) -> dict[str, Any]:
        """The rule's entry in report.json (``failed`` is None for a rule set ``off``)."""
        return {
            "name": self.rule.name,
            "level": self.rule.level,
            "kind": self.rule.kind,
            "severity": self.severity,
            "default_severity": self.default,
            "override": self.override.to_dict() if self.override is not None else None,
            "description": self.rule.describe(),
            "failed": failed,
            "examples": examples,
        }


def resolve_rules(dataset: Dataset, overrides: Sequence[RuleOverride] = ()) -> list[ResolvedRule]:
    """``dataset``'s effective rules at the severity they run with, each with the override
    that set it (None: the rule's default). Later overrides win over earlier ones (flags come
    after the environment, which comes after pyproject.toml). A name may be a glob
    (``powers.*.range``).

    Raises :class:`ConfigError` for a name that no rule has, naming close ones. A name from
    the environment or ``[tool.etl] rules`` (not scoped to a dataset) that only another
    dataset's rule has is left for that dataset.
    """
    rules = effective_rules(dataset)
    names = [r.name for r in rules]
    chosen: dict[str, RuleOverride] = {}
    others: list[str] | None = None
    for ov in overrides:
        if ov.dataset is not None and ov.dataset != dataset.name:
            continue
        matched = (fnmatch.filter(names, ov.name) if _is_glob(ov.name)
                   else [ov.name] if ov.name in names else [])
        if not matched:
            if ov.dataset is None and ov.source != "--rule":
                others = _other_rule_names(dataset) if others is None else others
                if any(fnmatch.fnmatchcase(n, ov.name) for n in others):
                    continue
            raise _unknown_rule(dataset, ov, names)
        for name in matched:
            chosen[name] = ov
    out = []
    for rule in rules:
        found = chosen.get(rule.name)
        run_as = (rule if found is None or found.severity == "off"
                  else replace(rule, severity=found.severity))
        out.append(ResolvedRule(run_as, rule.severity, found))
    return out
