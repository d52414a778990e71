"""The toolkit's exceptions: one base that carries where and what next, and two kinds of it.

* :class:`TransientError`: the same call may succeed if tried again (a lost connection, a
  server restarting, a worker process that died). Retries (:func:`etl.infra.pg.retry`, the
  loader's steps) ask :func:`is_transient`, never the message text.
* :class:`TerminalError`: trying again cannot help until something changes (the input, a
  setting, a rule, the data).

Each stage package keeps the errors it raises in its own ``errors`` module
(:mod:`etl.stage.errors`, :mod:`etl.validate.errors`, :mod:`etl.transform.errors`,
:mod:`etl.load.errors`, :mod:`etl.infra.errors`); the ones every layer raises live here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

#: ``scheme://user:password@host``: the password runs to the last ``@`` before the host, so a
#: raw ``@`` inside it does not leave its tail in sight.
_URL_SECRET = re.compile(r"(://[^:/@\s'\"]*:)([^\s'\"]*)(@[^@\s'\"]*)")
#: ``password=…`` in a key=value connection string or a URL's query, quoted or not.
_KV_SECRET = re.compile(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|[^\s&'\"]+)",
                        re.IGNORECASE)


def mask_secrets(text: str) -> str:
    """Hide every password in ``text``: of a URL (``postgresql://u:***@host``), in a URL's query or
    a key=value connection string (``password=***``)."""
    return _KV_SECRET.sub(r"\1***", _URL_SECRET.sub(r"\1***\3", text))


class EtlError(Exception):
    """Base of every error the toolkit raises on purpose.

    ``exit_code`` is what the CLI exits with; ``hint`` names the next step; ``transient``
    whether the same call may succeed when tried again (see :class:`TransientError`).
    """

    exit_code = 2
    transient = False

    def __init__(
        self,
        message: str,
        *,
        dataset: str | None = None,
        run: str | None = None,
        file: str | Path | object | None = None,  # a path or anything naming one (a URI)
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


class TransientError(EtlError):
    """Worth trying again as it is: the failure was in the surroundings (a connection, a server
    restart, a worker process), not in what was asked."""

    transient = True


class TerminalError(EtlError):
    """Trying again cannot help until something changes: the input, a setting, the data."""

    transient = False


class InputError(TerminalError):
    """The input cannot be read: missing, malformed, truncated, empty, too large."""

    exit_code = 2


class DriftError(InputError):
    """An export holds keys or types its spec does not declare, and the spec says ``freeze``."""


class ConfigError(TerminalError):
    """A setting, dataset name or run directory is wrong."""

    exit_code = 2


class RunStateError(TerminalError):
    """A run directory is incomplete, changed, or from another dataset version."""

    exit_code = 2


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is worth a retry, by its type: the toolkit's own errors say so themselves
    (:attr:`EtlError.transient`); a database driver's errors are judged by
    :func:`etl.infra.pg.is_transient`, which calls this for everything else. Anything else is
    terminal."""
    return isinstance(exc, EtlError) and exc.transient


def _restore(cls: type[EtlError], state: dict[str, Any]) -> EtlError:
    err = cls.__new__(cls)
    err.__dict__.update(state)
    Exception.__init__(err, str(err))
    return err
