"""The example notebook runs top to bottom on a fresh kernel of this virtualenv's Python."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import pytest
from ipykernel.kernelspec import install as install_kernelspec
from nbclient import NotebookClient

from etl.datasets.mids.gen import generate_mids
from tests.conftest import SHARED, require_shared, transformed_run

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "inspect_run.ipynb"
REAL_SAMPLE = SHARED / "mids"


@pytest.fixture
def kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A ``python3`` kernelspec that runs *this* interpreter, found first on JUPYTER_PATH.

    Whatever kernelspec the machine has by default may start another Python (one without
    ``etl``); a spec installed for ``sys.executable`` into a temp prefix takes precedence.
    """
    prefix = tmp_path / "jupyter-prefix"
    install_kernelspec(kernel_name="python3", prefix=str(prefix))
    monkeypatch.setenv("JUPYTER_PATH", str(prefix / "share" / "jupyter"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "jupyter-runtime"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    spec = json.loads((prefix / "share" / "jupyter" / "kernels" / "python3" / "kernel.json").read_text())
    assert spec["argv"][0] == sys.executable
    return "python3"


def run_notebook(kernel_name: str) -> nbformat.NotebookNode:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "outputs not cleared"
    # Raises CellExecutionError (with the traceback) if any cell fails.
    NotebookClient(nb, kernel_name=kernel_name, timeout=120,
                   resources={"metadata": {"path": str(ROOT)}}).execute()
    return nb


def tagged_output(nb: nbformat.NotebookNode, tag: str) -> str:
    (cell,) = [c for c in nb.cells if tag in c.metadata.get("tags", [])]
    results = [o for o in cell.outputs if o.output_type == "execute_result"]
    assert results, cell.outputs
    return str(results[0].data["text/plain"])


def printed_export(nb: nbformat.NotebookNode) -> str:
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.outputs if o.output_type == "stream")
    return next(line.removeprefix("export: ") for line in text.splitlines() if line.startswith("export: "))


def errors(nb: nbformat.NotebookNode) -> list[dict]:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]


def test_notebook_runs(kernel: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The real sample when ETL_SHARED_DATA names the data, else a generated export.
    monkeypatch.delenv("ETL_NOTEBOOK_DATA", raising=False)
    monkeypatch.delenv("ETL_NOTEBOOK_RUN", raising=False)
    if REAL_SAMPLE.is_dir():
        monkeypatch.setenv("ETL_SHARED_DATA", str(REAL_SAMPLE.parent))
    nb = run_notebook(kernel)
    assert errors(nb) == []
    if REAL_SAMPLE.is_dir():
        assert printed_export(nb) == str(REAL_SAMPLE)
    assert tagged_output(nb, "report-status") == "'passed'"
    assert tagged_output(nb, "run-repr").startswith("Run('mids-")


def test_notebook_uses_etl_notebook_data(kernel: str, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    export = tmp_path / "export"
    generate_mids(export, powersets=5, seed=1)
    monkeypatch.delenv("ETL_NOTEBOOK_RUN", raising=False)
    monkeypatch.setenv("ETL_NOTEBOOK_DATA", str(export))
    nb = run_notebook(kernel)
    assert errors(nb) == []
    assert printed_export(nb) == str(export)
    assert tagged_output(nb, "report-status") == "'passed'"


def test_notebook_on_a_staged_run_of_the_real_full_export(kernel: str, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Pointed at a run (ETL_NOTEBOOK_RUN), the notebook stages nothing and reads that run: here
    the whole real MidsReborn export, every level and table."""
    full = require_shared(SHARED / "mids_full")
    run = transformed_run("mids", [full], tmp_path / "staging")
    monkeypatch.setenv("ETL_NOTEBOOK_RUN", str(run.path))
    nb = run_notebook(kernel)
    assert errors(nb) == []
    assert tagged_output(nb, "run-repr") == repr(run.current())
    tables = tagged_output(nb, "table-rows")
    assert "'powers': 9649" in tables and "'power_effects': 65293" in tables and "'powersets': 3568" in tables
    assert tagged_output(nb, "report-status") == "'passed'"
    assert not any("export:" in o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.outputs if o.output_type == "stream")
