"""``etl init``: infer a spec from an export and write it where the project keeps its specs."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path

from etl.errors import ConfigError
from etl.spec.infer import MAX_RECORD_BYTES, infer
from etl.spec.model import Spec, SpecFormatError, check_dataset_name, fresh_name, widen

log = logging.getLogger(__name__)

@dataclass(frozen=True, slots=True)
class Written:
    """What :func:`init` wrote: the spec and the file (and with ``update``, what changed)."""

    spec: Spec
    path: Path
    changes: tuple[str, ...] = ()


def init(name: str, sources: list[Path], *, out: Path | None = None, datasets_dir: Path,
         force: bool = False, strict: bool = False, update: bool = False,
         max_record_bytes: int = MAX_RECORD_BYTES) -> Written:
    """Infer the spec of the export in ``sources`` (every record is read) and write it as TOML to
    ``out``, by default ``datasets_dir/NAME.toml``. An existing file is kept unless ``force``: a spec
    is meant to be edited, and an edited spec must not be overwritten by accident. ``update``: bring
    the existing spec along instead (:func:`merge`: what it declares is kept as edited, what the
    export adds is added); with no ``sources``, the export the spec names as its root is read.
    A file holding a record over ``max_record_bytes`` is skipped with a warning (see :func:`infer`)."""
    try:
        check_dataset_name(name)
    except SpecFormatError as exc:
        raise ConfigError(str(exc), hint="etl init NAME SOURCE..., NAME like my_export") from None
    target = out or datasets_dir / f"{name}.toml"
    changes: list[str] = []
    if update:
        if not target.is_file():
            raise ConfigError(f"no spec {target} to update", file=target,
                              hint=f"write one first: etl init {name} SOURCE...")
        try:
            existing = Spec.from_toml(target.read_text(encoding="utf-8"))
        except SpecFormatError as exc:
            raise ConfigError(f"spec {target}: {exc}", file=target) from None
        spec, changes = merge(existing, infer(existing.name, sources or [Path(existing.root)], strict=strict,
                                              max_record_bytes=max_record_bytes))
    else:
        if target.exists() and not force:
            raise ConfigError(f"{target} exists already", file=target,
                              hint="pass --update to bring it along with the export, --force to "
                                   "replace it, or --out for another file")
        if not sources:
            raise ConfigError("no SOURCE given", hint=f"etl init {name} EXPORT_DIR")
        spec = infer(name, sources, strict=strict, max_record_bytes=max_record_bytes)
    text = spec.to_toml()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(target)
    log.info("wrote %s (%d sources, %d changes)", target, len(spec.sources), len(changes))
    return Written(spec, target, tuple(changes))


def merge(existing: Spec, fresh: Spec) -> tuple[Spec, list[str]]:
    """``existing`` (a spec as the user edited it) brought along with ``fresh`` (inferred from a
    later export): every source, level, column, key and rule of ``existing`` is kept as it is
    (names, keys, rules, policies), a declared column's type is widened where the export needs a
    wider one, and the sources, levels and columns only ``fresh`` has are added. Counts are the
    fresh ones. Returns the spec and what changed, in words."""
    out = copy.deepcopy(existing)
    out.warnings, out.skipped = list(fresh.warnings), list(fresh.skipped)
    changes: list[str] = []
    tables = {lv.table for src in out.sources for lv in src.levels}
    for new_src in fresh.sources:
        src = next((s for s in out.sources if s.name == new_src.name or s.patterns == new_src.patterns), None)
        if src is None:
            for added in new_src.levels:
                added.table = fresh_name(added.table, tables)
            out.sources.append(new_src)
            changes.append(f"source {new_src.name}: new ({new_src.files:,} files, "
                           f"{len(new_src.levels)} levels)")
            continue
        src.files = new_src.files
        for new_lv in new_src.levels:
            lv = next((x for x in src.levels if x.path == new_lv.path), None)
            if lv is None:
                new_lv.table = fresh_name(new_lv.table, tables)
                src.levels.append(new_lv)
                changes.append(f"level {new_lv.table} ({new_lv.path}): new, {len(new_lv.columns)} columns")
                continue
            lv.rows = new_lv.rows
            taken = {c.name for c in lv.columns}
            for new_col in new_lv.columns:
                col = next((c for c in lv.columns if c.json == new_col.json), None)
                if col is None:
                    new_col.name = fresh_name(new_col.name, taken)
                    lv.columns.append(new_col)
                    changes.append(f"{lv.table}.{new_col.name}: new column ({new_col.type}, from "
                                   f"{'.'.join(new_col.json)})")
                    continue
                col.nulls = new_col.nulls
                wider = widen(col.type, new_col.type)
                if wider is not None and wider != col.type:
                    changes.append(f"{lv.table}.{col.name}: {col.type} -> {wider}")
                    col.type = wider
    return out, changes


