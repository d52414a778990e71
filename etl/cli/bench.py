"""Benchmarks: bench (the pipeline), bench-reads (cached reads during reloads)."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.table import Table

from etl.cli.failures import failed
from etl.cli.options import (
    cache_options,
    ctx_settings,
    json_option,
    resolve_database_url,
    resolve_redis_url,
)
from etl.cli.render import F, echo_json, err, handle_errors, mb, print_phases
from etl.dataset import BenchSpec
from etl.datasets import available, get_dataset
from etl.metrics import Phase


def _benches() -> dict[str, BenchSpec]:
    return {name: ds.bench for name, ds in available().items() if ds.bench is not None}


def _sizes(spec: BenchSpec) -> str:
    return " and ".join(f"{n:,}" for n in spec.sizes)


def bench_options(fn: F) -> F:
    """``--dataset``, ``--copies``, ``--entries`` and ``--template``, their help and defaults
    from the datasets' bench declarations."""
    benches = _benches()
    what = ", ".join(
        f"{name} ({'the real export and copies, or ' if spec.copies else ''}sizes in {spec.unit[1]}"
        f"{'; first import and re-import' if spec.reimport else ''})" for name, spec in benches.items())
    copying = {name: spec for name, spec in benches.items() if spec.copies is not None}
    prefers = "; ".join(f"{name} prefers {spec.real[0]} to {', '.join(spec.real[1:])}"
                        for name, spec in benches.items() if len(spec.real) > 1)
    options = [
        click.option("--dataset", type=click.Choice(list(benches)), default=next(iter(benches), None),
                     show_default=True, help=f"What to measure: {what}."),
        click.option("--copies", type=int, multiple=True, help=f"{', '.join(copying) or 'None'}: measure "
                     "the real export itself (1) and renamed copies of it for scale (N: every file N "
                     "times, names suffixed _c1.._cN-1 so keys stay unique, data as dirty as the "
                     "original, written compact). Repeatable. Default when a real export is found: "
                     + "; ".join(f"{' and '.join(map(str, spec.default_copies))} ({name})"
                                 for name, spec in copying.items()) + "."),
        click.option("--entries", type=int, multiple=True, help="Generated export sizes to measure "
                     "instead (repeatable): " + ", ".join(f"{name} {spec.unit[1]} (default {_sizes(spec)})"
                                                         for name, spec in benches.items()) + "."),
        click.option("--template", type=click.Path(file_okay=False, path_type=Path),
                     help="The real export (default $ETL_SHARED_DATA/<dataset>, never a folder guessed"
                          + (f"; {prefers}" if prefers else "") + "; without one, generators that "
                          "amplify a real sample fall back to synthetic data where they can)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


@click.command("bench")
@bench_options
@click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path(".etl/bench"), show_default=True,
              help="Where copies, generated exports and staged runs go (kept between runs).")
@click.option("--max-reject-ratio", type=float, default=0.0, show_default=True,
              help="Passed to validate, so an export with rejected rows is still measured.")
@click.option("--database-url", help="Where to load (default: the embedded server).")
@click.option("--no-load", is_flag=True, help="Measure stage, validate and transform only.")
@json_option
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="ray: also run each export on a local Ray of 1 and of 2 worker CPUs, beside "
                   "the local engine: stage, transform and the load's COPY as Ray tasks (validate, "
                   "keys, verify and swap stay local); per-phase seconds by engine.")
@handle_errors
def bench_cmd(dataset: str, copies: tuple[int, ...], entries: tuple[int, ...], template: Path | None,
              work_dir: Path, max_reject_ratio: float, database_url: str | None, no_load: bool,
              as_json: bool, engine: str) -> None:
    """Measure the whole pipeline on the real export, renamed copies of it, or generated exports.

    Each phase runs in its own process, as `etl stage/validate/transform/load` would, and
    reports time, rows, rows/s and that process's peak RSS. The load is measured through keys,
    indexes, the materialized view, verification and the swap, and compared with the ceiling:
    a server-side COPY ... FROM file (FORMAT binary) of the same final rows.

    \b
    Examples:
      etl bench
      etl bench --template ../shared/data/mids_full --copies 5
      etl bench --copies 1 --copies 5 --work-dir /tmp/bench --database-url postgresql://postgres@127.0.0.1/bench
      etl bench --entries 360000 --template ../shared/data/mids
      etl bench --dataset aodb --entries 170000
      etl bench --copies 1 --no-load --engine ray
      etl bench --copies 1 --engine ray
    """
    from etl.bench import bench

    results = bench(dataset, copies=list(copies), sizes=list(entries), template=template, work_dir=work_dir,
                    log=lambda msg: err.print(msg), database_url=database_url, load=not no_load,
                    max_reject_ratio=max_reject_ratio, engine=engine)  # type: ignore[arg-type]
    if as_json:
        echo_json(results)
        return
    for res in results:
        print_phases([Phase(p["name"], p["seconds"], p["rows"], p["peak_rss"]) for p in res["phases"]],
                     title=f"{res['dataset']} {res['entries']:,} "
                           f"{_benches()[res['dataset']].unit[1]}, {res['files']:,} files, "
                           f"{res['bytes'] / 1e6:,.0f} MB"
                           + (f" (real export x{res['copies']})" if res.get("copies") else ""))
        if len(res["stage_engines"]) > 1:
            print_phases([Phase(p["name"] if p["engine"] == "ray" else "stage (local)", p["seconds"],
                                p["rows"], p["peak_rss"]) for p in res["stage_engines"]],
                         title="stage by engine (driver's peak RSS)")
            err.print("Ray, on a local Ray that has staged once (its workers started); starting Ray and "
                      "the first stage: " + ", ".join(
                          f"{p['workers']} worker(s) {p['ray_start_seconds']:.2f} s "
                          f"+ {p['cold_seconds']:.2f} s"
                          for p in res["stage_engines"] if p["engine"] == "ray"))
            by_engine = Table(title="per phase by engine (in-process seconds; Ray: on a local Ray that "
                                    "has staged once)", title_justify="left")
            for col in ("engine", "stage", "transform", "load", "of which COPY", "COPY statements"):
                by_engine.add_column(col, justify="left" if col == "engine" else "right")

            def secs(value: float | None) -> str:
                return f"{value:.2f} s" if value is not None else "-"

            for e in res["engines"]:
                by_engine.add_row("local" if e["engine"] == "local" else
                                  f"ray, {e['workers']} worker{'s' if e['workers'] > 1 else ''}",
                                  *(secs(e.get(k)) for k in ("stage", "transform", "load", "copy",
                                                             "copy_statements")))
            err.print(by_engine)
        if res["load_parts"]:
            print_phases([Phase(p["name"], p["seconds"], p["rows"], p["peak_rss"])
                          for p in res["load_parts"]], title="load, step by step")
        if res.get("rejected"):
            err.print("validation rejected rows (measured with --max-reject-ratio "
                      f"{max_reject_ratio}): " + ", ".join(f"{k} {n:,}" for k, n in res["rejected"].items()))
        spec = res["init"]
        err.print(f"etl init on the same export (a spec inferred from every record): {spec['seconds']:.2f} s "
                  f"in-process ({spec['wall_seconds']:.2f} s wall), {spec['records']:,} records, "
                  f"{spec['sources']} sources, {spec['levels']} levels, peak RSS {mb(spec['peak_rss'])}")
        run = res["spec_run"]
        err.print(f"the same export with that inferred spec (stage, validate, transform"
                  f"{', load' if len(run['phases']) > 3 else ''}): {run['total_seconds']:.2f} s in-process "
                  f"= {run['total_seconds'] / res['total_seconds']:.2f}x the built-in dataset's run; "
                  f"max peak RSS {mb(run['max_peak_rss'])} ("
                  + ", ".join(f"{p['name']} {p['seconds']:.2f} s" for p in run["phases"]) + ")")
        err.print(f"whole run: {res['total_seconds']:.2f} s in-process "
                  f"({res['total_wall_seconds']:.2f} s with interpreter starts); max peak RSS "
                  f"{mb(res['max_peak_rss'])}")
        if all(p.get("sampled_anon_mb") is not None for p in res["phases"]):
            err.print("memory (sampled every 20 ms): each phase's own (anonymous) / file-backed pages "
                      "(shared libraries, mapped files) in its RSS: " + ", ".join(
                          f"{p['name']} {p['sampled_anon_mb']:.0f} / {p['sampled_file_mb']:.0f} MB"
                          for p in res["phases"]))
        cpu, cores = res.get("machine_cpu_seconds"), res["machine"]["cpus"] or 1
        if cpu is not None:
            err.print(f"CPU work: the machine's {cores} cores were busy {cpu:.2f} s over these phases "
                      f"(the database server's included): no schedule of this work takes under "
                      f"{cpu / cores:.2f} s here (" + ", ".join(
                          f"{p['name']} {p['machine_cpu_seconds']:.2f} s" for p in res["phases"]) + ")")
        if res.get("reimport"):
            print_phases([Phase(p["name"], p["seconds"], p["rows"], p["peak_rss"])
                          for p in res["reimport"]], title="re-import (merge, nothing changed)")
            err.print(f"first import {res['total_seconds']:.2f} s in-process "
                      f"({res['total_wall_seconds']:.2f} s wall); re-import "
                      f"{res['reimport_seconds']:.2f} s ({res['reimport_wall_seconds']:.2f} s wall)")
        if res["unsafe_fast_parts"]:
            safe = {p["name"]: p["seconds"] for p in res["load_parts"]}
            fast = {p["name"]: p["seconds"] for p in res["unsafe_fast_parts"]}
            err.print("--unsafe-fast (UNLOGGED, synchronous_commit off): " + ", ".join(
                f"{name} {fast[name]:.2f} s (vs {safe[name]:.2f} s)" for name in fast if name in safe))
        if res["copy_ceiling"]:
            copy = next(p for p in res["load_parts"] if p["name"] == "load")
            ceiling = res["copy_ceiling"]["seconds"]
            statements = (copy.get("extra") or {}).get("copy_seconds")
            err.print(f"COPY ceiling (server-side COPY FROM binary file, same rows): {ceiling:.2f} s; "
                      f"the load's COPY phase took {copy['seconds']:.2f} s = "
                      f"{copy['seconds'] / ceiling:.2f}x the ceiling"
                      + (f" (its COPY statements {statements:.2f} s = {statements / ceiling:.2f}x; the "
                         "rest creates the build schema)" if statements else ""))
            workers = (copy.get("extra") or {}).get("worker_peak_rss")
            if workers:
                err.print(f"the COPY worker processes' peak RSS: {mb(workers)} each (pages shared "
                          "with the loading process counted in full)")


def _read_benches() -> list[str]:
    return [name for name, ds in available().items() if ds.reads is not None and ds.reads.bench is not None]


@click.command("bench-reads")
@click.option("--dataset", type=click.Choice(_read_benches()), default=next(iter(_read_benches()), None),
              show_default=True, help="Which dataset to read and reload.")
@click.option("--template", type=click.Path(file_okay=False, path_type=Path),
              help="The export to load (default $ETL_SHARED_DATA/<dataset>).")
@click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path(".etl/bench-reads"), show_default=True)
@click.option("--reloads", type=int, default=4, show_default=True, help="Full reloads during the reads.")
@click.option("--lru-procs", type=int, default=2, show_default=True, help="Reader processes with an LRU.")
@click.option("--redis-procs", type=int, default=1, show_default=True, help="Reader processes without LRU.")
@click.option("--db-procs", type=int, default=1, show_default=True, help="Uncached reader processes.")
@click.option("--threads", type=int, default=2, show_default=True, help="Reader threads per process.")
@click.option("--rate", type=float, default=0, show_default=True,
              help="Reads per second per thread, paced (0: as fast as possible, a closed loop).")
@cache_options
@json_option
@click.pass_context
@handle_errors
def bench_reads_cmd(ctx: click.Context, dataset: str, template: Path | None, work_dir: Path, reloads: int,
                    lru_procs: int, redis_procs: int, db_procs: int, threads: int, rate: float,
                    database_url: str | None, redis_url: str | None, as_json: bool) -> None:
    """Read benchmark: concurrent reader processes (LRU, Redis, uncached groups) on a hot key set
    while `etl load` reloads the dataset in full again and again; p50/p99 latency per tier,
    errors and stale reads.

    The dataset's data in the database is replaced (by the template export and a copy of it
    without one record, the probe, loaded in turn). Exits 1 on any error or stale read.

    \b
    Examples:
      etl bench-reads --redis-url redis://127.0.0.1:6379/0
      etl bench-reads --reloads 6 --lru-procs 3 --json --database-url postgresql://postgres@127.0.0.1/bench
    """
    from etl.bench.reads import bench_reads
    from etl.config import SHARED_DATA_ENV, shared_data
    from etl.errors import ConfigError

    template = template or shared_data(dataset)
    if template is None:
        raise ConfigError(f"no {dataset} export to load: --template is not given and "
                          f"${SHARED_DATA_ENV}/{dataset} is not there",
                          hint=f"pass --template DIR (a {dataset} export), or set {SHARED_DATA_ENV} "
                               f"to the folder holding {dataset}/")
    settings = ctx_settings(ctx).with_overrides(staging_dir=work_dir / "staging")
    result = bench_reads(get_dataset(dataset), template=template,
                         work_dir=work_dir, settings=settings,
                         database_url=resolve_database_url(ctx, database_url),
                         redis_url=resolve_redis_url(ctx, redis_url), reloads=reloads,
                         lru_procs=lru_procs, redis_procs=redis_procs, db_procs=db_procs,
                         threads=threads, rate=rate, progress=lambda text: err.print(text))
    bad = result["errors"] or result["stale_reads"] or result["wrong_content"]
    if as_json:
        echo_json({"error": failed(
            "BenchReadsFailed", f"errors {result['errors']}, stale reads {result['stale_reads']}, "
            f"wrong content {result['wrong_content']}",
            next_step="see `examples` (errors, stale and wrong reads) and the log (-v)"), **result}
                  if bad else result)
    else:
        table = Table(title=f"{result['reads']:,} reads in {result['seconds']} s "
                            f"({result['reads_per_s']:,}/s), "
                            f"{result['reloads']} reloads", title_justify="left")
        for col in ("answered by", "reads", "p50", "p99", "max", "p99 between reloads"):
            table.add_column(col, justify="left" if col == "answered by" else "right")
        quiet = result["tiers_between_reloads"]
        for tier, t in result["tiers"].items():
            q = quiet.get(tier, {})
            table.add_row(tier, f"{t['reads']:,}", f"{t['p50_ms']:.3f} ms", f"{t['p99_ms']:.3f} ms",
                          f"{t['max_ms']:.1f} ms", f"{q['p99_ms']:.3f} ms" if "p99_ms" in q else "-")
        err.print(table)
        groups = Table(title="per reader group (lru: LRU+Redis; redis: no LRU; db: no cache at all)",
                       title_justify="left")
        for col in ("group", "reads", "p50", "p99", "max", "p99 between reloads"):
            groups.add_column(col, justify="left" if col == "group" else "right")
        for group, g in result["groups"].items():
            t, q = g["all"], g["between_reloads"]
            groups.add_row(group, f"{t['reads']:,}", f"{t['p50_ms']:.3f} ms", f"{t['p99_ms']:.3f} ms",
                           f"{t['max_ms']:.1f} ms", f"{q['p99_ms']:.3f} ms" if "p99_ms" in q else "-")
        err.print(groups)
        err.print(f"errors {result['errors']}, stale reads {result['stale_reads']}, wrong content "
                  f"{result['wrong_content']}; reloads took {result['reload_seconds']} s")
    if bad:
        sys.exit(1)
