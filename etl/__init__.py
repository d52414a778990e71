"""Columnar ETL staging toolkit: JSON exports → Parquet → checked tables → PostgreSQL."""

from __future__ import annotations

import os as _os
import sys as _sys

from etl.version import __version__

# Polars' jemalloc keeps freed pages for seconds by default, so a phase that builds and drops
# one table after another holds the sum of them: purging at once measured 386 -> 311 MB at the
# transform's peak. It must be set before Polars loads, hence here; an explicit setting wins.
if "polars" not in _sys.modules:
    _os.environ.setdefault("_RJEM_MALLOC_CONF", "dirty_decay_ms:0,muzzy_decay_ms:0")
# Polars' streaming Parquet reader prefetches up to 512 row groups by default; staged chunks are
# local files read as fast as they are decoded, and the prefetched wide _extra texts were the
# validate phase's peak (effects x5: 449 -> 382 MB at 2, no slower).
_os.environ.setdefault("POLARS_ROW_GROUP_PREFETCH_SIZE", "2")
# NumPy's OpenBLAS starts a thread per core that spins after use; nothing here does linear
# algebra, and on the 2-core machine those threads took CPU from the stage's workers.
if "numpy" not in _sys.modules:
    _os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from etl.config import Settings, load_settings
from etl.dataset import Dataset
from etl.datasets import available as available_datasets
from etl.datasets import get_dataset
from etl.errors import EtlError, InputError, TerminalError, TransientError
from etl.run import Run, latest_run, open_run
from etl.validate.errors import ValidationFailed

__all__ = [
    "Dataset",
    "EtlError",
    "InputError",
    "Run",
    "Settings",
    "TerminalError",
    "TransientError",
    "ValidationFailed",
    "__version__",
    "available_datasets",
    "get_dataset",
    "latest_run",
    "load_settings",
    "open_run",
]
