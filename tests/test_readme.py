"""Every Python block of the README runs, as it is written, in a project folder holding a staged
run (what a reader has after `etl run mids …`)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from etl.datasets.mids.gen import generate_mids
from tests.conftest import transformed_run

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", README.read_text(encoding="utf-8"), re.S | re.M)


def test_the_readme_has_python_blocks() -> None:
    assert BLOCKS, "no ```python block found in the README"


@pytest.mark.parametrize("block", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_python_block_runs(block: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    export = tmp_path / "export"
    generate_mids(export, powersets=8, seed=3)
    run = transformed_run("mids", [export], tmp_path / "staging")
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "__readme__"}
    exec(compile(block, str(README), "exec"), namespace)  # the README's own code
    printed = capsys.readouterr().out
    if "print(run)" in block:
        assert printed.startswith(f"Run({run.id!r}, dataset='mids', transformed")
