"""Errors of validation."""

from __future__ import annotations

from typing import Any

from etl.errors import TerminalError


class ValidationFailed(TerminalError):
    """Error-severity rules failed beyond the allowed reject ratio. ``report`` is the
    validation report (report.json's content), so a caller can show the failing rules."""

    exit_code = 1
    report: dict[str, Any] | None = None
