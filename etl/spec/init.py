"""``etl init``: infer a spec from an export and write it where the project keeps its specs."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from etl.errors import ConfigError
from etl.spec.infer import infer
from etl.spec.model import Spec

log = logging.getLogger(__name__)

_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")


@dataclass(frozen=True, slots=True)
class Written:
    """What :func:`init` wrote: the spec and the file."""

    spec: Spec
    path: Path


def init(name: str, sources: list[Path], *, out: Path | None = None, datasets_dir: Path,
         force: bool = False, strict: bool = False) -> Written:
    """Infer the spec of the export in ``sources`` (every record is read) and write it as TOML to
    ``out``, by default ``datasets_dir/NAME.toml``. An existing file is kept unless ``force``: a spec
    is meant to be edited, and an edited spec must not be overwritten by accident."""
    if not _NAME.fullmatch(name):
        raise ConfigError(f"dataset name {name!r} is not a lower-case identifier",
                          hint="use letters, digits and _, starting with a letter, e.g. my_export")
    target = out or datasets_dir / f"{name}.toml"
    if target.exists() and not force:
        raise ConfigError(f"{target} exists already", file=target,
                          hint="pass --force to replace it, or --out for another file")
    spec = infer(name, sources, strict=strict)
    text = spec.to_toml()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(target)
    log.info("wrote %s (%d sources)", target, len(spec.sources))
    return Written(spec, target)
