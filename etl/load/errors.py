"""The load package's errors. A lost connection or a dead worker is transient
(:class:`~etl.infra.errors.DatabaseUnavailable`) and retried by the steps; these are terminal."""

from __future__ import annotations

from etl.errors import TerminalError


class VerificationFailed(TerminalError):
    """What reached the database differs from the staged tables; the live schema is untouched."""

    exit_code = 1


__all__ = ["VerificationFailed"]
