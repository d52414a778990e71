"""Dataset registry: the built-ins plus any registered through the ``etl.datasets`` entry point.

A third-party package adds a dataset by exposing a :class:`etl.dataset.Dataset` object::

    [project.entry-points."etl.datasets"]
    mydata = "mypackage.etl_dataset:DATASET"
"""

from __future__ import annotations

import logging
from functools import cache
from importlib import import_module
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from etl.dataset import Dataset, Generated
from etl.errors import ConfigError
from etl.run import RUN_SPEC, Run
from etl.staging_fs import RemotePath

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "etl.datasets"
#: Built-in datasets: name → module holding ``DATASET``.
BUILTINS = {"mids": "etl.datasets.mids", "aodb": "etl.datasets.aodb",
            "licenses": "etl.datasets.licenses"}


@cache
def available() -> dict[str, Dataset]:
    """Every dataset by name: built-ins first, then entry points (which cannot shadow them)."""
    found: dict[str, Dataset] = {}
    for name, module in BUILTINS.items():
        found[name] = import_module(module).DATASET
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in found:
            log.warning("dataset entry point %s (%s) is shadowed by a built-in", ep.name, ep.value)
            continue
        try:
            obj = ep.load()
        except Exception as exc:  # a broken plugin must not break the toolkit
            log.warning("cannot load dataset entry point %s (%s): %s", ep.name, ep.value, exc)
            continue
        if not isinstance(obj, Dataset):
            log.warning("entry point %s does not name an etl.dataset.Dataset", ep.name)
            continue
        found[ep.name] = obj
    return found


def get_dataset(name: str) -> Dataset:
    """The dataset called ``name``; :class:`ConfigError` naming the known ones otherwise."""
    datasets = available()
    try:
        return datasets[name]
    except KeyError:
        raise ConfigError(f"unknown dataset {name!r}",
                          hint=f"known datasets: {', '.join(sorted(datasets))} (see `etl datasets`)"
                          ) from None


def spec_files(datasets_dir: Path) -> dict[str, Path]:
    """The specs in the project's datasets folder, by dataset name (file stem)."""
    if not datasets_dir.is_dir():
        return {}
    return {p.stem: p for p in sorted(datasets_dir.glob("*.toml"))}


def resolve(target: str | Path, *, datasets_dir: Path = Path("datasets")) -> Dataset:
    """The dataset ``target`` names: a spec file (``*.toml``), a registered dataset (built-in or
    entry point), or a spec ``NAME.toml`` in ``datasets_dir`` — in that order, so a spec cannot
    shadow a built-in by name. :class:`ConfigError` listing what is known otherwise."""
    from etl.spec.dataset import read_dataset

    text = str(target)
    path = Path(text)
    if text.endswith(".toml") or path.is_file():
        if not path.is_file():
            raise ConfigError(f"no spec file {text}", file=path,
                              hint=f"write one with `etl init NAME SOURCE... --out {text}`")
        return read_dataset(path)
    datasets = available()
    if text in datasets:
        return datasets[text]
    specs = spec_files(datasets_dir)
    if text in specs:
        return read_dataset(specs[text])
    known = sorted(datasets) + [f"{n} ({p})" for n, p in specs.items() if n not in datasets]
    raise ConfigError(f"unknown dataset {text!r}",
                      hint=f"known datasets: {', '.join(known)}; or infer a spec from your export "
                           f"with `etl init {text if text.isidentifier() else 'NAME'} EXPORT_DIR`")


def dataset_of(run: Run) -> Dataset:
    """The dataset a run was staged with, checked against the run's fingerprint: the spec the run
    keeps (``spec.toml``, for a spec dataset; its post-load SQL from beside the original spec
    file when that is still there), else the registered dataset of the run's name."""
    from etl.spec.dataset import read_dataset

    kept = run.path / RUN_SPEC
    if kept.is_file():
        original = (run.manifest.get("spec") or {}).get("file")
        home = Path(original).parent if original and Path(original).parent.is_dir() else None
        if isinstance(kept, RemotePath):
            from etl.spec.dataset import to_dataset
            from etl.spec.model import Spec

            ds = to_dataset(Spec.from_toml(kept.read_text()), root=home,
                            file=Path(original) if original else None)
        else:
            ds = read_dataset(kept, home=home)
    else:
        ds = get_dataset(run.dataset_name)
    run.check_dataset(ds)
    return ds


def generate(name: str, out: Path, *, seed: int = 0, template: Path | None = None,
             **options: Any) -> Generated:
    """Write an export of dataset ``name`` under ``out`` with its generator: ``options`` are the
    generator's declared options (others, and None values, are left out: the generator's own
    defaults apply); ``template`` a real export to amplify where the generator takes one."""
    ds = get_dataset(name)
    if ds.generator is None:
        makers = ", ".join(n for n, d in available().items() if d.generator)
        raise ConfigError(f"dataset {name} has no generator", hint=f"generate one of: {makers}")
    declared = {o.name for o in ds.generator.options}
    given = {k: v for k, v in options.items() if k in declared and v is not None}
    return ds.generator.generate(out, seed=seed, template=template, **given)
