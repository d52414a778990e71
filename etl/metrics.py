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


def prefer_jemalloc() -> None:
    """Use Arrow's jemalloc pool when this build has it.

    It hands freed memory back sooner than the default mimalloc pool: staging the 78k-entry
    mids export peaked about 50 MB lower with it. Called by the CLI and the benchmark (a
    process-wide choice, so not by the library on import)."""
    import contextlib

    import pyarrow as pa

    with contextlib.suppress(NotImplementedError, pa.ArrowNotImplementedError):
        pa.set_memory_pool(pa.jemalloc_memory_pool())
        # Return freed pages at once: reading a table's extra texts a row group at a time grew
        # the RSS by 180 MB with the default decay, 73 MB with none.
        pa.jemalloc_set_decay_ms(0)
