"""The toolkit's exceptions: one base, a few subclasses that carry where and what next."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

_SECRET = re.compile(r"(://[^:/@\s]+:)([^@\s]+)(@)")


def mask_secrets(text: str) -> str:
    """Hide the password of any URL in ``text`` (``postgresql://u:***@host``)."""
    return _SECRET.sub(r"\1***\3", text)


class EtlError(Exception):
    """Base of every error the toolkit raises on purpose.

    ``exit_code`` is what the CLI exits with; ``hint`` names the next step.
    """

    exit_code = 2

    def __init__(
        self,
        message: str,
        *,
        dataset: str | None = None,
        run: str | None = None,
        file: str | Path | None = None,
        record: int | None = None,
        offset: int | None = None,
        hint: str | None = None,
    ) -> None:
        self.message = mask_secrets(message)
        self.dataset = dataset
        self.run = run
        self.file = str(file) if file is not None else None
        self.record = record
        self.offset = offset
        self.hint = hint
        super().__init__(str(self))

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled with its fields (errors cross from the loader's worker processes)."""
        return (_restore, (type(self), dict(self.__dict__)))

    def where(self) -> str:
        parts = []
        if self.file:
            parts.append(self.file)
        if self.record is not None:
            parts.append(f"record {self.record}")
        if self.offset is not None:
            parts.append(f"byte {self.offset}")
        return ", ".join(parts)

    def __str__(self) -> str:
        where = self.where()
        text = f"{where}: {self.message}" if where else self.message
        if self.hint:
            text += f"\n  next: {self.hint}"
        return text


class InputError(EtlError):
    """The input cannot be read: missing, malformed, truncated, empty, too large."""

    exit_code = 2


class ConfigError(EtlError):
    """A setting, dataset name or run directory is wrong."""

    exit_code = 2


class ValidationFailed(EtlError):
    """Error-severity rules failed beyond the allowed reject ratio. ``report`` is the
    validation report (report.json's content), so a caller can show the failing rules."""

    exit_code = 1
    report: dict[str, Any] | None = None


class RunStateError(EtlError):
    """A run directory is incomplete, changed, or from another dataset version."""

    exit_code = 2


def _restore(cls: type[EtlError], state: dict[str, Any]) -> EtlError:
    err = cls.__new__(cls)
    err.__dict__.update(state)
    Exception.__init__(err, str(err))
    return err
