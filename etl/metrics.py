"""Phase timing and peak memory, as every run reports them."""

from __future__ import annotations

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
    import contextlib
    import ctypes
    import platform

    import pyarrow as pa

    if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None)
            # Both at glibc's initial values: the imports may have raised them already (a
            # freed large block doubles the trim size too).
            fixed = [libc.mallopt(param, 128 << 10) for param in (_M_MMAP_THRESHOLD, _M_TRIM_THRESHOLD)]
            if fixed == [1, 1]:
                pa.set_memory_pool(pa.system_memory_pool())
                return
    with contextlib.suppress(NotImplementedError, pa.ArrowNotImplementedError):
        pa.set_memory_pool(pa.jemalloc_memory_pool())
        # Return freed pages at once: reading a table's extra texts a row group at a time grew
        # the RSS by 180 MB with the default decay, 73 MB with none.
        pa.jemalloc_set_decay_ms(0)
