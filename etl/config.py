"""Settings, resolved as: flag > environment > ``[tool.etl]`` in pyproject.toml > default.

Rule severity overrides (:class:`RuleOverride`) add up rather than replace: ``[tool.etl.rules]``
(``"NAME" = "SEVERITY"``, or ``[tool.etl.rules.<dataset>]`` for one dataset), then
``ETL_RULES`` (``NAME=SEVERITY,...``), then ``--rule NAME=SEVERITY`` flags; for a rule named more
than once the later wins. They are checked against the dataset's rules when validation runs.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal, get_args

from etl.errors import ConfigError
from etl.staging_fs import StagePath, is_uri, resolve

#: Environment variables read for each setting, first match wins.
ENV = {
    "staging_dir": ("ETL_STAGING_DIR",),
    "datasets_dir": ("ETL_DATASETS_DIR",),
    "database_url": ("ETL_DATABASE_URL", "DATABASE_URL"),
    "redis_url": ("ETL_REDIS_URL",),
    "memory_limit": ("ETL_MEMORY_LIMIT",),
    "chunk_rows": ("ETL_CHUNK_ROWS",),
    "threads": ("ETL_THREADS",),
    "engine": ("ETL_ENGINE",),
    "ray_address": ("ETL_RAY_ADDRESS",),
}
#: The folder of real sample exports (``mids``, ``mids_full``, ``aodb``, ``licenses``) that
#: generators, benches and tests read when no --template is given. Never assumed: no command
#: looks in ``../shared`` by itself.
SHARED_DATA_ENV = "ETL_SHARED_DATA"
#: Rule severity overrides from the environment: ``NAME=SEVERITY`` items, comma-separated.
RULES_ENV = "ETL_RULES"

#: What a rule override may set a rule to: ``off`` skips the rule altogether.
RuleSeverity = Literal["error", "warning", "off"]
RULE_SEVERITIES: tuple[str, ...] = get_args(RuleSeverity)

#: Where the stage's work runs: in this process (threads), or as tasks on a Ray cluster.
Engine = Literal["local", "ray"]
ENGINES: tuple[str, ...] = get_args(Engine)


@dataclass(frozen=True, slots=True)
class RuleOverride:
    """One rule's severity set by the user: ``name`` (a rule name, or a glob such as
    ``powers.*.range``), the severity, where it was set (``source``), and, when it was set for
    one dataset only (``[tool.etl.rules.<dataset>]``), that ``dataset``."""

    name: str
    severity: RuleSeverity
    source: str
    dataset: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "severity": self.severity, "source": self.source,
                **({"dataset": self.dataset} if self.dataset else {})}


def rule_override(name: str, severity: object, *, source: str,
                  dataset: str | None = None) -> RuleOverride:
    """A checked :class:`RuleOverride` (:class:`ConfigError` for a severity that is none)."""
    sev = str(severity).strip().lower()
    if sev not in RULE_SEVERITIES or not name.strip():
        raise ConfigError(f"rule override {name}={severity!r} from {source} is not valid",
                          hint=f"write NAME=SEVERITY, SEVERITY one of {', '.join(RULE_SEVERITIES)}")
    return RuleOverride(name.strip(), sev, source, dataset)  # type: ignore[arg-type]


def parse_rule_overrides(items: Iterable[str], *, source: str) -> tuple[RuleOverride, ...]:
    """``NAME=SEVERITY`` items (``--rule``, ``ETL_RULES``) as overrides, in order."""
    out = []
    for item in items:
        name, eq, sev = item.partition("=")
        if not eq:
            raise ConfigError(f"rule override {item!r} from {source} has no '='",
                              hint="write NAME=SEVERITY, e.g. --rule powersets.full_name.unique=warning")
        out.append(rule_override(name, sev, source=source))
    return tuple(out)


def _pyproject_rules(table: object, pyproject: Path) -> tuple[RuleOverride, ...]:
    """``[tool.etl] rules``: ``{"NAME" = "SEVERITY"}`` for whichever dataset has the rule, or
    ``[tool.etl.rules.<dataset>]`` tables for one dataset's rules."""
    source = f"{pyproject.name} [tool.etl] rules"
    if not isinstance(table, Mapping):
        raise ConfigError(f"[tool.etl] rules in {pyproject} must be a table of NAME = SEVERITY",
                          file=pyproject, hint='e.g. rules = { "powersets.full_name.unique" = "warning" }')
    out = []
    for key, value in table.items():
        if isinstance(value, Mapping):
            out += [rule_override(k, v, source=f"{pyproject.name} [tool.etl.rules.{key}]", dataset=key)
                    for k, v in value.items()]
        else:
            out.append(rule_override(key, value, source=source))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the stages need to know about their environment."""

    #: The staging root: a path, or a URI pyarrow opens (``file://``, ``s3://``, ``gs://``,
    #: ``hdfs://``; see :mod:`etl.staging_fs`), kept as the text given.
    staging_dir: Path | str = Path("staging")
    #: Where ``etl init`` writes dataset specs (``NAME.toml``).
    datasets_dir: Path = Path("datasets")
    database_url: str | None = None
    redis_url: str | None = None
    #: DuckDB's memory limit while staging (DuckDB syntax: "256MB", "1GB").
    memory_limit: str = "256MB"
    #: At most this many rows per Parquet chunk.
    chunk_rows: int = 100_000
    #: Worker threads for DuckDB and hashing; 0 means one per core.
    threads: int = 0
    #: Rule severity overrides, in precedence order (a later one for the same rule wins).
    rules: tuple[RuleOverride, ...] = ()
    #: Where staging runs: ``local`` (threads in this process) or ``ray`` (tasks on a Ray cluster).
    engine: Engine = "local"
    #: The Ray cluster to join (``ray://host:10001``, ``auto``, ``host:port``); none: a local
    #: Ray is started for the run (``threads`` CPUs, or one per core) and shut down after.
    ray_address: str | None = None

    @property
    def staging_root(self) -> StagePath:
        """The staging root resolved: a :class:`~pathlib.Path`, or a remote path for a URI."""
        return resolve(self.staging_dir)

    def with_overrides(self, **flags: Any) -> Settings:
        """Apply flags that were given (``None`` means not given)."""
        given = {k: v for k, v in flags.items() if v is not None}
        rules = given.pop("rules", None)
        out = replace(self, **_coerce(given)) if given else self
        if rules:
            # Flags add to the rules set below them: a rule named again takes the flag's severity.
            extra = tuple(r if isinstance(r, RuleOverride) else parse_rule_overrides([r], source="--rule")[0]
                          for r in rules)
            out = replace(out, rules=(*out.rules, *extra))
        return out


def _coerce(values: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    types = {f.name: f.type for f in fields(Settings)}
    for key, value in values.items():
        if key not in types:
            raise ConfigError(f"unknown setting {key!r}", hint=f"known settings: {', '.join(types)}")
        kind = str(types[key])
        try:
            if key == "staging_dir" and is_uri(str(value)):
                out[key] = str(value)  # a URI: Path() would fold its "//"
            elif "Path" in kind:
                out[key] = Path(value)
            elif kind == "int":
                out[key] = int(value)
            elif key == "engine":
                out[key] = _engine(value)
            else:
                out[key] = str(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"setting {key}={value!r} is not valid: {exc}",
                              hint=f"fix it where it is set: the --{key.replace('_', '-')} flag, "
                                   f"ETL_{key.upper()} or [tool.etl] in pyproject.toml") from exc
    return out


def shared_data(*names: str) -> Path | None:
    """The first ``$ETL_SHARED_DATA/<name>`` of ``names`` that exists; None when the variable is
    unset or none of them is there."""
    root = os.environ.get(SHARED_DATA_ENV)
    if not root:
        return None
    for name in names:
        if (Path(root) / name).exists():
            return Path(root) / name
    return None


def _engine(value: object) -> Engine:
    engine = str(value).strip().lower()
    if engine not in ENGINES:
        raise ConfigError(f"engine {value!r} is not known", hint=f"use one of: {', '.join(ENGINES)}")
    return engine  # type: ignore[return-value]


def find_pyproject(start: Path | None = None) -> Path | None:
    """The nearest pyproject.toml at or above ``start`` (the working directory)."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            return candidate
    return None


def load_settings(*, start: Path | None = None, **flags: Any) -> Settings:
    """Resolve settings from flags, the environment, pyproject.toml and defaults."""
    merged: dict[str, Any] = {}
    rules: tuple[RuleOverride, ...] = ()
    pyproject = find_pyproject(start)
    if pyproject is not None:
        try:
            table = tomllib.loads(pyproject.read_text()).get("tool", {}).get("etl", {})
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"cannot parse {pyproject}: {exc}", file=pyproject) from exc
        merged.update({k.replace("-", "_"): v for k, v in table.items()})
        for key in ("staging_dir", "datasets_dir"):
            if key in merged and not is_uri(str(merged[key])) and not Path(merged[key]).is_absolute():
                merged[key] = pyproject.parent / merged[key]
        if "rules" in merged:
            rules += _pyproject_rules(merged.pop("rules"), pyproject)
    for key, names in ENV.items():
        for name in names:
            if os.environ.get(name):
                merged[key] = os.environ[name]
                break
    if os.environ.get(RULES_ENV):
        items = [i for i in os.environ[RULES_ENV].replace(";", ",").split(",") if i.strip()]
        rules += parse_rule_overrides(items, source=RULES_ENV)
    merged.update({k: v for k, v in flags.items() if v is not None})
    flag_rules = merged.pop("rules", None) or ()
    return Settings(rules=rules).with_overrides(**merged, rules=flag_rules)


def memory_bytes(limit: str) -> int:
    """A memory limit as DuckDB writes it ("256MB", "1GiB") in bytes.

    >>> memory_bytes("256MB"), memory_bytes("1 GiB")
    (256000000, 1073741824)
    """
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B)?\s*", limit, re.IGNORECASE)
    if not m:
        raise ConfigError(f"memory limit {limit!r} is not a size like 256MB or 1GB",
                          hint="give --memory-limit / ETL_MEMORY_LIMIT as e.g. 256MB or 1GB")
    scale = {"": 1, "B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12,
             "KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30, "TIB": 1 << 40}
    return int(float(m.group(1)) * scale[(m.group(2) or "").upper()])
