"""Read benchmark: many concurrent cached readers while full reloads of a dataset run (one that
declares a :class:`~etl.dataset.ReadBench` in its reads, e.g. ``mids``).

Three groups of reader processes (each with a few threads, each process its own
:class:`~etl.infra.cache.Cache`, as web workers would have) hammer the dataset's queries over its hot key set:

* ``lru``: one shared :class:`~etl.infra.cache.Cache` with its LRU (and Redis, if given);
* ``redis``: a cache with no LRU, so reads are answered by Redis (or the database on a miss);
* ``db``: no LRU and no Redis: every read is an uncached database read.

Meanwhile ``etl load`` (a process of its own, as in production) reloads the dataset ``reloads``
times, alternating two runs whose content differs (the probe record less), and a watcher thread
listens for the notification each swap sends as it commits. Afterwards each read is checked:
once the watcher had seen a generation committed, every read that *started* later must have
returned that generation or a newer one (else it is a stale read), and the probe's
presence must match the run loaded as the generation returned (else it is wrong content). Times
are ``time.monotonic()``, one clock for every process on Linux.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from etl.config import Settings
from etl.dataset import Dataset, ReadBench
from etl.datasets import get_dataset
from etl.errors import ConfigError
from etl.infra import pg
from etl.infra.cache import NOTIFY_CHANNEL, Cache, db_generation
from etl.load import load
from etl.query import fetch
from etl.run import Run

log = logging.getLogger(__name__)

def read_bench(dataset: Dataset) -> ReadBench:
    """The dataset's :class:`~etl.dataset.ReadBench`; :class:`ConfigError` when it has none."""
    if dataset.reads is None or dataset.reads.bench is None:
        raise ConfigError(f"dataset {dataset.name} declares no read benchmark",
                          hint="run it on a dataset whose reads declare one (see `etl query --help`)")
    return dataset.reads.bench


def hot_keys(database_url: str, dataset: Dataset, *, seed: int = 0) -> list[tuple[str, str]]:
    """The hot key set the dataset's read bench picks (mids: 60 power ids, a dozen powersets
    with the probe, the archetypes)."""
    with pg.connect(database_url) as conn:
        return read_bench(dataset).hot_keys(conn, random.Random(seed))


def prepare_runs(dataset: Dataset, template: Path, work_dir: Path, settings: Settings) -> dict[str, Run]:
    """The two transformed runs the benchmark alternates: ``full``, the export ``template``, and
    ``small``, a copy of it less the probe record (written once under ``work_dir``)."""
    from etl.stage import stage
    from etl.transform import transform
    from etl.validate import require_passed, validate

    spec = read_bench(dataset)
    if not template.is_dir() or (spec.marker and not (template / spec.marker).is_file()):
        raise ConfigError(f"no {dataset.name} export at {template}",
                          hint=f"give --template DIR (a {dataset.name} export"
                               + (f" with {spec.marker})" if spec.marker else ")"))
    small = work_dir / "export-small"
    if not small.exists():
        shutil.copytree(template, small)
        spec.drop_probe(small)
    runs = {}
    for variant, source in (("full", template), ("small", small)):
        run = stage(dataset, [source], settings=settings).run
        if "tables" not in run.manifest:
            checked = validate(run, dataset)
            require_passed(checked)
            run = transform(checked.run, dataset).run
        runs[variant] = run
    return runs


def bench_reads(dataset: Dataset, *, template: Path, work_dir: Path, settings: Settings,
                database_url: str, redis_url: str | None, **options: Any) -> dict[str, Any]:
    """``etl bench-reads``: :func:`prepare_runs`, then :func:`run_benchmark` with ``options``."""
    runs = prepare_runs(dataset, template, work_dir, settings)
    return run_benchmark(database_url, redis_url=redis_url, runs=runs, **options)


def _reader_process(group: str, index: int, threads: int, rate: float, url: str, redis_url: str | None,
                    dataset: str, probe: tuple[str, str], keys: list[tuple[str, str]], stop: Any,
                    out: Any) -> None:
    """One reader process: ``threads`` threads sharing one cache, reading until ``stop`` is set;
    sends back (tier, start, seconds, generation, probe present or None) per read, and errors."""
    logging.basicConfig(level=logging.WARNING)
    lru_items = 10_000 if group == "lru" else 0
    cache = Cache(url, redis_url=redis_url if group != "db" else None, lru_items=lru_items)
    reads: list[list[tuple[str, float, float, int, bool | None]]] = []
    errors: list[str] = []

    def work(seed: int) -> None:
        rng = random.Random(seed)
        mine: list[tuple[str, float, float, int, bool | None]] = []
        reads.append(mine)
        period = 1 / rate if rate > 0 else 0.0
        due = time.monotonic()
        while not stop.is_set():
            if period:  # open loop: a read every period, whatever the last one took
                due += period
                pause = due - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
            name, arg = keys[rng.randrange(len(keys))]
            start = time.monotonic()
            t0 = time.perf_counter()
            try:
                got = fetch(cache, dataset, name, arg)
            except Exception as exc:
                errors.append(f"{group} {name} {arg}: {exc}")
                continue
            took = time.perf_counter() - t0
            present = (orjson.loads(got.doc) is not None) if (name, arg) == probe else None
            mine.append((got.tier, start, took, got.generation, present))

    pool = [threading.Thread(target=work, args=(index * 100 + i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    cache.close()
    out.put((group, [r for mine in reads for r in mine], errors[:20], len(errors)))


def _latencies(seconds: list[float], *, peak: bool = True) -> dict[str, Any]:
    if not seconds:
        return {"reads": 0}
    arr = np.array(seconds) * 1000
    out = {"reads": len(seconds), "p50_ms": round(float(np.percentile(arr, 50)), 3),
           "p99_ms": round(float(np.percentile(arr, 99)), 3)}
    if peak:
        out["max_ms"] = round(float(arr.max()), 3)
    return out


def run_benchmark(database_url: str, *, redis_url: str | None, runs: dict[str, Run],
                  reloads: int = 4, lru_procs: int = 2, redis_procs: int = 1, db_procs: int = 1,
                  threads: int = 2, rate: float = 0, settle: float = 2.0, seed: int = 0,
                  progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the benchmark (see the module docstring); ``runs`` maps ``"full"`` and ``"small"`` to
    transformed runs of one dataset (see :func:`prepare_runs`), whose data in the database is
    replaced. Returns latencies per tier
    (p50, p99, max in ms), reads, errors, stale reads and wrong content."""
    say = progress or (lambda text: None)
    say("initial load (small, then full)")
    dataset = get_dataset(runs["full"].dataset_name)
    load(runs["small"], dataset, database_url=database_url, force=True, redis_url=redis_url)
    load(runs["full"], dataset, database_url=database_url, force=True, redis_url=redis_url)
    url = pg.resolve_url(database_url)
    name = dataset.name
    probe = read_bench(dataset).probe
    keys = hot_keys(url, dataset, seed=seed)
    with pg.connect(url) as conn:
        first = db_generation(conn, name)
    expected = {first: "full"}
    committed: list[tuple[int, float]] = [(first, time.monotonic())]  # generation, first seen at
    errors: list[str] = []
    error_count = 0
    rate = float(rate)

    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    out = ctx.Queue()
    groups = {"lru": lru_procs, "redis": redis_procs if redis_url else 0, "db": db_procs}
    procs = [ctx.Process(target=_reader_process, args=(g, i, threads, rate, url, redis_url, name, probe, keys,
                                                           stop, out),
                         daemon=True) for g, n in groups.items() for i in range(n)]
    watching = threading.Event()

    def watcher() -> None:
        # The swap notifies NOTIFY_CHANNEL as it commits: listening is as prompt as polling
        # every millisecond was, without a thousand queries a second competing with the readers.
        with pg.connect(url) as conn:
            conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
            while not watching.is_set():
                for note in conn.notifies(timeout=0.05):
                    which, _, gen = note.payload.rpartition(":")
                    if which == name and int(gen) > committed[-1][0]:
                        committed.append((int(gen), time.monotonic()))

    for proc in procs:
        proc.start()
    watch = threading.Thread(target=watcher, daemon=True)
    watch.start()
    started = time.perf_counter()
    time.sleep(settle + 1.0)  # the readers start (spawn) and warm up
    reload_times: list[float] = []
    windows: list[tuple[float, float]] = []  # while a reload ran
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("ETL_FAULT_")},
           "ETL_REDIS_URL": redis_url or ""}

    for i in range(reloads):
        variant = "small" if i % 2 == 0 else "full"
        with pg.connect(url) as conn:
            expected[db_generation(conn, name) + 1] = variant
        say(f"reload {i + 1}/{reloads} ({variant})")
        t0 = time.perf_counter()
        window_start = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "etl.cli", "load", str(runs[variant].path), "--force",
                               "--database-url", url], env=env, capture_output=True, text=True)
        reload_times.append(time.perf_counter() - t0)
        windows.append((window_start, time.monotonic()))
        if done.returncode != 0:
            error_count += 1
            errors.append(f"reload {i + 1}: {done.stderr.strip()[-500:]}")
    time.sleep(settle)
    stop.set()
    results = [out.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(30)
    wall = time.perf_counter() - started - 1.0
    watching.set()
    watch.join(5)

    by_tier: dict[str, list[float]] = {}
    quiet: dict[str, list[float]] = {}  # reads that started while no reload ran
    by_group: dict[str, int] = {}
    group_times: dict[str, list[float]] = {}
    group_quiet: dict[str, list[float]] = {}
    stale: list[str] = []
    wrong: list[str] = []
    stale_count = wrong_count = 0
    seen_at = list(committed)
    for group, reads, errs, n_errors in results:
        errors += errs
        error_count += n_errors
        by_group[group] = by_group.get(group, 0) + len(reads)
        for tier, start, took, gen, probe in reads:
            by_tier.setdefault(tier, []).append(took)
            group_times.setdefault(group, []).append(took)
            if not any(a <= start <= b for a, b in windows):
                quiet.setdefault(tier, []).append(took)
                group_quiet.setdefault(group, []).append(took)
            floor = max((g for g, at in seen_at if at <= start), default=0)
            if gen < floor:
                stale_count += 1
                if len(stale) < 10:
                    stale.append(f"{group}/{tier}: generation {gen} read after {floor} was committed")
            loaded_as = expected.get(gen)
            if probe is not None and loaded_as is not None and probe != (loaded_as == "full"):
                wrong_count += 1
                if len(wrong) < 10:
                    wrong.append(f"{group}/{tier}: generation {gen} ({loaded_as}) but probe present={probe}")
    tiers = {tier: _latencies(v) for tier, v in sorted(by_tier.items())}
    quiet_tiers = {tier: _latencies(v, peak=False) for tier, v in sorted(quiet.items())}
    groups_out = {g: {"all": _latencies(v), "between_reloads": _latencies(group_quiet.get(g, []), peak=False)}
                  for g, v in sorted(group_times.items())}
    total = sum(by_group.values())
    return {"reads": total, "reads_per_s": round(total / wall), "seconds": round(wall, 2),
            "processes": groups, "threads_per_process": threads, "rate_per_thread": rate or "max",
            "keys": len(keys),
            "reloads": len(reload_times), "generations_seen": [g for g, _ in committed],
            "reload_seconds": [round(t, 2) for t in reload_times], "tiers": tiers,
            "tiers_between_reloads": quiet_tiers, "groups": groups_out,
            "reads_per_group": by_group, "errors": error_count, "stale_reads": stale_count,
            "wrong_content": wrong_count,
            "examples": {k: v for k, v in (("errors", errors[:10]), ("stale", stale), ("wrong", wrong)) if v},
            "redis": redis_url is not None}
