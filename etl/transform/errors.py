"""Errors of the transform."""

from __future__ import annotations

from etl.errors import RunStateError


class KeyViolation(RunStateError):
    """A built table breaks its own keys (an empty or repeated primary key, a required column
    left empty): the dataset's rules or transform miss a case. Terminal: the run must change."""
