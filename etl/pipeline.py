"""Chain the stages: stage → validate → transform → load. Stages never import each other."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from etl.config import Settings
from etl.dataset import Dataset, Generated
from etl.load import LoadResult, Mode, check_database, load
from etl.metrics import Phase, timed
from etl.run import Run, check_run_files, open_run
from etl.stage import stage
from etl.staging_fs import StagePath
from etl.transform import transform
from etl.validate import require_passed, validate
from etl.validate.errors import ValidationFailed

log = logging.getLogger(__name__)
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True, slots=True)
class PipelineResult:
    run: Run
    report: dict[str, Any]
    tables: dict[str, int]
    phases: list[Phase]
    load: LoadResult | None = field(default=None)
    #: The run's report page (``etl run`` writes it; see :mod:`etl.report`).
    report_html: StagePath | None = field(default=None)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "run": str(self.run.path),
            "run_id": self.run.id,
            "dataset": self.run.dataset_name,
            "validation": self.report["status"],
            "tables": self.tables,
            "phases": [p.to_dict() for p in self.phases],
            "total_seconds": round(sum(p.seconds for p in self.phases), 4),
            "peak_rss": max((p.peak_rss for p in self.phases), default=0),
        }
        if self.report_html is not None:
            out["report"] = str(self.report_html)
        if self.run.manifest.get("drift"):
            out["drift"] = self.run.manifest["drift"]
        dups = (self.run.manifest.get("duplicate_keys") or {}).get("records", 0)
        if dups:
            out["duplicate_keys"] = dups
        if self.load is not None:
            out["load"] = {
                "database": _masked(self.load.url),
                "schema": self.load.schema,
                "ledger_id": self.load.ledger_id,
                "mode": self.load.mode,
                "skipped": self.load.skipped,
                "merged": self.load.merged,
                "changed": self.load.changed if self.load.merged else None,
                "tag": self.load.tag,
                "resumed_steps": self.load.resumed_from,
                "checksums": self.load.checksums,
            }
        return out


def _masked(url: str) -> str:
    from etl.errors import mask_secrets

    return mask_secrets(url)


@contextmanager
def one_ray(settings: Settings) -> Iterator[None]:
    """With the ray engine, one Ray session for a whole run: its stage, transform and COPY
    tasks run on it (each would otherwise join the cluster, or start a local Ray, of its own:
    seconds each). Does nothing for the local engine."""
    if settings.engine != "ray":
        yield
        return
    from etl.infra.cluster import ray_session

    with ray_session(settings):
        yield


def run_pipeline(
    dataset: Dataset,
    sources: Sequence[str | Path],
    *,
    settings: Settings,
    max_reject_ratio: float = 0.0,
    force: bool = False,
    progress: Progress | None = None,
    strict: bool = False,
    max_record_bytes: int = 64 << 20,
) -> PipelineResult:
    """Stage, validate and transform ``sources``; stop with :class:`ValidationFailed` on errors
    (``strict``: also on a file a quarantining source would leave out)."""
    with one_ray(settings):
        staged = stage(dataset, sources, settings=settings, force=force, progress=progress,
                       strict=strict, max_record_bytes=max_record_bytes)
        dataset = staged.dataset or dataset  # a spec evolved by drift
        checked = validate(staged.run, dataset, max_reject_ratio=max_reject_ratio, rules=settings.rules,
                           progress=progress)
        try:
            require_passed(checked)
        except ValidationFailed as exc:  # the page shows the failing rules and their rows: say where
            page = _report(checked.run, None, settings)
            if page is not None:
                exc.hint = (f"{exc.hint}; the run's report: {page}" if exc.hint
                            else f"the run's report: {page}")
            raise
        built = transform(checked.run, dataset, progress=progress, settings=settings)
    return PipelineResult(built.run, checked.report, built.rows,
                          [staged.phase, checked.phase, built.phase])


def run_all(
    dataset: Dataset,
    sources: Sequence[str | Path],
    *,
    settings: Settings,
    max_reject_ratio: float = 0.0,
    mode: Mode = "full",
    force: bool = False,
    progress: Progress | None = None,
    tag: str | None = None,
    delete_missing: bool = False,
    strict: bool = False,
    warm: int = 0,
    max_record_bytes: int = 64 << 20,
) -> PipelineResult:
    """Stage → validate → transform → load (with indexes, views, verification and the swap;
    or, with ``mode="merge"``, an upsert into the live tables).

    Validation errors stop the run before anything reaches the database; the database is
    checked first (reachable, a ledger revision this toolkit knows:
    :func:`~etl.load.check_database`), before any staging."""
    url = check_database(settings.database_url)
    with one_ray(settings):
        first = run_pipeline(dataset, sources, settings=settings, max_reject_ratio=max_reject_ratio,
                             force=force, progress=progress, strict=strict,
                             max_record_bytes=max_record_bytes)
        if first.run.manifest["dataset_version"] != dataset.version:  # a spec evolved by drift
            from etl.datasets import dataset_of

            dataset = dataset_of(first.run)
        loaded = load(first.run, dataset, database_url=url, mode=mode, force=force,
                      progress=progress, tag=tag, delete_missing=delete_missing, warm=warm,
                      settings=settings)
    return PipelineResult(first.run, first.report, first.tables, [*first.phases, *loaded.phases],
                          loaded, report_html=_report(first.run, loaded, settings))


def _report(run: Run, loaded: LoadResult | None, settings: Settings) -> StagePath | None:
    """The run's report page with the figures of the load just made (if any); None (and a
    warning) if it cannot be written: it must not hide how the run ended, and `etl report RUN`
    can write it later."""
    from etl.report import load_figures, write_report

    try:
        return write_report(run, load=load_figures(loaded) if loaded is not None else None,
                            memory_limit=settings.memory_limit,
                            threads=settings.threads or None)
    except Exception as exc:  # anything: a report must not turn a finished load into a failure
        log.warning("the report of %s was not written (%s); write it with `etl report %s`",
                    run.id, exc, run.path)
        return None


def rebuild(
    run_dir: str | StagePath,
    dataset: Dataset | None = None,
    *,
    settings: Settings,
    progress: Progress | None = None,
) -> PipelineResult:
    """Rebuild the dataset in the database from a staged run directory alone.

    Every chunk file is checked against the manifest's sha256 first (a changed or missing file
    is refused, named). A run not yet transformed is validated and transformed from its raw
    chunks. The load then runs as a full load in mode ``rebuild``. ``dataset``: the run's
    dataset (default: the spec the run keeps, or the registered one of its name)."""
    run = open_run(run_dir)
    if dataset is None:
        from etl.datasets import dataset_of

        dataset = dataset_of(run)
    run.check_dataset(dataset)
    url = check_database(settings.database_url)  # before hashing every chunk
    with timed("check") as phase:
        phase.rows = check_run_files(run.path, run.manifest)
    phases = [phase]
    report = run.report() or {"status": run.manifest.get("validation", {}).get("status", "unknown")}
    with one_ray(settings):
        if "tables" not in run.manifest:
            checked = validate(run, dataset, rules=settings.rules, progress=progress)
            require_passed(checked)
            built = transform(checked.run, dataset, progress=progress, settings=settings)
            phases += [checked.phase, built.phase]
            report = checked.report
            run = built.run
        loaded = load(run, dataset, database_url=url, mode="rebuild", force=True,
                      progress=progress, settings=settings)
    tables = {n: int(e["rows"]) for n, e in run.manifest["tables"].items()}
    return PipelineResult(run, report, tables, [*phases, *loaded.phases], loaded)


def demo(dataset: Dataset, out: Path, *, settings: Settings, size: int | None = None, load: bool = True,
         progress: Progress | None = None,
         generated: Callable[[Generated], None] | None = None) -> tuple[Generated, PipelineResult]:
    """``etl demo``: write the dataset's demo export (its generator's :attr:`Generator.demo`
    options, ``size`` overriding its :attr:`Generator.demo_size` option) to ``out``, report it to
    ``generated``, then run the whole pipeline on it (without the load: up to transform)."""
    from etl.errors import ConfigError

    gen = dataset.generator
    if gen is None or gen.demo is None:
        raise ConfigError(f"dataset {dataset.name} has no demo",
                          hint="run `etl demo --help` for the datasets that have one")
    if load:  # before generating: a wrong URL fails at once
        check_database(settings.database_url)
    options = dict(gen.demo)
    if size is not None and gen.demo_size:
        options[gen.demo_size] = size
    made = gen.generate(out, **options)
    if generated is not None:
        generated(made)
    if load:
        return made, run_all(dataset, [str(out)], settings=settings, progress=progress)
    return made, run_pipeline(dataset, [str(out)], settings=settings, progress=progress)
