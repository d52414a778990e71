"""The load package's errors (the base :class:`~etl.errors.EtlError` is shared by every stage)."""

from __future__ import annotations

from etl.errors import EtlError


class VerificationFailed(EtlError):
    """What reached the database differs from the staged tables; the live schema is untouched."""

    exit_code = 1


__all__ = ["VerificationFailed"]
