"""Two-tier read cache: an in-process LRU in front of Redis, in front of PostgreSQL.

Every cached value is keyed by the **generation** of its dataset: a counter in
``etl.generations`` that the loader bumps in the same transaction as the schema swap (see
:func:`bump_generation`). A reload therefore invalidates nothing by deleting: readers simply stop
asking for the old generation's keys, which expire on their own (Redis TTL, LRU eviction).

How a read learns the current generation
========================================

Each read needs the dataset's current generation, then looks the value up under
``<namespace>:<dataset>:<generation>:<query>:<arg>`` in the LRU, then in Redis, then reads
PostgreSQL.

* With Redis, from a **lease** (no round trip): a background thread of each :class:`Cache`
  reads the generation key and the dataset's **fence** key (``MGET``, every
  :data:`LEASE_REFRESH_MS`). When the generation is there and no fence is up, the process may use
  that generation for :data:`LEASE_MS`, counted from before the ``MGET`` was sent. A loader puts
  the fence up, waits :data:`LEASE_MS` (so every lease granted before the fence has run out), and
  only then swaps; it takes the fence down after the commit, once Redis holds the new generation.
  So no lease can be valid at the commit, and no lease granted after it names the old
  generation. While a fence is up, or a lease has run out (a starved thread, Redis slow), reads
  take the slow path below, which is right at every instant.
* With Redis, slow path: one ``GET <namespace>:gen:<dataset>`` per read. The loader writes that
  key **before** the swap commits (as the last thing the swap transaction does) and again right
  after the commit, both with a "never go down" script (:data:`_SET_MAX`). So from the moment the
  swap commits, Redis already holds the new generation (or a higher one), and every read that
  starts after the commit looks for new-generation keys. The key lives :data:`GEN_TTL_MS` (2 s);
  when it is missing a reader reads the generation from PostgreSQL and writes it back the same
  way. That bounds the damage if the loader could not reach Redis at the swap (it logs a
  warning): then readers may see the previous load for at most ``GEN_TTL_MS`` (plus a lease)
  after the commit.
* Without Redis (not configured, or down): the generation is read from PostgreSQL on every read
  (a primary-key lookup, well under a millisecond). The LRU still saves the real query. With no
  LRU either there is nothing to look up, so the read goes straight to the query, which returns
  the generation with the data.
* ``gen_max_age_ms > 0`` trades the guarantee for speed: a process reuses a generation it learned
  less than that long ago (reads may then be that much behind a reload). The default is 0.

A value read from PostgreSQL is labelled with the generation read **in the same statement**
(one snapshot; the statement holds its locks on the live tables, which the swap must take before
it renames, so data and label always belong together). It is stored under that label, never
under the generation the reader asked for: a read that raced a swap can never put old data under
a new key. Between the loader's pre-commit write and the commit, readers see a generation no
value is stored under yet and read PostgreSQL (the old data, still the committed one).

The guarantee, exactly
======================

**A read that starts after the swap transaction of a load has committed returns that load's data
(or a later load's), from either tier.** It holds with Redis when the loader reached the same
Redis at its swap, and always without Redis. A read that overlaps the commit returns the old or
the new data, never a mix. Only if the loader could not write the generation to Redis (it logs a
warning) may readers using that Redis see the previous load for up to ``GEN_TTL_MS`` after the
commit.

Redis failures
==============

A Redis error (down, refused, timed out) switches this process to LRU + PostgreSQL with one
warning in the log; Redis is tried again after ``retry_after`` seconds, and used again (one info
line) once it answers. Reads never fail because of Redis.

The namespace is ``<prefix>:<etl.instance id>``: a random id created by the migration, so two
databases sharing one Redis (or a dropped and re-created database) never read each other's keys.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import weakref
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import psycopg

from etl.errors import mask_secrets
from etl.infra import pg
from etl.infra.errors import CacheError, database_error

log = logging.getLogger(__name__)

Tier = Literal["lru", "redis", "db"]

#: How long a generation key lives in Redis before a reader re-reads it from PostgreSQL.
GEN_TTL_MS = 2_000
#: How long a cached value lives in Redis (old generations' values just expire).
DATA_TTL_S = 24 * 3600
#: Cached reads are counted locally and added to Redis at most this often (seconds).
STATS_FLUSH_S = 1.0
#: How long a generation read from Redis with no fence up may be reused without asking again.
LEASE_MS = 200
#: How often a cache's lease thread renews its leases (a few renewals per lease).
LEASE_REFRESH_MS = 40
#: How long a loader waits after its fence is up (a lease, and a margin for clock rates).
LEASE_WAIT_S = LEASE_MS * 1.1 / 1000
#: A loader's fence lives this long if the loader dies before taking it down.
FENCE_TTL_MS = 30_000
#: Channel the swap transaction notifies (``<dataset>:<generation>``), delivered at commit.
NOTIFY_CHANNEL = "etl_generation"

# KEYS[1] = generation key, ARGV[1] = generation, ARGV[2] = TTL in ms. Never lowers the value.
_SET_MAX = """
local cur = tonumber(redis.call('GET', KEYS[1]) or '-1')
local new = tonumber(ARGV[1])
if new >= cur then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return new
end
return cur
"""

# KEYS[1] = generation key, KEYS[2] = fence key; ARGV = generation, generation TTL, fence TTL.
# Publishes the generation (never lowering it) and keeps the fence up; returns 1 if the fence
# was still up, 0 if it had expired (then leases may be out and the caller must wait again).
_PUBLISH_FENCED = """
local cur = tonumber(redis.call('GET', KEYS[1]) or '-1')
if tonumber(ARGV[1]) >= cur then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
local up = redis.call('EXISTS', KEYS[2])
redis.call('SET', KEYS[2], '1', 'PX', ARGV[3])
return up
"""

_NO_MIGRATION = "run `etl db upgrade` (the cache needs migration 0004_generations)"


# ------------------------------------------------------------------------------ generations (SQL)


def bump_generation(conn: psycopg.Connection[Any], dataset: str, *, run_id: str | None,
                    ledger_id: int | None) -> int:
    """Add one to ``dataset``'s generation inside the caller's transaction (the swap), notify
    :data:`NOTIFY_CHANNEL` (delivered at commit) and return the new generation."""
    row = conn.execute(
        "INSERT INTO etl.generations AS g (dataset, generation, run_id, ledger_id, swapped_at) "
        "VALUES (%s, 1, %s, %s, now()) ON CONFLICT (dataset) DO UPDATE SET "
        "generation = g.generation + 1, run_id = EXCLUDED.run_id, ledger_id = EXCLUDED.ledger_id, "
        "swapped_at = EXCLUDED.swapped_at RETURNING generation",
        (dataset, run_id, ledger_id)).fetchone()
    assert row is not None
    generation = int(row[0])
    conn.execute("SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, f"{dataset}:{generation}"))
    return generation


def db_generation(conn: psycopg.Connection[Any], dataset: str) -> int:
    """The dataset's committed generation (0: never swapped in since the cache existed)."""
    try:
        row = conn.execute("SELECT generation FROM etl.generations WHERE dataset = %s",
                           (dataset,)).fetchone()
    except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName) as exc:
        raise CacheError(f"etl.generations is missing: {exc}".strip(), dataset=dataset,
                         hint=_NO_MIGRATION) from exc
    return int(row[0]) if row else 0


def generations(conn: psycopg.Connection[Any]) -> dict[str, dict[str, Any]]:
    """Every dataset's generation, run and swap time."""
    try:
        rows = conn.execute("SELECT dataset, generation, run_id, ledger_id, swapped_at "
                            "FROM etl.generations ORDER BY dataset").fetchall()
    except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName) as exc:
        raise CacheError(f"etl.generations is missing: {exc}".strip(), hint=_NO_MIGRATION) from exc
    return {r[0]: {"generation": int(r[1]), "run_id": r[2], "ledger_id": r[3], "swapped_at": r[4]}
            for r in rows}


def namespace(conn: psycopg.Connection[Any], *, prefix: str = "etl") -> str:
    """The Redis key prefix of the database behind ``conn``: ``<prefix>:<etl.instance id>``."""
    try:
        row = conn.execute("SELECT id FROM etl.instance").fetchone()
    except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName) as exc:
        raise CacheError(f"etl.instance is missing: {exc}".strip(), hint=_NO_MIGRATION) from exc
    if row is None:
        raise CacheError("etl.instance is empty", hint=_NO_MIGRATION)
    return f"{prefix}:{str(row[0])[:13]}"


def gen_key(ns: str, dataset: str) -> str:
    return f"{ns}:gen:{dataset}"


def fence_key(ns: str, dataset: str) -> str:
    return f"{ns}:fence:{dataset}"


def redis_client(redis_url: str) -> Any:
    """A Redis client with short timeouts: an unreachable Redis costs a read milliseconds, not
    seconds."""
    import redis

    return redis.Redis.from_url(redis_url, socket_connect_timeout=0.25, socket_timeout=0.5,
                                retry_on_timeout=False)


class Fence:
    """A loader's fence around the commit that moves a dataset's generation (see the module
    docstring): :meth:`up` before the work that ends in the swap, :meth:`wait` before the swap
    takes its locks, :meth:`before_commit` as the last statement of the swap transaction,
    :meth:`down` after the commit (or after a failure). Without a Redis URL every call is a no-op
    but :meth:`wait`, which still waits out leases (a reader may use a Redis the loader was not
    told about only if it was misconfigured; waiting costs a fraction of a second)."""

    def __init__(self, redis_url: str | None, ns: str, dataset: str) -> None:
        self.redis_url = redis_url or None
        self.ns = ns
        self.dataset = dataset
        self._client = redis_client(redis_url) if redis_url else None
        self._up_at: float | None = None

    def _warn(self, what: str, exc: Exception) -> None:
        log.warning("could not %s for %s in Redis at %s (%s): readers may see the previous data "
                    "for up to %.0f s", what, self.dataset, mask_secrets(self.redis_url or ""), exc,
                    (GEN_TTL_MS + LEASE_MS) / 1000)

    def up(self) -> None:
        """Put the fence up: from now on no reader gets a new lease on this dataset."""
        if self._up_at is not None:
            return
        if self._client is not None:
            try:
                self._client.set(fence_key(self.ns, self.dataset), b"1", px=FENCE_TTL_MS)
            except Exception as exc:
                self._warn("put up the fence", exc)
        self._up_at = time.monotonic()  # after the reply: the fence was up by then

    def wait(self) -> None:
        """Sleep until every lease granted before the fence went up has run out."""
        self.up()
        assert self._up_at is not None
        left = self._up_at + LEASE_WAIT_S - time.monotonic()
        if left > 0:
            time.sleep(left)

    def before_commit(self, generation: int) -> None:
        """Publish ``generation`` and check the fence is still up (if it expired, a reader may
        hold a lease on the old generation: wait one out again, inside the transaction)."""
        if self._client is None:
            return
        try:
            up = self._client.eval(_PUBLISH_FENCED, 2, gen_key(self.ns, self.dataset),
                                   fence_key(self.ns, self.dataset), generation, GEN_TTL_MS,
                                   FENCE_TTL_MS)
        except Exception as exc:
            self._warn(f"write generation {generation}", exc)
            return
        if not int(up):
            log.warning("the read-cache fence of %s expired before the swap committed; waiting "
                        "%d ms for readers' leases to run out", self.dataset, LEASE_MS)
            time.sleep(LEASE_WAIT_S)

    def down(self, generation: int | None = None) -> None:
        """After the commit: publish ``generation`` again (the pre-commit write may have expired)
        and take the fence down; after a failure (``generation`` None): just take it down."""
        if self._client is None or self._up_at is None:
            return
        try:
            if generation:
                self._client.eval(_SET_MAX, 1, gen_key(self.ns, self.dataset), generation, GEN_TTL_MS)
            self._client.delete(fence_key(self.ns, self.dataset))
        except Exception as exc:
            self._warn("take down the fence", exc)
        finally:
            self._up_at = None

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


# ------------------------------------------------------------------------------ the LRU


class _Lru:
    """A byte- and entry-bounded LRU of ``key -> bytes``, safe across threads."""

    def __init__(self, max_items: int, max_bytes: int) -> None:
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.bytes = 0
        self._data: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> bytes | None:
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def put(self, key: str, value: bytes) -> None:
        if len(value) > self.max_bytes:
            return
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self.bytes -= len(old)
            self._data[key] = value
            self.bytes += len(value)
            while self._data and (len(self._data) > self.max_items or self.bytes > self.max_bytes):
                _, dropped = self._data.popitem(last=False)
                self.bytes -= len(dropped)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self.bytes = 0

    def __len__(self) -> int:
        return len(self._data)


# ------------------------------------------------------------------------------ the cache


@dataclass(frozen=True, slots=True)
class Fetched:
    """One cached read: the value (JSON bytes, ``b"null"`` for nothing found), the tier that
    answered and the generation the value belongs to."""

    doc: bytes
    tier: Tier
    generation: int


class Cache:
    """The two-tier cache of one process: owns the Redis client, the LRU and one PostgreSQL
    connection per reading thread. Thread-safe; close it when done (or use ``with``)."""

    def __init__(self, database_url: str, *, redis_url: str | None = None, prefix: str = "etl",
                 lru_items: int = 10_000, lru_bytes: int = 64 << 20, gen_max_age_ms: float = 0,
                 retry_after: float = 1.0, data_ttl: int = DATA_TTL_S, leases: bool = True) -> None:
        self.url = pg.normalize_url(database_url)
        self.redis_url = redis_url or None
        self.prefix = prefix
        self.gen_max_age = gen_max_age_ms / 1000
        self.retry_after = retry_after
        self.data_ttl = data_ttl
        self.lru = _Lru(lru_items, lru_bytes)
        self._redis = redis_client(redis_url) if redis_url else None
        self._set_max: Any = self._redis.register_script(_SET_MAX) if self._redis is not None else None
        self._redis_down = False
        self._redis_retry_at = 0.0
        self._local = threading.local()
        self._conns: list[psycopg.Connection[Any]] = []
        self._lock = threading.Lock()
        self._ns: str | None = None
        self._gens: dict[str, tuple[int, float]] = {}
        # leases (see the module docstring): dataset -> (generation, valid until, monotonic)
        self._use_leases = leases and self._redis is not None
        self._leases: dict[str, tuple[int, float]] = {}
        self._lease_datasets: set[str] = set()
        self._lease_thread: threading.Thread | None = None
        self._closing = threading.Event()
        # A forked child (a pre-forking web server) has no lease thread: start one there afresh.
        me = weakref.WeakMethod(self._after_fork)
        os.register_at_fork(after_in_child=lambda: (m := me()) is not None and m())
        self._counts: Counter[str] = Counter()
        self._hot: Counter[tuple[str, str, str]] = Counter()
        self._next_flush = time.monotonic() + STATS_FLUSH_S
        self.totals: Counter[str] = Counter()  # this process, never reset by flushing

    # -- resources ------------------------------------------------------------------------

    def __enter__(self) -> Cache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the lease thread, flush the counters to Redis, close the connections."""
        self._closing.set()
        if self._lease_thread is not None:
            self._lease_thread.join(5)
        self._leases.clear()
        self.flush_stats()
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            try:
                conn.close()
            except Exception:
                log.debug("closing a connection failed", exc_info=True)
        if self._redis is not None:
            self._redis.close()

    def _pg(self) -> psycopg.Connection[Any]:
        conn: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            conn = pg.connect(self.url, application_name="etl cache")
            self._local.conn = conn
            with self._lock:
                self._conns.append(conn)
        return conn

    def _with_pg(self, fn: Callable[[psycopg.Connection[Any]], Any]) -> Any:
        """``fn(conn)`` on this thread's connection; once more on a fresh one if it was lost."""
        try:
            return fn(self._pg())
        except psycopg.OperationalError:
            self._local.conn = None
            return fn(self._pg())

    @property
    def namespace(self) -> str:
        if self._ns is None:
            self._ns = self._with_pg(lambda c: namespace(c, prefix=self.prefix))
        return self._ns

    # -- Redis health ---------------------------------------------------------------------

    def redis_usable(self) -> bool:
        if self._redis is None:
            return False
        return not self._redis_down or time.monotonic() >= self._redis_retry_at

    def _redis_failed(self, exc: Exception) -> None:
        with self._lock:
            if not self._redis_down:
                log.warning("Redis at %s is unreachable (%s): reading through the in-process cache and "
                            "PostgreSQL until it is back", mask_secrets(self.redis_url or ""), exc)
            self._redis_down = True
            self._redis_retry_at = time.monotonic() + self.retry_after

    def _redis_ok(self) -> None:
        if self._redis_down:
            with self._lock:
                if self._redis_down:
                    self._redis_down = False
                    log.info("Redis at %s answers again: using it", mask_secrets(self.redis_url or ""))

    @property
    def redis_down(self) -> bool:
        return self._redis_down

    # -- generations ----------------------------------------------------------------------

    def generation(self, dataset: str) -> int:
        """The dataset's current generation (see the module docstring for where it comes from)."""
        leased = self.lease(dataset)
        if leased is not None:
            return leased
        if self._use_leases and dataset not in self._lease_datasets:
            self._start_leasing(dataset)
        if self.gen_max_age > 0:
            known = self._gens.get(dataset)
            if known is not None and time.monotonic() - known[1] < self.gen_max_age:
                return known[0]
        gen = self._generation(dataset)
        if self.gen_max_age > 0:
            self._gens[dataset] = (gen, time.monotonic())
        return gen

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self.lru._lock = threading.Lock()
        self._lease_thread = None
        self._leases.clear()
        self._lease_datasets.clear()
        self._local = threading.local()  # the parent's connections are not this process's
        self._conns = []

    def _start_leasing(self, dataset: str) -> None:
        with self._lock:
            self._lease_datasets.add(dataset)
            if self._lease_thread is None and not self._closing.is_set():
                self._lease_thread = threading.Thread(target=self._keep_leases, daemon=True,
                                                      name="etl-cache-leases")
                self._lease_thread.start()

    def _keep_leases(self) -> None:
        """The lease thread: renews leases, and flushes the counters so no read pays for it."""
        while not self._closing.wait(LEASE_REFRESH_MS / 1000):
            self.renew_leases()
            if time.monotonic() >= self._next_flush:
                try:
                    self.flush_stats()
                except Exception:
                    log.exception("flushing the read-cache counters failed")

    def renew_leases(self) -> None:
        """Renew the lease of every dataset read so far (the lease thread does this every
        :data:`LEASE_REFRESH_MS`)."""
        for dataset in list(self._lease_datasets):
            try:
                self._renew_lease(dataset)
            except Exception:  # never let the thread die; reads fall back to the slow path
                self._leases.pop(dataset, None)
                log.exception("renewing the read-cache lease of %s failed", dataset)

    def _renew_lease(self, dataset: str) -> None:
        if not self.redis_usable():
            self._leases.pop(dataset, None)
            return
        assert self._redis is not None
        ns = self.namespace
        sent = time.monotonic()  # the lease counts from before the question
        try:
            gen, fence = self._redis.mget(gen_key(ns, dataset), fence_key(ns, dataset))
        except Exception as exc:
            self._leases.pop(dataset, None)
            if not _is_redis_error(exc):
                raise
            self._redis_failed(exc)
            return
        self._redis_ok()
        if gen is not None and fence is None:
            self._leases[dataset] = (int(gen), sent + LEASE_MS / 1000)
        else:
            self._leases.pop(dataset, None)

    def lease(self, dataset: str) -> int | None:
        """The generation this process may use without asking (None: no valid lease now)."""
        lease = self._leases.get(dataset)
        return lease[0] if lease is not None and time.monotonic() < lease[1] else None

    def _generation(self, dataset: str) -> int:
        if self.redis_usable():
            assert self._redis is not None
            key = gen_key(self.namespace, dataset)
            try:
                raw = self._redis.get(key)
                if raw is not None:
                    self._redis_ok()
                    return int(raw)
                started = time.monotonic()
                gen = self._with_pg(lambda c: db_generation(c, dataset))
                # Write it back only if just read: an old read could lower a newer loader's value
                # after that one expired (the script never lowers a value still there).
                if time.monotonic() - started < GEN_TTL_MS / 2000:
                    gen = int(self._set_max(keys=[key], args=[gen, GEN_TTL_MS]))
                self._redis_ok()
                return gen
            except CacheError:
                raise
            except Exception as exc:
                if not _is_redis_error(exc):
                    raise
                self._redis_failed(exc)
        return int(self._with_pg(lambda c: db_generation(c, dataset)))

    # -- reads ----------------------------------------------------------------------------

    def fetch(self, dataset: str, query: str, arg: str, sql: str, params: dict[str, Any]) -> Fetched:
        """The value of ``query(arg)`` on ``dataset``: from the LRU, else Redis, else PostgreSQL.

        ``sql`` must return one row: the value as JSON text (NULL for nothing found) and the
        dataset's generation read in the same statement (``%(dataset)s`` is bound to it)."""
        if self.lru.max_items == 0 and not self.redis_usable():
            return self._read_db(dataset, query, arg, sql, params)  # no tier to look in
        gen = self.generation(dataset)
        ns = self.namespace
        key = f"{ns}:{dataset}:{gen}:{query}:{arg}"
        doc = self.lru.get(key)
        if doc is not None:
            self._count(dataset, query, arg, "lru:hit")
            return Fetched(doc, "lru", gen)
        self._count(dataset, query, arg, "lru:miss")
        if self.redis_usable():
            assert self._redis is not None
            try:
                doc = self._redis.get(key)
                self._redis_ok()
                if doc is not None:
                    self._count(dataset, query, arg, "redis:hit")
                    self.lru.put(key, doc)
                    return Fetched(doc, "redis", gen)
                self._count(dataset, query, arg, "redis:miss")
            except Exception as exc:
                if not _is_redis_error(exc):
                    raise
                self._redis_failed(exc)
        return self._read_db(dataset, query, arg, sql, params)

    def _read_db(self, dataset: str, query: str, arg: str, sql: str, params: dict[str, Any]) -> Fetched:
        """Read PostgreSQL, store the value under the generation it belongs to."""
        ns = self.namespace

        def read(conn: psycopg.Connection[Any]) -> tuple[Any, Any]:
            row = conn.execute(sql, {**params, "dataset": dataset}).fetchone()
            assert row is not None
            return row[0], row[1]

        try:
            text, label = self._with_pg(read)
        except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName) as exc:
            raise CacheError(f"{dataset}: {exc}".strip(), dataset=dataset,
                             hint=f"load the dataset first (`etl run {dataset} SOURCES`) and run "
                                  "`etl db upgrade`") from exc
        except psycopg.Error as exc:
            raise database_error(f"{dataset} {query} {arg!r}: {exc}".strip(), exc, dataset=dataset,
                                 hint="check the database (`etl health`)") from exc
        self._count(dataset, query, arg, "db:read")
        label = int(label or 0)
        doc = b"null" if text is None else text.encode()
        # Stored under the generation the data belongs to, not the one asked for.
        stored = f"{ns}:{dataset}:{label}:{query}:{arg}"
        self.lru.put(stored, doc)
        if self.redis_usable():
            assert self._redis is not None
            try:
                self._redis.set(stored, doc, ex=self.data_ttl)
            except Exception as exc:
                if not _is_redis_error(exc):
                    raise
                self._redis_failed(exc)
        return Fetched(doc, "db", label)

    # -- counters -------------------------------------------------------------------------

    def _count(self, dataset: str, query: str, arg: str, what: str) -> None:
        field = f"{what.split(':')[0]}:{query}:{what.split(':')[1]}"
        with self._lock:
            self._counts[field] += 1
            self.totals[field] += 1
            if what in ("lru:hit", "lru:miss"):
                self._hot[(dataset, query, arg)] += 1
        if self._lease_thread is None and time.monotonic() >= self._next_flush:
            self.flush_stats()  # else the lease thread flushes

    def flush_stats(self) -> None:
        """Add this process's counters since the last flush to Redis (shared by every process),
        with the hot keys (for ``etl cache warm``) and this process's LRU size."""
        with self._lock:
            self._next_flush = time.monotonic() + STATS_FLUSH_S
            counts, self._counts = self._counts, Counter()
            hot, self._hot = self._hot, Counter()
        if self._redis is None or not self.redis_usable() or self._ns is None:
            return
        ns = self._ns
        try:
            pipe = self._redis.pipeline(transaction=False)
            for field, n in counts.items():
                pipe.hincrby(f"{ns}:stats", field, n)
            for (dataset, query, arg), n in hot.items():
                pipe.zincrby(f"{ns}:hot:{dataset}", n, f"{query}\x1f{arg}")
            me = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
            pipe.set(f"{ns}:proc:{me}", f"{len(self.lru)} {self.lru.bytes} {int(time.time())}", ex=600)
            pipe.execute()
            self._redis_ok()
        except Exception as exc:
            if not _is_redis_error(exc):
                raise
            self._redis_failed(exc)

    def local_stats(self) -> dict[str, Any]:
        """This process's counters (since it started) and LRU size."""
        return {"counts": dict(sorted(self.totals.items())), "lru_entries": len(self.lru),
                "lru_bytes": self.lru.bytes, "redis": self.redis_url is not None,
                "redis_down": self._redis_down}

    def hot_keys(self, dataset: str, top: int) -> list[tuple[str, str]]:
        """The ``top`` most read ``(query, arg)`` of ``dataset`` (all processes), hottest first."""
        if self._redis is None or not self.redis_usable():
            return []
        try:
            members = self._redis.zrevrange(f"{self.namespace}:hot:{dataset}", 0, top - 1)
        except Exception as exc:
            if not _is_redis_error(exc):
                raise
            self._redis_failed(exc)
            return []
        out = []
        for m in members:
            query, _, arg = m.decode().partition("\x1f")
            out.append((query, arg))
        return out


def _is_redis_error(exc: BaseException) -> bool:
    import redis

    return isinstance(exc, redis.RedisError | OSError)


# ------------------------------------------------------------------------------ operations


def _kind(key: bytes) -> str:
    """What a key of a namespace holds: value, gen, stats, hot or proc."""
    part = key.split(b":", 3)[2].decode() if key.count(b":") >= 2 else ""
    return part if part in ("gen", "stats", "hot", "proc") else "value"


def _scan_keys(client: Any, pattern: str) -> list[bytes]:
    return list(client.scan_iter(match=pattern, count=1000))


def stats(database_url: str, redis_url: str | None, *, prefix: str = "etl") -> dict[str, Any]:
    """What ``etl cache stats`` shows: hits and misses per tier and per query (all processes,
    from Redis), the LRUs of the processes that reported, Redis memory and key count, and each
    dataset's generation."""
    with pg.connect(database_url) as conn:
        ns = namespace(conn, prefix=prefix)
        gens = generations(conn)
    out: dict[str, Any] = {"namespace": ns, "generations": gens, "redis": None}
    if not redis_url:
        return out
    client = redis_client(redis_url)
    try:
        raw = client.hgetall(f"{ns}:stats")
        per_query: dict[str, dict[str, int]] = {}
        tiers: Counter[str] = Counter()
        for field, n in raw.items():
            tier, query, what = field.decode().split(":")
            per_query.setdefault(query, {})[f"{tier}_{what}"] = int(n)
            tiers[f"{tier}_{what}"] += int(n)
        info = client.info("memory")
        keys = _scan_keys(client, f"{ns}:*")
        proc_keys = [k for k in keys if _kind(k) == "proc"]
        procs: list[dict[str, Any]] = []
        for key, value in zip(proc_keys, client.mget(proc_keys) if proc_keys else [], strict=True):
            if value is None:
                continue
            entries, size, at = value.decode().split()
            procs.append({"process": key.decode().split(":proc:", 1)[1], "lru_entries": int(entries),
                          "lru_bytes": int(size), "reported_at": int(at)})
        out["redis"] = {
            "url": mask_secrets(redis_url),
            "used_memory": int(info.get("used_memory", 0)),
            "used_memory_human": info.get("used_memory_human"),
            "maxmemory": int(info.get("maxmemory", 0)),
            "keys": len(keys),
            "value_keys": sum(1 for k in keys if _kind(k) == "value"),
            "totals": dict(sorted(tiers.items())),
            "queries": dict(sorted(per_query.items())),
            "processes": sorted(procs, key=lambda p: -p["reported_at"])[:20],
        }
        total_reads = tiers["lru_hit"] + tiers["lru_miss"]
        out["redis"]["hit_ratio"] = {
            "lru": round(tiers["lru_hit"] / total_reads, 4) if total_reads else None,
            "redis": (round(tiers["redis_hit"] / (tiers["redis_hit"] + tiers["redis_miss"]), 4)
                      if tiers["redis_hit"] + tiers["redis_miss"] else None),
        }
    except Exception as exc:
        if not _is_redis_error(exc):
            raise
        out["redis"] = {"url": mask_secrets(redis_url), "error": str(exc)}
    finally:
        client.close()
    return out


def clear(database_url: str | None, redis_url: str, *, prefix: str = "etl", everything: bool = False,
          ) -> int:
    """Delete this database's cache keys from Redis (values, generation keys, counters, hot
    keys); with ``everything``, every key under ``prefix:`` (all databases). The number of keys
    deleted. Never needed for correctness: a reload changes the keys readers use."""
    if everything or database_url is None:
        pattern = f"{prefix}:*"
    else:
        with pg.connect(database_url) as conn:
            pattern = f"{namespace(conn, prefix=prefix)}:*"
    client = redis_client(redis_url)
    try:
        deleted = 0
        batch: list[bytes] = []
        for key in client.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                deleted += int(client.delete(*batch))
                batch = []
        if batch:
            deleted += int(client.delete(*batch))
    except Exception as exc:
        if not _is_redis_error(exc):
            raise
        raise CacheError(f"cannot clear Redis at {mask_secrets(redis_url)}: {exc}",
                         hint="check that Redis runs and --redis-url / ETL_REDIS_URL") from exc
    finally:
        client.close()
    log.info("deleted %d cache keys matching %s", deleted, pattern)
    return deleted
