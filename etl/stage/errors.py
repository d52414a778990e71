"""Errors of staging: an input that cannot be read is an :class:`InputError` (terminal: the
file must change), raised with the file, record or byte offset and the next step."""

from __future__ import annotations

from etl.errors import InputError

__all__ = ["InputError"]
