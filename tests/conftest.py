"""Shared fixtures: the real sample exports (read in place, never copied) and staging dirs."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from etl import Run, Settings
from etl.datasets import dataset_of

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ETL_SHARED_DATA", REPO.parent / "shared" / "data"))
MIDS = SHARED / "mids"


#: How a skip for missing real data starts (counted by :func:`pytest_terminal_summary`).
NO_SHARED = "real sample data not found"


def require_shared(path: Path) -> Path:
    """A real sample file or folder. In CI it must be there: a missing sample fails loudly;
    elsewhere (a clone without ../shared) the test is skipped."""
    if not path.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{NO_SHARED} at {path}; CI needs ../shared/data beside the repo")
        pytest.skip(f"{NO_SHARED} at {path}")
    return path


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """One line, when tests were skipped for want of the real sample data: how many, where it was
    looked for, and how to point the tests at it."""
    skipped = [r for r in terminalreporter.stats.get("skipped", [])
               if NO_SHARED in str(getattr(r, "longrepr", ""))]
    if skipped:
        terminalreporter.write_line(
            f"{len(skipped)} test{'s' if len(skipped) != 1 else ''} skipped: the real sample data is "
            f"not at {SHARED}; set ETL_SHARED_DATA=/path/to/shared/data (the folder holding mids/, "
            "mids_full/, aodb/, licenses/) to run them", yellow=True)


@pytest.fixture(scope="session")
def mids_sample() -> Path:
    """The real MidsReborn sample export."""
    require_shared(MIDS / "I12.json")
    return MIDS


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(staging_dir=tmp_path / "staging")


# ------------------------------------------------------------------------------ PostgreSQL / Redis

#: The server tests create their own databases on (a superuser; trust auth on this machine kind).
PG_ADMIN_URL = os.environ.get("ETL_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("ETL_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _admin():
    import psycopg

    try:
        return psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:  # never skip: a test that needs PG fails loudly
        pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_URL} ({exc}). Start it with "
                    "`pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start` "
                    "or point ETL_TEST_PG_URL at a server.")


@pytest.fixture
def pg_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A database of this test's own on the real server, dropped afterwards."""
    import uuid

    from etl.infra.pg import with_database

    name = f"etl_test_{uuid.uuid4().hex[:10]}"
    with _admin() as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_database(PG_ADMIN_URL, name)
    finally:
        with _admin() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# ------------------------------------------------------------------------------ runs ready to load


@dataclass(frozen=True)
class MidsRuns:
    """Two transformed runs of the real sample: all of it, and without one powerset file (so a
    reload visibly changes counts)."""

    full: Run
    small: Run


def transformed_run(dataset: str, sources: list[Path], staging: Path) -> Run:
    """Stage, validate and transform ``sources``: a run ready to load."""
    from etl import get_dataset
    from etl.stage import stage
    from etl.transform import transform
    from etl.validate import require_passed, validate

    staged = stage(get_dataset(dataset), sources, settings=Settings(staging_dir=staging))
    require_passed(validate(staged.run, dataset_of(staged.run)))
    return transform(staged.run, dataset_of(staged.run)).run


def mids_runs(sample: Path, root: Path, drop: str) -> MidsRuns:
    """:class:`MidsRuns` staged under ``root``; ``drop`` names the powerset file left out."""
    small = root / "export-small"
    shutil.copytree(sample, small)
    next((small / "db").rglob(f"*{drop}")).unlink()
    return MidsRuns(full=transformed_run("mids", [sample], root / "staging"),
                    small=transformed_run("mids", [small], root / "staging"))


def run_killed_driver(code: str, point: str, marker: Path) -> None:
    """Run ``code`` (a Ray driver) in a fresh interpreter with the fault point ``point`` armed
    (``ETL_FAULT_RAY_KILL``), and check that it was killed there (exit 137, ``marker`` written)."""
    import subprocess
    import sys

    from etl.infra.cluster import FAULT_ENV

    driver = subprocess.run([sys.executable, "-c", code], env={**os.environ, FAULT_ENV: f"{point}:{marker}"},
                            capture_output=True, text=True, timeout=300)
    assert driver.returncode == 137, driver.stderr[-2000:]
    assert marker.is_file()
