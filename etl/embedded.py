"""A private PostgreSQL under the project directory, for when no database URL is given."""

from __future__ import annotations

from pathlib import Path


def ensure_started(root: Path | None = None) -> str:
    """Start (or reuse) the project's private server and return its URL."""
    raise NotImplementedError("embedded PostgreSQL is being built")
