"""The benchmark behind ``etl bench``: real exports (and renamed copies of them for scale) or
generated ones, one process per phase, real figures."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from etl.config import SHARED_DATA_ENV, Engine, shared_data
from etl.dataset import BenchSpec, Dataset, Generated
from etl.datasets import get_dataset
from etl.errors import ConfigError

_PHASE_SCRIPT = """
import json, sys, time
t0 = time.perf_counter()
from etl import Settings, open_run
from etl.datasets import resolve as get_dataset
from etl.metrics import bounded_allocators
bounded_allocators()
phase, arg, staging = sys.argv[1], sys.argv[2], sys.argv[3]
dataset = sys.argv[5]
max_reject_ratio = float(sys.argv[6]) if len(sys.argv) > 6 else 0.0
settings = Settings(staging_dir=staging)
if phase == "stage":
    from etl.stage import stage
    r = stage(get_dataset(dataset), [arg], settings=settings, force=True)
    out = {"run": str(r.run.path), **r.phase.to_dict()}
elif phase.startswith("stage-ray:"):
    # The run on a local Ray of N worker CPUs, started first (and timed apart): the stage, the
    # transform and the load's COPY then run on it as on a cluster that was already up.
    import ray
    from etl.stage import stage
    from etl.transform import transform
    from etl.validate import validate
    workers = int(phase.split(":")[1])
    t = time.perf_counter()
    ray.init(address="local", num_cpus=workers, include_dashboard=False, log_to_driver=False)
    started = time.perf_counter() - t
    settings = Settings(staging_dir=staging, engine="ray", threads=workers)
    ds = get_dataset(dataset)
    # Twice: the first stage also starts the worker processes (and their imports); the second
    # is what a cluster that has run a stage before gives.
    cold = stage(ds, [arg], settings=settings, force=True)
    r = stage(ds, [arg], settings=settings, force=True)
    out = {"run": str(r.run.path), **r.phase.to_dict(), "name": f"stage (ray, {workers} worker"
           + ("s" if workers > 1 else "") + ")", "workers": workers, "ray_start_seconds": started,
           "cold_seconds": cold.phase.seconds}
    checked = validate(r.run, ds, max_reject_ratio=max_reject_ratio)  # in this process, untimed
    if checked.passed:
        built = transform(checked.run, ds, settings=settings)
        out["transform"] = built.phase.to_dict()
        if sys.argv[4]:
            from etl.load import load
            loaded = load(built.run, ds, database_url=sys.argv[4], force=True, settings=settings)
            parts = [p.to_dict() for p in loaded.phases]
            out["load"] = {"seconds": sum(p["seconds"] for p in parts), "parts": parts,
                           "rows": sum(loaded.rows.values())}
    ray.shutdown()
elif phase in ("load", "load-unsafe", "merge"):
    from etl.load import load
    mode = {"load-unsafe": "unsafe-fast", "merge": "merge"}.get(phase, "full")
    r = load(open_run(arg), get_dataset(dataset), database_url=sys.argv[4], force=True, mode=mode)
    parts = [p.to_dict() for p in r.phases]
    out = {"name": "merge" if mode == "merge" else "load+post-load", "merged": r.merged,
           "seconds": sum(p["seconds"] for p in parts),
           "rows": sum(r.rows.values()), "peak_rss": max(p["peak_rss"] for p in parts),
           "parts": parts}
elif phase == "validate":
    from etl.validate import validate
    r = validate(open_run(arg), get_dataset(dataset), max_reject_ratio=max_reject_ratio)
    out = {"status": r.report["status"], **r.phase.to_dict(),
           "rejected": {k: v["rejected"] for k, v in r.report["levels"].items() if v["rejected"]}}
elif phase == "init":
    from etl.metrics import peak_rss_bytes
    from etl.spec import infer
    from pathlib import Path
    t = time.perf_counter()
    spec = infer(dataset + "_inferred", [arg])
    seconds = time.perf_counter() - t
    spec_file = Path(staging) / f"{spec.name}.toml"
    spec_file.parent.mkdir(parents=True, exist_ok=True)
    spec_file.write_text(spec.to_toml())
    out = {"name": "init", "seconds": seconds, "peak_rss": peak_rss_bytes(), "spec": str(spec_file),
           "rows": sum(lv.rows for src in spec.sources for lv in src.levels),
           "records": sum(lv.rows for src in spec.sources for lv in src.levels if not lv.path),
           "sources": len(spec.sources), "levels": sum(len(src.levels) for src in spec.sources)}
else:
    from etl.transform import transform
    r = transform(open_run(arg), get_dataset(dataset))
    out = {"tables": r.rows, **r.phase.to_dict()}
out["process_seconds"] = time.perf_counter() - t0
import resource
own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
out["cpu_seconds"] = own.ru_utime + own.ru_stime  # the whole process, all threads, imports too
out["children_cpu_seconds"] = kids.ru_utime + kids.ru_stime  # worker processes that ended
print(json.dumps(out))
"""


def machine_cpu_seconds() -> float | None:
    """CPU seconds the whole machine has been busy since boot (every process: the database
    server, worker processes, this one), from ``/proc/stat``; None where there is none."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    # user nice system idle iowait irq softirq steal: busy is all but idle and iowait
    ticks = [int(x) for x in fields[1:9]]
    busy = ticks[0] + ticks[1] + ticks[2] + ticks[5] + ticks[6] + ticks[7]
    return busy / os.sysconf("SC_CLK_TCK")


def _total_cpu(phases: list[dict[str, Any]]) -> float | None:
    each = [p.get("machine_cpu_seconds") for p in phases]
    return None if any(c is None for c in each) else sum(each)  # type: ignore[arg-type]


def _run_phase(phase: str, arg: str, staging: Path, url: str = "", dataset: str = "",
               max_reject_ratio: float = 0.0) -> dict[str, Any]:
    busy = machine_cpu_seconds()
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", _PHASE_SCRIPT, phase, arg, str(staging), url,
                             dataset, repr(max_reject_ratio)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampler = _RssSampler(proc.pid)
    try:
        out, errs = proc.communicate()
    finally:
        sampled = sampler.stop()
    wall = time.perf_counter() - start
    busy_after = machine_cpu_seconds()
    if proc.returncode != 0:
        from etl.errors import EtlError

        tail = "\n".join(errs.strip().splitlines()[-12:])
        raise EtlError(f"bench phase {phase} failed (exit {proc.returncode}):\n{tail}",
                       hint="run that phase's command (etl stage/validate/transform/load) on the bench's "
                            "export or run to see the whole error")
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    result["wall_seconds"] = wall
    # The work the phase cost the machine, the database server's included (the in-process
    # figures only see this process): on N cores no schedule does it in under this / N.
    result["machine_cpu_seconds"] = None if busy is None or busy_after is None else busy_after - busy
    result.update(sampled)
    return result


class _RssSampler:
    """The largest anonymous and file-backed resident sizes of a process, read from
    ``/proc/<pid>/status`` every 20 ms while it runs (``sampled_anon_mb``, ``sampled_file_mb``;
    empty where there is no /proc). The peak RSS a phase reports counts file-backed pages too,
    mostly the shared libraries it maps (pyarrow, Polars, DuckDB), which vary with the page
    cache: 69 MB after ``import etl.cli`` on a warm machine, 131 MB right after a fresh install;
    the anonymous part is the phase's own memory. Sampled, so a spike shorter than 20 ms can be
    missed."""

    def __init__(self, pid: int) -> None:
        self.path = Path(f"/proc/{pid}/status")
        self.peak = {"RssAnon": 0, "RssFile": 0}
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, name="etl-bench-rss", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.done.is_set():
            try:
                text = self.path.read_text()
            except OSError:
                return
            for line in text.splitlines():
                key, _, value = line.partition(":")
                if key in self.peak:
                    self.peak[key] = max(self.peak[key], int(value.split()[0]))
            self.done.wait(0.02)

    def stop(self) -> dict[str, float]:
        self.done.set()
        self.thread.join()
        if not self.peak["RssAnon"]:
            return {}
        return {"sampled_anon_mb": round(self.peak["RssAnon"] / 1024, 1),
                "sampled_file_mb": round(self.peak["RssFile"] / 1024, 1)}


def _spec_run(spec: str, export: str, staging: Path, url: str,
              max_reject_ratio: float) -> list[dict[str, Any]]:
    staged = _run_phase("stage", export, staging, dataset=spec)
    checked = _run_phase("validate", staged["run"], staging, dataset=spec,
                         max_reject_ratio=max_reject_ratio)
    if checked["status"] != "passed":
        from etl.validate.errors import ValidationFailed

        raise ValidationFailed(f"the inferred spec {spec} rejects rows of {export}: "
                               f"{checked.get('rejected')}",
                               run=Path(staged["run"]).name,
                               hint=f"see {Path(staged['run']) / 'report.json'}")
    phases = [staged, checked, _run_phase("transform", staged["run"], staging, dataset=spec)]
    if url:
        phases.append(_run_phase("load", staged["run"], staging, url, spec))
    return phases


def copy_ceiling(url: str, dataset_name: str) -> dict[str, Any]:
    """The ceiling the load is measured against: server-side ``COPY … FROM file (FORMAT binary)``
    of the live tables' rows, into bare tables created in the same transaction (as the loader's
    COPY does after its TRUNCATE), no client involved."""
    from etl.infra.pg import connect, quote_ident
    from etl.infra.schema import create_tables_sql

    dataset = get_dataset(dataset_name)
    folder = Path(tempfile.mkdtemp(prefix="etl-ceiling-"))
    os.chmod(folder, 0o777)  # the server process writes and reads these files
    scratch = f"{dataset.name}__ceiling"
    try:
        with connect(url) as conn:
            for t in dataset.tables:
                path = folder / f"{t.name}.bin"
                conn.execute(f"COPY {quote_ident(dataset.name)}.{quote_ident(t.name)} TO "
                             f"'{path}' (FORMAT binary)")
            conn.execute(f"DROP SCHEMA IF EXISTS {quote_ident(scratch)} CASCADE")
            conn.execute(f"CREATE SCHEMA {quote_ident(scratch)}")
            size = sum(p.stat().st_size for p in folder.iterdir())
            start = time.perf_counter()
            with conn.transaction():
                for stmt in create_tables_sql(dataset, scratch):
                    conn.execute(stmt)
                for t in dataset.tables:
                    conn.execute(f"COPY {quote_ident(scratch)}.{quote_ident(t.name)} FROM "
                                 f"'{folder / (t.name + '.bin')}' (FORMAT binary)")
            seconds = time.perf_counter() - start
            conn.execute(f"DROP SCHEMA {quote_ident(scratch)} CASCADE")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {"seconds": seconds, "bytes": size}


def _spec(dataset: Dataset) -> BenchSpec:
    if dataset.bench is None:
        raise ConfigError(f"dataset {dataset.name} declares no bench (no generator of exports to measure)",
                          hint="benchmark a dataset whose `bench` is set, e.g. one of `etl datasets`")
    return dataset.bench


def _figures(made: Generated) -> dict[str, Any]:
    """What a bench export's marker file records."""
    return {"files": made.files, "bytes": made.bytes, "entries": made.entries, **made.extra}


def find_real_export(dataset: str, template: Path | None = None, *, full: bool = True) -> Path | None:
    """The real export a bench of ``dataset`` measures: ``template`` when given, else the first
    ``$ETL_SHARED_DATA/<name>`` that exists (no other folder is assumed), for the names the
    dataset's bench prefers (:attr:`BenchSpec.real`; mids: the complete export ``mids_full``
    before the 32-file sample ``mids``); with ``full`` false (a template to amplify, which is
    read whole into memory), its :attr:`BenchSpec.sample` names only."""
    if template is not None:
        return template if template.is_dir() else None
    spec = get_dataset(dataset).bench
    real = spec.real if spec is not None else (dataset,)
    names = real if full or spec is None or spec.sample is None else spec.sample
    found = shared_data(*names)
    return found if found is not None and found.is_dir() else None


def _real_copies(dataset: Dataset, template: Path, copies: int, work_dir: Path,
                 log: Callable[[str], None]) -> tuple[Path, dict[str, Any]]:
    """The real export times ``copies``: the export itself, read in place, for 1; otherwise
    ``copies`` renamed copies of it under ``work_dir`` (written once, kept between runs)."""
    spec = _spec(dataset)
    assert spec.copies is not None and spec.measure is not None
    template = template.resolve()
    if copies == 1:
        return template, {**_figures(spec.measure(template)), "copies": 1, "template": str(template),
                          "in_place": True}
    tag = hashlib.sha1(f"{template}|{spec.copy_version}".encode()).hexdigest()[:8]
    export = work_dir / f"{dataset.name}-x{copies}-{template.name}-{tag}"
    marker = export / ".complete.json"
    if not marker.exists():
        shutil.rmtree(export, ignore_errors=True)
        log(f"writing {copies} renamed copies of {template} in {export} …")
        made = spec.copies(template, export, copies)
        marker.write_text(json.dumps({**_figures(made), "copies": copies, "template": str(template),
                                      "in_place": False}))
    return export, json.loads(marker.read_text())


def bench(
    dataset: str,
    *,
    copies: list[int] | None = None,
    sizes: list[int] | None = None,
    template: Path | None = None,
    work_dir: Path,
    log: Callable[[str], None] = lambda msg: None,
    database_url: str | None = None,
    load: bool = True,
    max_reject_ratio: float = 0.0,
    engine: Engine = "local",
) -> list[dict[str, Any]]:
    """``etl bench``: what to measure, decided from the dataset's :class:`BenchSpec`, then
    :func:`run_bench`. Given ``copies``, or given no ``sizes`` when the dataset makes copies and
    a real export is found: the real export and renamed copies of it (default
    :attr:`BenchSpec.default_copies`). Otherwise exports generated to ``sizes`` (default
    :attr:`BenchSpec.sizes`), amplified from the real sample where the dataset does that."""
    spec = _spec(get_dataset(dataset))
    full = bool(copies) or not sizes  # amplifying (sizes) reads its template whole: the sample
    real = find_real_export(dataset, template, full=full) if spec.real else None
    if real is None and spec.real and not sizes and not copies:
        log(f"no real {dataset} export found: pass --template DIR or set {SHARED_DATA_ENV} to the "
            f"folder holding {(spec.real or (dataset,))[0]}/ to measure it; measuring generated "
            "exports instead")
    if copies or (spec.copies is not None and real is not None and not sizes):
        sizes, plan = [], list(copies or spec.default_copies)
    else:
        sizes, plan = list(sizes or spec.sizes), []
    return run_bench(sizes, copies=plan, template=real, work_dir=work_dir, log=log,
                     database_url=database_url, load=load, dataset=dataset,
                     max_reject_ratio=max_reject_ratio, engine=engine)


def run_bench(
    sizes: list[int],
    *,
    template: Path | None,
    work_dir: Path,
    log: Callable[[str], None] = lambda msg: None,
    seed: int = 1,
    database_url: str | None = None,
    load: bool = True,
    dataset: str,
    copies: list[int] | None = None,
    max_reject_ratio: float = 0.0,
    engine: Engine = "local",
    ray_workers: tuple[int, ...] = (1, 2),
) -> list[dict[str, Any]]:
    """Prepare an export per size (kept between runs), then time each phase in its own process:
    stage, validate, transform and (with ``load``) the load through indexes, the materialized
    view, verification and the swap, plus the server-side COPY ceiling.

    ``copies`` (datasets whose bench makes them, e.g. mids): measure the real export ``template``
    itself (1) and ``N`` renamed copies of it, e.g. ``[1, 5]`` for the full export and five
    times it. ``sizes``: exports generated to about that size instead, in the dataset's
    :attr:`BenchSpec.unit` (made by :attr:`BenchSpec.export`, from ``template`` where the dataset
    amplifies a real sample). With :attr:`BenchSpec.reimport`, the load is a first import and a
    merge of the same export again. ``max_reject_ratio`` is passed to
    validate, so a run whose validation rejects rows can still be measured through the load.
    ``engine="ray"`` also runs each export on a local Ray of each of ``ray_workers`` worker
    CPUs: the stage (results' ``stage_engines``, beside the local stage), then the transform
    and (with ``load``, a full load) the load with its COPY as Ray tasks; ``engines`` gives the
    seconds of stage, transform, load and COPY per engine. Validate, and the local phases the
    rest of the results report, run locally as before."""
    ds = get_dataset(dataset)
    if engine == "ray":
        from etl.infra.cluster import import_ray

        import_ray()  # says how to install it, before anything is measured
    spec = _spec(ds)
    if copies and (spec.copies is None or template is None):
        raise ConfigError(f"--copies makes renamed copies of a real {dataset} export and needs one"
                          if spec.copies is not None else
                          f"--copies: the {dataset} bench makes no renamed copies of a real export",
                          hint=f"pass --template DIR (a real {dataset} export), or set {SHARED_DATA_ENV} "
                               f"to the folder holding {(spec.real or (dataset,))[0]}/"
                          if spec.copies is not None else "measure --entries instead")
    url = ""
    if load:
        from etl.infra.pg import resolve_url

        url = resolve_url(database_url)
    results = []
    plans: list[tuple[str, int]] = [("copies", n) for n in copies or []] + [("entries", n) for n in sizes]
    for how, entries in plans:
        if how == "copies":
            assert template is not None
            export, info = _real_copies(ds, template, entries, work_dir, log)
        else:
            kind = "real" if template else "synthetic"
            export = work_dir / f"{dataset}-{entries}-{kind}-s{seed}"
            marker = export / ".complete.json"
            if not marker.exists():
                shutil.rmtree(export, ignore_errors=True)
                log(f"generating a {entries:,}-{spec.unit[0]} export in {export} …")
                marker.write_text(json.dumps(_figures(spec.export(export, entries, seed, template))))
            info = json.loads(marker.read_text())
        staging = work_dir / "staging"
        log(f"measuring {info['entries']:,} entries ({info['files']:,} files, "
            f"{info['bytes'] / 1e6:,.0f} MB) …")
        # etl init on the same export, as if the dataset were not built in (issue 14): its own
        # process, not part of the pipeline's total.
        inferred = _run_phase("init", str(export), staging, dataset=dataset)
        staged = _run_phase("stage", str(export), staging, dataset=dataset)
        engines = [{**staged, "engine": "local"}]
        if engine == "ray":
            # The same run staged again on Ray (same run id, same rows), transformed and (a full
            # load) loaded on it; what follows reads the run and loads it again.
            for workers in ray_workers:
                log(f"staging, transforming{' and loading' if load and not spec.reimport else ''} on a "
                    f"local Ray of {workers} worker CPU(s) …")
                engines.append({**_run_phase(f"stage-ray:{workers}", str(export), staging,
                                             url if load and not spec.reimport else "", dataset=dataset,
                                             max_reject_ratio=max_reject_ratio), "engine": "ray"})
        checked = _run_phase("validate", staged["run"], staging, dataset=dataset,
                             max_reject_ratio=max_reject_ratio)
        if checked["status"] != "passed":
            from etl.validate.errors import ValidationFailed

            rejected = ", ".join(f"{k} {n:,}" for k, n in checked.get("rejected", {}).items())
            raise ValidationFailed(
                f"validation of the bench export {export} failed ({rejected} rows rejected): "
                "nothing to transform or load", dataset=dataset, run=Path(staged["run"]).name,
                hint=f"see {Path(staged['run']) / 'report.json'}; measure anyway with "
                     "--max-reject-ratio 1")
        built = _run_phase("transform", staged["run"], staging, dataset=dataset)
        phases = [staged, checked, built]
        ceiling = None
        unsafe: dict[str, Any] = {}
        reimport: list[dict[str, Any]] = []
        if load and spec.reimport:
            # First import (a full load), then a re-import of the same tree (a merge that
            # changes nothing), each phase in its own process as the CLI would run it.
            phases.append(_run_phase("load", staged["run"], staging, url, dataset))
            again = _run_phase("stage", str(export), staging, dataset=dataset)
            reimport = [again, _run_phase("validate", again["run"], staging, dataset=dataset,
                                          max_reject_ratio=max_reject_ratio),
                        _run_phase("transform", again["run"], staging, dataset=dataset),
                        _run_phase("merge", again["run"], staging, url, dataset)]
        elif load:
            loaded = _run_phase("load", staged["run"], staging, url, dataset)
            phases.append(loaded)
            ceiling = copy_ceiling(url, dataset)
            unsafe = _run_phase("load-unsafe", staged["run"], staging, url, dataset)
            # Leave the bench database with logged tables, as a normal load would.
            _run_phase("load", staged["run"], staging, url, dataset)
        # The same export through the pipeline with the spec etl init inferred (as if the dataset
        # were not built in): stage, validate, transform and a full load, each in its own process.
        spec_phases = _spec_run(inferred["spec"], str(export), staging, url if load else "",
                                max_reject_ratio)
        local_load = phases[3] if load and not spec.reimport else None
        results.append({
            "engines": _by_engine(engines, built, local_load),
            "dataset": dataset,
            "entries": info["entries"], "files": info["files"], "bytes": info["bytes"],
            "copies": info.get("copies"), "source": str(export),
            "phases": phases,
            "stage_engines": engines,
            "init": inferred,
            "spec_run": {"phases": spec_phases, "total_seconds": sum(p["seconds"] for p in spec_phases),
                         "max_peak_rss": max(p["peak_rss"] for p in spec_phases)},
            "total_seconds": sum(p["seconds"] for p in phases),
            "total_wall_seconds": sum(p["wall_seconds"] for p in phases),
            "max_peak_rss": max(p["peak_rss"] for p in phases),
            "machine_cpu_seconds": _total_cpu(phases),
            "validation": checked["status"],
            "rejected": checked.get("rejected", {}),
            "tables": built["tables"],
            "load_parts": phases[3]["parts"] if load else [],
            "unsafe_fast_parts": unsafe.get("parts", []),
            "reimport": reimport,
            "reimport_seconds": sum(p["seconds"] for p in reimport),
            "reimport_wall_seconds": sum(p["wall_seconds"] for p in reimport),
            "images": info.get("images"),
            "copy_ceiling": ceiling,
            "database": "embedded" if load and not database_url else ("given" if load else None),
            "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        })
    return results


def _by_engine(engines: list[dict[str, Any]], built: dict[str, Any],
               loaded: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Per engine (local; Ray with each number of workers): the seconds of its stage, transform
    and load (all of it, and its COPY phase and COPY statements), in-process."""
    def load_figures(load: dict[str, Any] | None) -> dict[str, Any]:
        if load is None:
            return {}
        copy: dict[str, Any] = next((p for p in load["parts"] if p["name"] == "load"), {})
        return {"load": load["seconds"], "copy": copy.get("seconds"),
                "copy_statements": (copy.get("extra") or {}).get("copy_seconds")}

    out = [{"engine": "local", "workers": None, "stage": engines[0]["seconds"], "transform": built["seconds"],
            **load_figures(loaded)}]
    for p in engines[1:]:
        out.append({"engine": "ray", "workers": p["workers"], "stage": p["seconds"],
                    "transform": (p.get("transform") or {}).get("seconds"), **load_figures(p.get("load"))})
    return out
