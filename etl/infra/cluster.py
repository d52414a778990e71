"""The Ray cluster a run's work is sent to (``engine = "ray"``).

Ray is an optional extra (``pip install 'etl-staging[ray]'``) and is imported lazily, only here
and in the tasks that run on it. :func:`ray_session` joins the cluster named by
``Settings.ray_address`` (``ETL_RAY_ADDRESS``, ``--ray-address``; else Ray's own ``RAY_ADDRESS``),
or, with none, starts a local
Ray for the run (``Settings.threads`` CPUs, or one per core; no dashboard) and shuts it down
after. A Ray already initialised in this process (a notebook's, a test's) is used as it is and
left running.

Example:
    >>> from etl.config import Settings
    >>> with ray_session(Settings(engine="ray", threads=2)) as ray:  # doctest: +SKIP
    ...     ray.get(ray.remote(lambda: 1).remote())
    1
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

from etl.config import Settings
from etl.errors import ConfigError, EtlError, TransientError

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'etl-staging[ray]'"
#: How often Ray runs a task again whose worker process died (not for errors the task raised).
MAX_RETRIES = 3
#: ``ETL_FAULT_RAY_KILL=<point>:<marker file>`` (tests): the first task (or driver) to reach
#: ``<point>`` creates the marker and kills its own process, once per marker file;
#: ``<point>:always`` kills every time. The driver reads it and passes it to its tasks (a Ray
#: worker does not inherit the driver's environment). Points: see :func:`kill_once`'s callers
#: (``group``, ``chunk``, ``driver`` in the stage; ``table``, ``transform-driver`` in the
#: transform; ``copy``, ``copy/<table>``, ``copied``, ``copy-driver`` in the load).
FAULT_ENV = "ETL_FAULT_RAY_KILL"


def import_ray() -> ModuleType:
    """The ``ray`` module, or a :class:`ConfigError` saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise ConfigError("the ray engine needs Ray, which is not installed",
                          hint=f"{INSTALL_HINT}, or use --engine local") from exc
    return ray


@contextmanager
def ray_session(settings: Settings) -> Iterator[ModuleType]:
    """Ray, connected for the length of the ``with`` block (see the module's docstring)."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    # Ray's own variable names a cluster too, as it does for every Ray program.
    address = settings.ray_address or os.environ.get("RAY_ADDRESS") or None
    quiet = {"log_to_driver": False, "logging_level": logging.WARNING}
    try:
        if address:
            log.info("joining the Ray cluster at %s", address)
            ray.init(address=address, **quiet)
        else:
            cpus = settings.threads or os.cpu_count() or 1
            log.info("starting a local Ray for this run (%d CPUs)", cpus)
            # "local": a new Ray of our own, never one that happens to run on this machine
            # (ray.init() with no address joins any it finds).
            ray.init(address="local", num_cpus=cpus, include_dashboard=False, **quiet)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        # ValueError: an address Ray cannot use, or ray:// without Ray Client installed.
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"cannot use the Ray cluster at {address or 'a local Ray'}: {first}",
                          hint=f"check ETL_RAY_ADDRESS / --ray-address (ray://HEAD:10001 needs "
                               f"{INSTALL_HINT}), or leave it unset to start a local Ray") from exc
    try:
        yield ray
    finally:
        ray.shutdown()


def cluster_figures(ray: ModuleType) -> tuple[int, int]:
    """(alive nodes, CPUs) of the cluster ``ray`` is connected to."""
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    return nodes, cpus


def fault_point() -> str | None:
    """``ETL_FAULT_RAY_KILL`` as the driver has it (passed on to the tasks), or None."""
    return os.environ.get(FAULT_ENV) or None


def kill_once(fault: str | None, point: str) -> None:
    """Kill this process at ``point`` when ``fault`` (``ETL_FAULT_RAY_KILL``) asks (tests)."""
    if not fault or not fault.startswith(point + ":"):
        return
    marker = fault.split(":", 1)[1]
    if marker == "always":
        log.warning("fault injection: killing process %d at %s (always)", os.getpid(), point)
        os._exit(137)
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    log.warning("fault injection: killing process %d at %s", os.getpid(), point)
    os._exit(137)


def gather(ray: ModuleType, refs: list[Any], *, again: str, ordered: bool = False) -> Iterator[Any]:
    """The tasks' results, as they finish (or in order); a task's own error is raised as itself,
    the unfinished others asked to stop (also when the caller stops: an interrupt, an error of
    its own).
    A task whose worker died on every retry is a :class:`TransientError` whose hint ends with
    ``again`` (what to run again)."""
    from ray.exceptions import RayError, RayTaskError

    left = list(refs)
    finished = False
    try:
        if ordered:
            yield from ray.get(refs)
        else:
            while left:
                ready, left = ray.wait(left, num_returns=1)
                yield ray.get(ready[0])
        finished = True
    except RayError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(exc, RayTaskError) and isinstance(cause, EtlError):
            raise cause from None
        if isinstance(exc, RayTaskError):
            raise
        # The cluster's failure, not the input's: a worker that died on every retry, a node lost.
        raise TransientError(f"a Ray task failed {MAX_RETRIES + 1} times: {type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''}",
                             hint="check the Ray workers' memory and logs (ray status; "
                                  f"/tmp/ray/session_latest/logs), then {again}") from exc
    finally:
        if not finished:
            _cancel_pending(ray, refs)


def _cancel_pending(ray: ModuleType, refs: list[Any]) -> None:
    """Ask the tasks of ``refs`` that have not finished to stop (not forced). Cancelling a task
    that has finished, or force-killing one whose reply is on its way, can crash the driver's
    own Ray core worker ("Tried to complete task that was not pending": a whole CI run was lost
    to it); a task left running ends on its own, its output unused."""
    try:
        _, pending = ray.wait(refs, num_returns=len(refs), timeout=0)
    except Exception:  # the cluster is gone: nothing to stop
        log.debug("listing the unfinished Ray tasks failed", exc_info=True)
        return
    for ref in pending:
        try:
            ray.cancel(ref, force=False)
        except Exception:  # finished meanwhile, or gone: nothing to stop
            log.debug("cancelling a Ray task failed", exc_info=True)
