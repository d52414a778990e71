"""Chain the stages: stage → validate → transform (→ load, once the load stage exists)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from etl.config import Settings
from etl.dataset import Dataset
from etl.metrics import Phase
from etl.run import Run
from etl.stage import stage
from etl.transform import transform
from etl.validate import require_passed, validate

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True, slots=True)
class PipelineResult:
    run: Run
    report: dict[str, Any]
    tables: dict[str, int]
    phases: list[Phase]

    def summary(self) -> dict[str, Any]:
        return {
            "run": str(self.run.path),
            "run_id": self.run.id,
            "dataset": self.run.dataset_name,
            "validation": self.report["status"],
            "tables": self.tables,
            "phases": [p.to_dict() for p in self.phases],
        }


def run_pipeline(
    dataset: Dataset,
    sources: Sequence[str | Path],
    *,
    settings: Settings,
    max_reject_ratio: float = 0.0,
    force: bool = False,
    progress: Progress | None = None,
) -> PipelineResult:
    """Stage, validate and transform ``sources``; stop with :class:`ValidationFailed` on errors."""
    staged = stage(dataset, sources, settings=settings, force=force, progress=progress)
    checked = validate(staged.run, max_reject_ratio=max_reject_ratio, progress=progress)
    require_passed(checked)
    built = transform(staged.run, progress=progress)
    return PipelineResult(staged.run, checked.report, built.rows,
                          [staged.phase, checked.phase, built.phase])
