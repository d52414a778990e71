"""How a command that fails says so: one error document, the same for every command.

With ``--json`` the document goes to stdout, the only thing there::

    {"error": {"type": "InputError", "message": "…", "file": "db/x.json", "record": 12,
               "next": "fix the file, then run `etl run mids ./export` again"}}

and the exit code is the one the command has without ``--json``: the error's ``exit_code`` (2
input or settings, 3 database, 4 lock), 1 when validation stopped the run, 130/143 when Ctrl-C
or SIGTERM stopped it, 2 for a usage error, 70 for an unexpected one. A validation failure also
carries the failing rules beside ``error`` (``status``, ``phase``, ``failed_rules``…). The human
message goes to stderr either way.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
from typing import Any, NoReturn

import click
from rich.markup import escape

from etl import interrupt
from etl.errors import EtlError, mask_secrets

log = logging.getLogger(__name__)

#: ``ctx.meta`` key: the command line's arguments, as the root group parsed them.
ARGV = "etl.argv"
#: The exit code of an error nobody foresaw (BSD's EX_SOFTWARE).
UNEXPECTED_EXIT = 70


def command_line() -> str:
    """The command being run, as the user would type it again (``etl run mids ./export``)."""
    ctx = click.get_current_context(silent=True)
    argv = ctx.meta.get(ARGV) if ctx is not None else None
    return mask_secrets(shlex.join(["etl", *(argv if argv is not None else sys.argv[1:])]))


#: The commands whose work goes on where it stopped when run again (a load's finished steps).
RESUMING = frozenset({"run", "load", "rebuild", "demo"})


def resume_hint() -> str:
    """What to do after Ctrl-C: the same command again, and what it will redo."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None and ctx.info_name in RESUMING:
        return (f"run `{command_line()}` again: it reuses what is staged and resumes the load "
                "from its finished steps")
    return f"run `{command_line()}` again: it starts what was stopped over (nothing half-done is kept)"


def exit_code(exc: BaseException) -> int:
    """What the command exits with for ``exc`` (see the module docstring)."""
    stopped = interrupt.as_interrupted(exc)
    if stopped is not None:
        return stopped.exit_code
    if isinstance(exc, EtlError):
        return exc.exit_code
    if isinstance(exc, click.ClickException):
        return exc.exit_code
    if isinstance(exc, click.Abort):
        return 1
    return UNEXPECTED_EXIT


def error_document(exc: BaseException) -> dict[str, Any]:
    """``{"error": {"type", "message", "file", "record", "next"}}`` for ``exc`` (with a
    validation failure's rules beside it)."""
    from etl.validate.errors import ValidationFailed

    stopped = interrupt.as_interrupted(exc)
    doc: dict[str, Any] = {}
    error: dict[str, Any]
    if stopped is not None:
        error = {"type": "Interrupted", "message": f"{stopped}; the live data is unchanged",
                 "file": None, "record": None, "next": resume_hint()}
    elif isinstance(exc, EtlError):
        record = exc.record if exc.record is not None else exc.offset
        error = {"type": type(exc).__name__, "message": exc.message, "file": exc.file,
                 "record": record, "next": exc.hint}
        if isinstance(exc, ValidationFailed) and exc.report is not None:
            doc.update(_validation(exc))
    elif isinstance(exc, click.ClickException):
        ctx = getattr(exc, "ctx", None)
        name = ctx.command_path if ctx is not None else "etl"
        error = {"type": "UsageError", "message": exc.format_message(), "file": None, "record": None,
                 "next": f"see `{name} --help`"}
    elif isinstance(exc, click.Abort):
        error = {"type": "Aborted", "message": "not confirmed: nothing was done", "file": None,
                 "record": None, "next": f"run `{command_line()}` again and confirm, or add --yes"}
    else:
        error = {"type": type(exc).__name__, "message": mask_secrets(str(exc)), "file": None,
                 "record": None, "next": "this is a bug in etl; please report it with the command "
                                         "you ran and what the same command prints with ETL_DEBUG=1 "
                                         "(the traceback)"}
    return {"error": error, **doc}


def failed(kind: str, message: str, *, file: str | None = None, record: int | None = None,
           next_step: str | None = None) -> dict[str, Any]:
    """The ``error`` object of a command whose check ran and found a fault (exit 1: `etl health`,
    `etl reconcile`, `etl bench-reads`), put beside its report, so that every document of a
    failed command has one."""
    return {"type": kind, "message": message, "file": file, "record": record, "next": next_step}


def _validation(exc: Any) -> dict[str, Any]:
    from etl.validate import failing_rules

    report = exc.report
    return {"status": "failed", "phase": "validate", "run_id": report["run_id"],
            "dataset": report["dataset"], "max_reject_ratio": report["max_reject_ratio"],
            "failed_levels": report["failed_levels"], "levels": report["levels"],
            "failed_rules": failing_rules(report), "overrides": report.get("overrides", [])}


def fail(exc: BaseException, *, as_json: bool) -> NoReturn:
    """Say that the command failed with ``exc`` (stderr; with ``as_json`` also the error
    document on stdout) and exit with its code."""
    from etl.cli.render import echo_json, err

    doc = error_document(exc)
    error = doc["error"]
    if isinstance(exc, EtlError):
        text = str(exc)
    elif interrupt.as_interrupted(exc) is not None or isinstance(exc, click.ClickException | click.Abort):
        text = f"{error['message']}\n  next: {error['next']}"
    else:
        log.debug("unexpected error", exc_info=exc)
        if os.environ.get("ETL_DEBUG"):  # the traceback, for the bug report
            err.print_exception()
        text = f"internal error: {error['type']}: {error['message']}\n  next: {error['next']}"
    # escape: file names like "Powers [old].json" are text, not rich markup.
    err.print(f"[bold red]{'stopped' if interrupt.as_interrupted(exc) else 'error'}:[/] {escape(text)}",
              highlight=False, markup=True, soft_wrap=True)
    if as_json:
        echo_json(doc)
    sys.exit(exit_code(exc))
