"""Shared fixtures: the real sample exports (read in place, never copied) and staging dirs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from etl import Settings

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ETL_SHARED_DATA", REPO.parent / "shared" / "data"))
MIDS = SHARED / "mids"


def require_shared(path: Path) -> Path:
    """A real sample file or folder. In CI it must be there: a missing sample fails loudly;
    elsewhere (a clone without ../shared) the test is skipped."""
    if not path.exists():
        if os.environ.get("CI"):
            pytest.fail(f"real sample data not found at {path}; CI needs ../shared/data beside the repo")
        pytest.skip(f"real sample data not found at {path}")
    return path


@pytest.fixture(scope="session")
def mids_sample() -> Path:
    """The real MidsReborn sample export."""
    require_shared(MIDS / "I12.json")
    return MIDS


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(staging_dir=tmp_path / "staging")
