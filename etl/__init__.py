"""Columnar ETL staging toolkit: JSON exports → Parquet → checked tables → PostgreSQL."""

from __future__ import annotations

__version__ = "0.1.0"

from etl.config import Settings, load_settings
from etl.dataset import Dataset
from etl.datasets import available as available_datasets
from etl.datasets import get_dataset
from etl.errors import EtlError, InputError, ValidationFailed
from etl.run import Run, open_run

__all__ = [
    "Dataset",
    "EtlError",
    "InputError",
    "Run",
    "Settings",
    "ValidationFailed",
    "__version__",
    "available_datasets",
    "get_dataset",
    "load_settings",
    "open_run",
]
