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

from etl.config import Settings
from etl.errors import ConfigError

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'etl-staging[ray]'"


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
