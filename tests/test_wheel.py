"""The package ships whole: a wheel built from the checkout, installed into a fresh virtualenv outside
it, runs the demo against the real PostgreSQL. The load needs the Alembic scripts and the datasets'
post-load SQL, which the package finds beside its modules; a wheel without them loads nothing, or
loads without the views.

The new virtualenv borrows the project's installed third-party packages through a one-line ``.pth``
(a plain path: the ``.pth`` files inside it, among them the editable install's finder, are not run),
and gets ``etl`` itself from the wheel only (``pip install --no-deps``), which the test checks.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import psycopg
import pytest

REPO = Path(__file__).resolve().parents[1]

#: Left out of the copy the wheel is built from: at the top, dot-folders (VCS, .venv, caches, .etl)
#: and run output; anywhere, build leftovers (a stale build/ or compiled module would hide a gap).
_TOP_SKIP = {"build", "dist", "staging", "bench-out"}
_ANY_SKIP = ("__pycache__", ".egg-info", ".so", ".pyc")

pytestmark = pytest.mark.wheel


def _ignore(folder: str, names: list[str]) -> set[str]:
    top = Path(folder).resolve() == REPO
    return {n for n in names if (top and (n.startswith(".") or n in _TOP_SKIP)) or n.endswith(_ANY_SKIP)}


def _run(args: list[str | Path], *, cwd: Path, env: dict[str, str] | None = None,
         timeout: float = 240) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)
    assert proc.returncode == 0, (f"{' '.join(map(str, args))} failed ({proc.returncode}):\n"
                                  f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def _clean_env() -> dict[str, str]:
    """This environment without what would point the installed package back at the checkout or at
    another database, Redis or staging root."""
    return {k: v for k, v in os.environ.items()
            if not (k.startswith("ETL_") or k in {"PYTHONPATH", "DATABASE_URL", "VIRTUAL_ENV", "PYTHONHOME"})}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built by the package's own build backend (``pip wheel``) from a clean copy."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    shutil.copytree(REPO, src, ignore=_ignore)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check", "-q",
          "-w", root / "dist", src], cwd=root)
    (built,) = (root / "dist").glob("etl_staging-*.whl")
    return built


def test_wheel_holds_the_data_files(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    # The repository's top-level migrations/ and sql/ travel as etl/_shipped/ (setup.py).
    versions = sorted(p.name for p in (REPO / "migrations/versions").glob("*.py"))
    sql = sorted(str(p.relative_to(REPO)) for p in (REPO / "sql").glob("*/*.sql"))
    assert versions and sql
    expected = {"etl/_shipped/migrations/env.py", "etl/_shipped/migrations/script.py.mako",
                *(f"etl/_shipped/migrations/versions/{v}" for v in versions),
                *(f"etl/_shipped/{s}" for s in sql)}
    assert expected <= names, sorted(expected - names)
    # The built-in datasets' specs, package data beside their hooks.
    specs = {str(p.relative_to(REPO)) for p in (REPO / "etl/datasets").glob("*/*.toml")}
    assert "etl/datasets/mids/mids.toml" in specs and specs <= names, sorted(specs - names)
    assert "etl/stage/_extra.c" not in names
    if shutil.which((sysconfig.get_config_var("CC") or "cc").split()[0]):  # the extension is optional
        assert any(n.startswith("etl/stage/_extra.") and n.endswith((".so", ".pyd")) for n in names), \
            "a C compiler is here, but the wheel has no compiled etl.stage._extra"


def test_installed_wheel_runs_the_demo(wheel: Path, tmp_path: Path, pg_url: str) -> None:
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp_path)
    python = venv / "bin" / "python"
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                     cwd=tmp_path).stdout.strip())
    # The project's third-party packages (a plain path line: nothing in it is executed).
    own = sorted({sysconfig.get_path("purelib"), sysconfig.get_path("platlib")})
    (site / "_project_deps.pth").write_text("".join(f"{p}\n" for p in own))
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
          "--disable-pip-version-check", "-q", wheel], cwd=tmp_path)

    work = tmp_path / "work"  # outside the checkout: no pyproject.toml above it
    work.mkdir()
    env = _clean_env()
    where = _run([python, "-c", "import etl, etl.stage._extra as x; from etl.shipped import shipped; "
                  "print(etl.__file__); print(x.__file__); "
                  "print(shipped('sql')); print(shipped('migrations'))"],
                 cwd=work, env=env).stdout.split()
    assert len(where) == 4
    for path in where:
        assert Path(path).resolve().is_relative_to(venv.resolve()), f"{path} is not the installed wheel's"

    demo = _run([venv / "bin" / "etl", "demo", "--database-url", pg_url, "--out", work / "export",
                 "--powersets", "50", "--json"], cwd=work, env=env)
    summary = json.loads(demo.stdout)
    assert summary["tables"]["powersets"] == 50

    head = max(p.stem for p in (REPO / "migrations/versions").glob("*.py"))
    with psycopg.connect(pg_url) as con:
        # The migrations ran from the installed package, up to the newest one ...
        assert con.execute("SELECT version_num FROM etl.alembic_version").fetchone() == (head,)
        assert con.execute("SELECT count(*) FROM mids.powersets").fetchone() == (50,)
        # ... and so did the post-load SQL: the view and its index exist only through sql/*.sql.
        assert con.execute("SELECT count(*) FROM mids.power_build_summary").fetchone()[0] > 0
        assert con.execute("SELECT to_regclass('mids.power_build_summary_powerset_idx')").fetchone()[0]
