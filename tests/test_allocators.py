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

_PROBE = """
import ctypes, sys
if sys.argv[1] == "bounded":
    from etl.metrics import bounded_allocators
    bounded_allocators()
import pyarrow as pa
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20

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
print(pa.default_memory_pool().backend_name, round(rss_mb() - before))
"""


def _probe(mode: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True,
                         check=True).stdout.split()
    return out[0], int(out[1])


def test_freed_large_blocks_go_back_to_the_system() -> None:
    backend, kept = _probe("bounded")
    assert backend == "system"
    assert kept < 16, f"{kept} MB of 128 freed 1 MiB blocks still resident"


def test_without_it_glibc_keeps_them() -> None:
    # What the choice is for: glibc's default keeps the freed blocks resident in its heap.
    _, kept = _probe("default")
    assert kept > 100
