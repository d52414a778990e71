"""The CLI's process-wide allocator choice (:func:`etl.metrics.bounded_allocators`): on glibc,
large blocks keep their own mappings and go back to the system when freed, even after a large
block was freed once (which, left alone, moves glibc's threshold up and the next large blocks into
heaps that keep them)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="glibc's allocator only (elsewhere Arrow's jemalloc pool is used)")

#: What both probes start with: the C library's malloc and free, and this process's RSS.
_LIBC = """
import ctypes
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20
"""

_PROBE = """
import ctypes, sys
import pyarrow as pa
inside = "-"
if sys.argv[1] in ("bounded", "after-load", "load-worker"):
    from etl.metrics import after_fork_allocator, bounded_allocators, load_allocator
    bounded_allocators()
    if sys.argv[1] == "after-load":
        with load_allocator():  # the load's own settings, put back after it
            inside = pa.default_memory_pool().backend_name
    if sys.argv[1] == "load-worker":  # a COPY worker forked while the load runs
        load_allocator().__enter__()
        after_fork_allocator()
# One large block freed: glibc's dynamic threshold rises past 1 MiB from here on.
libc.free(libc.malloc(4 << 20))
before = rss_mb()
blocks = [libc.malloc(1 << 20) for _ in range(128)]
for b in blocks:
    ctypes.memset(b, 1, 1 << 20)
# After them in the heap (too large for any free chunk there), so freeing them cannot shrink
# its top. (Where large blocks have their own mappings, this one has too.)
pin = libc.malloc(3 << 20)
for b in blocks:
    libc.free(b)
print(pa.default_memory_pool().backend_name, round(rss_mb() - before), inside)
"""


def _probe(mode: str) -> tuple[str, int, str]:
    out = subprocess.run([sys.executable, "-c", _LIBC + _PROBE, mode], capture_output=True, text=True,
                         check=True).stdout.split()
    return out[0], int(out[1]), out[2]


def test_freed_large_blocks_go_back_to_the_system() -> None:
    backend, kept, _ = _probe("bounded")
    assert backend == "system"
    assert kept < 16, f"{kept} MB of 128 freed 1 MiB blocks still resident"


def test_without_it_glibc_keeps_them() -> None:
    # What the choice is for: glibc's default keeps the freed blocks resident in its heap.
    _, kept, _ = _probe("default")
    assert kept > 100


def test_the_load_runs_with_its_own_and_puts_them_back() -> None:
    """The load reuses its read-back batches (jemalloc, a high threshold); after it, the
    bounded settings hold again."""
    backend, kept, inside = _probe("after-load")
    assert inside == "jemalloc"
    assert backend == "system"
    assert kept < 16, f"{kept} MB of 128 freed 1 MiB blocks still resident after the load"


def test_the_load_s_forked_workers_go_back_to_the_bounded_threshold() -> None:
    _, kept, _ = _probe("load-worker")
    assert kept < 16, f"{kept} MB of 128 freed 1 MiB blocks still resident in a COPY worker"


def test_the_load_allocator_is_a_no_op_without_bounded_allocators() -> None:
    # (in a process of its own: the CLI tests call bounded_allocators in this one)
    check = ("import pyarrow as pa; from etl.metrics import load_allocator; "
             "before = pa.default_memory_pool().backend_name\n"
             "with load_allocator(): assert pa.default_memory_pool().backend_name == before")
    subprocess.run([sys.executable, "-c", check], check=True)


_SMALL_BLOCKS = """
import ctypes, sys
from etl.metrics import bounded_allocators, release_free_memory
bounded_allocators()
before = rss_mb()
# 64 MB in 32 KiB blocks (as Parquet string views are built), below any mapping threshold
blocks = [libc.malloc(32 << 10) for _ in range(2048)]
for b in blocks:
    ctypes.memset(b, 1, 32 << 10)
pin = libc.malloc(64 << 10)  # after them, so the heap's top cannot shrink
ctypes.memset(pin, 1, 64 << 10)
for b in blocks:
    libc.free(b)
kept = rss_mb() - before
if sys.argv[1] == "release":
    release_free_memory()
print(round(kept), round(rss_mb() - before))
"""


def test_freed_small_blocks_are_given_back_on_request() -> None:
    """What the transform calls after reading a table's staged texts: freed blocks below the
    mapping threshold stay resident until the heap is trimmed."""
    kept, left = (int(x) for x in subprocess.run(
        [sys.executable, "-c", _LIBC + _SMALL_BLOCKS, "release"], capture_output=True, text=True,
        check=True).stdout.split())
    assert kept > 48, "the freed blocks should still be resident before the trim"
    assert left < 16, f"{left} MB still resident after release_free_memory()"
