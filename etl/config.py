"""Settings, resolved as: flag > environment > ``[tool.etl]`` in pyproject.toml > default."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from etl.errors import ConfigError

#: Environment variables read for each setting, first match wins.
ENV = {
    "staging_dir": ("ETL_STAGING_DIR",),
    "database_url": ("ETL_DATABASE_URL", "DATABASE_URL"),
    "redis_url": ("ETL_REDIS_URL",),
    "memory_limit": ("ETL_MEMORY_LIMIT",),
    "chunk_rows": ("ETL_CHUNK_ROWS",),
    "threads": ("ETL_THREADS",),
}


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the stages need to know about their environment."""

    staging_dir: Path = Path("staging")
    database_url: str | None = None
    redis_url: str | None = None
    #: DuckDB's memory limit while staging (DuckDB syntax: "256MB", "1GB").
    memory_limit: str = "256MB"
    #: At most this many rows per Parquet chunk.
    chunk_rows: int = 100_000
    #: Worker threads for DuckDB and hashing; 0 means one per core.
    threads: int = 0

    def with_overrides(self, **flags: Any) -> Settings:
        """Apply flags that were given (``None`` means not given)."""
        given = {k: v for k, v in flags.items() if v is not None}
        return replace(self, **_coerce(given)) if given else self


def _coerce(values: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    types = {f.name: f.type for f in fields(Settings)}
    for key, value in values.items():
        if key not in types:
            raise ConfigError(f"unknown setting {key!r}", hint=f"known settings: {', '.join(types)}")
        kind = str(types[key])
        try:
            if "Path" in kind:
                out[key] = Path(value)
            elif kind == "int":
                out[key] = int(value)
            else:
                out[key] = str(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"setting {key}={value!r} is not valid: {exc}") from exc
    return out


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
    pyproject = find_pyproject(start)
    if pyproject is not None:
        try:
            table = tomllib.loads(pyproject.read_text()).get("tool", {}).get("etl", {})
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"cannot parse {pyproject}: {exc}", file=pyproject) from exc
        merged.update({k.replace("-", "_"): v for k, v in table.items()})
        if "staging_dir" in merged and not Path(merged["staging_dir"]).is_absolute():
            merged["staging_dir"] = pyproject.parent / merged["staging_dir"]
    for key, names in ENV.items():
        for name in names:
            if os.environ.get(name):
                merged[key] = os.environ[name]
                break
    merged.update({k: v for k, v in flags.items() if v is not None})
    return Settings().with_overrides(**merged)
