"""Cached reads a build planner makes, as functions a web backend imports.

Each function takes a :class:`~etl.infra.cache.Cache` (one per process, shared by its threads) and
returns a JSON-able dict: ``{"dataset", "generation", ...}`` plus what was asked for. The
generation says which load the answer comes from (handy as an HTTP ETag). PostgreSQL builds the
JSON itself, so a value goes from the database to both cache tiers as bytes, untouched.

    >>> from etl.infra.cache import Cache
    >>> from etl import query
    >>> with Cache("postgresql://etl@localhost/etl", redis_url="redis://localhost:6379/0") as c:
    ...     query.power(c, 42)["power"]["full_name"]

Each dataset declares its queries (:attr:`etl.dataset.Dataset.reads`); this module runs them
through the cache. ``power``, ``powerset`` and ``build_summary`` are shorthands for the reads of
``mids``, kept for the callers of the first version of this module.

Staleness: see :mod:`etl.infra.cache` (a read that starts after a load's swap committed sees that load).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from etl.dataset import ReadQuery
from etl.errors import ConfigError
from etl.infra.cache import Cache, Fetched
from etl.infra.errors import NotFound

log = logging.getLogger(__name__)


_GEN = "(SELECT generation FROM etl.generations WHERE dataset = %(dataset)s)"


@dataclass(frozen=True, slots=True)
class Query:
    """One cached query of a dataset: its SQL (the dataset's, plus the generation read in the
    same statement) and how its argument is read and shown."""

    dataset: str
    name: str
    sql: str
    parse: Callable[[str], Any]
    what: str  # for messages: "power 42"
    hint: str
    key: str  # the answer's key in the result


def queries() -> dict[tuple[str, str], Query]:
    """Every cached query of every dataset that declares reads, by (dataset, name)."""
    from etl.datasets import available

    return {(name, q.name): _query(name, q) for name, ds in available().items() if ds.reads
            for q in ds.reads.queries}


def _query(dataset: str, q: ReadQuery) -> Query:
    return Query(dataset, q.name, f"SELECT ({q.sql}), {_GEN}", q.parse, q.what, q.hint, q.key or q.name)


def get_query(dataset: str, name: str) -> Query:
    from etl.datasets import available

    ds = available().get(dataset)
    found = ds.reads.query(name) if ds is not None and ds.reads is not None else None
    if found is None:
        known = ", ".join(f"{d} {n}" for d, n in queries())
        raise ConfigError(f"no cached query {name!r} for dataset {dataset!r}",
                          hint=f"known queries: {known}")
    return _query(dataset, found)


def fetch(cache: Cache, dataset: str, name: str, arg: str | int) -> Fetched:
    """The raw cached read (JSON bytes, the tier that answered, the generation): what the
    benchmark and a backend that sends bytes straight on use."""
    q = get_query(dataset, name)
    value = q.parse(str(arg))
    return cache.fetch(dataset, name, str(value), q.sql, {"arg": value})


def run(cache: Cache, dataset: str, name: str, arg: str | int) -> dict[str, Any]:
    """``name(arg)`` on ``dataset`` as a dict; raises :class:`NotFound` when nothing matches."""
    q = get_query(dataset, name)
    got = fetch(cache, dataset, name, arg)
    doc = orjson.loads(got.doc)
    if doc is None:
        raise NotFound(f"no {q.what} {arg!r} in {dataset} (generation {got.generation})",
                       dataset=dataset, hint=q.hint)
    return {"dataset": dataset, "generation": got.generation, q.key: doc}


def power(cache: Cache, power_id: int, *, dataset: str = "mids") -> dict[str, Any]:
    """A power by id, with its powerset's name, its effects and its requirements (``mids``)."""
    return run(cache, dataset, "power", power_id)


def powerset(cache: Cache, name: str, *, dataset: str = "mids") -> dict[str, Any]:
    """A powerset by full name (``Blaster_Ranged.Fire_Blast``, case-insensitive), with its
    powers (``mids``)."""
    return run(cache, dataset, "powerset", name)


def build_summary(cache: Cache, archetype: str, *, dataset: str = "mids") -> dict[str, Any]:
    """The build summary of an archetype (``Class_Blaster`` or ``Blaster``): one row per power of
    its powersets, from the materialized view power_build_summary (``mids``)."""
    return run(cache, dataset, "build-summary", archetype)


# ------------------------------------------------------------------------------ warming


def default_keys(cache: Cache, dataset: str) -> list[tuple[str, str]]:
    """What to warm when nothing is known to be hot, as the dataset declares it (mids: every
    archetype's build summary and every powerset); nothing for a dataset that declares none."""
    from etl.datasets import available

    ds = available().get(dataset)
    if ds is None or ds.reads is None or ds.reads.default_keys is None:
        return []
    with cache._pg().cursor() as cur:  # the warming thread's own connection
        return ds.reads.default_keys(cur)


def warm(cache: Cache, dataset: str, *, top: int = 200) -> dict[str, Any]:
    """Preload the ``top`` hottest keys of ``dataset`` (as counted by every process's reads) for
    the current generation, topped up with :func:`default_keys`; what was loaded and how long it
    took."""
    start = time.perf_counter()
    keys = cache.hot_keys(dataset, top)
    hot = len(keys)
    if len(keys) < top:
        seen = set(keys)
        keys += [k for k in default_keys(cache, dataset) if k not in seen][: top - len(keys)]
    tiers: dict[str, int] = {}
    known = queries()
    for name, arg in keys:
        if (dataset, name) not in known:
            continue
        try:
            got = fetch(cache, dataset, name, arg)
        except ConfigError:
            log.info("skipping hot key %s %r: no longer a valid argument", name, arg)
            continue
        tiers[got.tier] = tiers.get(got.tier, 0) + 1
    return {"dataset": dataset, "generation": cache.generation(dataset), "keys": len(keys),
            "from_hot_list": hot, "tiers": tiers, "seconds": round(time.perf_counter() - start, 3)}
