"""Phase timing and peak memory, as every run reports them."""

from __future__ import annotations

import contextlib
import platform
import resource
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (high-water mark), in bytes."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def current_rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    except OSError:  # pragma: no cover - not Linux
        return peak_rss_bytes()


@dataclass
class Phase:
    """One phase's figures: wall time, rows out, and the process's peak RSS at its end."""

    name: str
    seconds: float = 0.0
    rows: int = 0
    peak_rss: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["rows_per_s"] = round(self.rows_per_s, 1)
        d["seconds"] = round(self.seconds, 4)
        return d


@contextmanager
def timed(name: str) -> Iterator[Phase]:
    """Time a block; the caller sets ``phase.rows``."""
    phase = Phase(name)
    start = time.perf_counter()
    try:
        yield phase
    finally:
        phase.seconds = time.perf_counter() - start
        phase.peak_rss = peak_rss_bytes()


#: glibc's ``mallopt`` parameters: the size from which a block gets a mapping of its own, and
#: how much free memory the top of a heap may hold before it is given back.
_M_MMAP_THRESHOLD, _M_TRIM_THRESHOLD = -3, -1


def bounded_allocators() -> None:
    """Arrow's buffers from the C library's allocator, with its large blocks kept out of its heaps.

    glibc maps a block of 128 KiB or more on its own and unmaps it when it is freed, but each
    such free raises that size (up to 32 MiB): from then on the large buffers a phase keeps
    making and dropping (batches of records, ``_extra`` texts, Parquet pages) come from heaps
    that hold on to them. Fixing the size keeps them mapped apart and returned when freed. On
    the x5 copy of the real export, against Arrow's jemalloc pool purging at once: stage peak
    470 -> 410-420 MB (0.2-0.3 s slower), transform 450 -> 435-445 MB and no slower, the
    load's forked COPY workers 435 -> 357 MB. Elsewhere than glibc, Arrow's jemalloc pool is
    used, purging at once. A process-wide choice: called by the CLI and the benchmark, not
    on import."""
    import ctypes

    import pyarrow as pa

    if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None)
            # Both at glibc's initial values: the imports may have raised them already (a
            # freed large block doubles the trim size too).
            fixed = [libc.mallopt(param, 128 << 10) for param in (_M_MMAP_THRESHOLD, _M_TRIM_THRESHOLD)]
            if fixed == [1, 1]:
                pa.set_memory_pool(pa.system_memory_pool())
                global _LOAD_POOL
                _LOAD_POOL = _jemalloc_purging()
                return
    pool = _jemalloc_purging()
    if pool is not None:
        pa.set_memory_pool(pool)


#: The pool the load runs with after :func:`bounded_allocators` (None: the current one).
_LOAD_POOL: Any = None


def _jemalloc_purging() -> Any:
    """Arrow's jemalloc pool returning freed pages at once (reading a table's extra texts a row
    group at a time grew the RSS by 180 MB with the default decay, 73 MB with none); None when
    this build has no jemalloc."""
    import pyarrow as pa

    try:
        pool = pa.jemalloc_memory_pool()
        pa.jemalloc_set_decay_ms(0)
    except (NotImplementedError, pa.ArrowNotImplementedError):
        return None
    return pool


def _mallopt(size: int) -> None:
    import ctypes

    libc = ctypes.CDLL(None)
    for param in (_M_MMAP_THRESHOLD, _M_TRIM_THRESHOLD):
        libc.mallopt(param, size)


def release_free_memory() -> None:
    """Give the C library's free heap pages back to the system (glibc's ``malloc_trim``; a no-op
    elsewhere). Reading Parquet string views builds them in 32 KiB blocks, below any mapping
    threshold: after a table's 300 MB of staged texts went through, 40-60 MB of freed blocks
    stayed resident in the heap until the process ended."""
    if not (sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"):
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)


def after_fork_allocator() -> None:
    """In a worker process forked by the load: the bounded settings of
    :func:`bounded_allocators` again (the load's raised threshold is the parent's choice for
    its read-back; a COPY worker reads and encodes chunks of every size). A no-op unless
    :func:`bounded_allocators` ran."""
    if _LOAD_POOL is not None:
        _mallopt(128 << 10)


@contextmanager
def load_allocator() -> Iterator[None]:
    """For the load, where :func:`bounded_allocators` ran: Arrow's jemalloc pool, and glibc's
    large-block threshold raised to 32 MiB (set back after). The load reads every table back in
    batches of a few sizes, which heaps reuse where a fixed 128 KiB threshold maps fresh pages
    for each: its keys step (with the read-back) took 2.6-2.8 s on the x5 copy, 2.2 s so, the
    peak RSS unchanged (the batches are freed as they are hashed). A no-op otherwise."""
    if _LOAD_POOL is None:
        yield
        return
    import pyarrow as pa

    before = pa.default_memory_pool()
    pa.set_memory_pool(_LOAD_POOL)
    _mallopt(32 << 20)  # glibc's own ceiling for the threshold it moves
    try:
        yield
    finally:
        pa.set_memory_pool(before)
        _mallopt(128 << 10)
