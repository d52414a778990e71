"""The two-tier read cache on the real PostgreSQL and the real Redis: tiers, generations, staleness,
Redis going away and coming back, the query CLI.

Each test has a database of its own (``pg_url``); the cache's Redis namespace is named after that
database's random ``etl.instance`` id, so tests never see each other's keys; each test deletes its
keys at the end. Redis outages are real: a second ``redis-server`` on a free port, stopped and
started again.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from etl import get_dataset, query
from etl.bench.reads import run_benchmark
from etl.cli import main
from etl.datasets import dataset_of
from etl.datasets.mids.queries import PROBE_SET
from etl.infra import cache as cache_mod
from etl.infra.cache import Cache, db_generation, gen_key
from etl.infra.pg import connect
from etl.load import load
from tests.conftest import REDIS_URL, MidsRuns, mids_runs

MIDS = get_dataset("mids")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def runs(mids_sample: Path, tmp_path_factory: pytest.TempPathFactory) -> MidsRuns:
    return mids_runs(mids_sample, tmp_path_factory.mktemp("cache"), f"{PROBE_SET}.json")


@pytest.fixture
def redis_url() -> Iterator[str]:
    """The real Redis (fails, never skips, when it is not there)."""
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis is not reachable at {REDIS_URL} ({exc}). Start it with "
                    "`redis-server --daemonize yes` or point ETL_TEST_REDIS_URL at one.")
    finally:
        client.close()
    yield REDIS_URL


@pytest.fixture
def loaded(pg_url: str, runs: MidsRuns, redis_url: str) -> Iterator[str]:
    """``pg_url`` with the full run loaded (generation 1); this database's Redis keys are deleted
    afterwards."""
    load(runs.full, dataset_of(runs.full), database_url=pg_url, redis_url=redis_url)
    yield pg_url
    cache_mod.clear(pg_url, redis_url)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A redis-server process of the test's own (no persistence), to stop and start again."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.fail("redis-server is not installed (apt-get install redis-server)")
        self.proc = subprocess.Popen([exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no"], stdout=subprocess.DEVNULL)
        client = redis.Redis(port=self.port)
        for _ in range(100):
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        pytest.fail(f"redis-server on port {self.port} did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    server = RedisServer(_free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


# ------------------------------------------------------------------------------ tiers


def test_tiers_hit_and_miss_and_count(loaded: str, redis_url: str) -> None:
    with Cache(loaded, redis_url=redis_url) as a, Cache(loaded, redis_url=redis_url) as b:
        first = query.fetch(a, "mids", "power", 5)
        assert first.tier == "db" and first.generation == 1
        assert query.fetch(a, "mids", "power", 5).tier == "lru"
        # Another process (its own LRU) finds it in Redis, then in its LRU.
        assert query.fetch(b, "mids", "power", 5).tier == "redis"
        assert query.fetch(b, "mids", "power", 5).tier == "lru"
        assert first.doc == query.fetch(b, "mids", "power", 5).doc

        doc = query.power(a, 5)
        assert doc["dataset"] == "mids" and doc["generation"] == 1
        with connect(loaded) as conn:
            want = conn.execute("SELECT full_name, (SELECT count(*) FROM mids.power_effects WHERE "
                                "power_id = 5) FROM mids.powers WHERE power_id = 5").fetchone()
        assert want is not None
        assert doc["power"]["full_name"] == want[0] and len(doc["power"]["effects"]) == want[1]
        assert query.powerset(a, PROBE_SET.lower())["powerset"]["full_name"] == PROBE_SET
        summary = query.build_summary(a, "Blaster")["summary"]
        assert summary["archetype"]["class_name"] == "Class_Blaster" and summary["power_count"] > 0
        with pytest.raises(query.NotFound, match="no power 999999"):
            query.power(a, 999999)

        assert a.local_stats()["counts"]["lru:power:hit"] == 2  # fetch + power()
        assert b.local_stats()["counts"]["redis:power:hit"] == 1
    shared = cache_mod.stats(loaded, redis_url)["redis"]
    assert shared["queries"]["power"]["lru_hit"] == 4
    assert shared["queries"]["power"]["redis_hit"] == 1
    assert shared["queries"]["power"]["db_read"] == 2  # power 5 and the missing one
    assert shared["value_keys"] >= 4


def test_lru_is_bounded(loaded: str) -> None:
    with Cache(loaded, lru_items=3) as c:
        for pid in range(1, 8):
            query.fetch(c, "mids", "power", pid)
        assert len(c.lru) == 3
        assert query.fetch(c, "mids", "power", 7).tier == "lru"
        assert query.fetch(c, "mids", "power", 1).tier == "db"


# ------------------------------------------------------------------------------ generations


def _probe_present(c: Cache) -> tuple[bool, str, int]:
    got = query.fetch(c, "mids", "powerset", PROBE_SET)
    return json.loads(got.doc) is not None, got.tier, got.generation


def test_reload_bumps_generation_and_both_tiers_serve_the_new_data(loaded: str, redis_url: str,
                                                                   runs: MidsRuns) -> None:
    with Cache(loaded, redis_url=redis_url) as lru, Cache(loaded, redis_url=redis_url, lru_items=0) as red:
        assert _probe_present(lru) == (True, "db", 1)
        assert _probe_present(lru) == (True, "lru", 1)
        assert _probe_present(red) == (True, "redis", 1)

        load(runs.small, dataset_of(runs.small), database_url=loaded, redis_url=redis_url)
        with connect(loaded) as conn:
            assert db_generation(conn, "mids") == 2
        # Right after the load: neither the warm LRU nor the warm Redis answers with the old data.
        assert _probe_present(lru) == (False, "db", 2)
        assert _probe_present(red) == (False, "redis", 2)
        assert _probe_present(lru) == (False, "lru", 2)

        load(runs.full, dataset_of(runs.full), database_url=loaded, redis_url=redis_url)
        assert _probe_present(red)[::2] == (True, 3)
        assert _probe_present(lru)[::2] == (True, 3)


def test_generation_reaches_redis_before_the_swap_commits(
        loaded: str, redis_url: str, runs: MidsRuns) -> None:
    """Kill the loader after its swap did everything but commit: Redis already holds the next
    generation, the database the old one, and readers get the old (still committed) data,
    labelled with its true generation, so nothing old is ever stored under the new key. The
    resumed load then commits generation 2 and readers see the new data at once."""
    with connect(loaded) as conn:
        ns = cache_mod.namespace(conn)
    client = redis.Redis.from_url(redis_url)
    with Cache(loaded, redis_url=redis_url) as c:
        assert _probe_present(c) == (True, "db", 1)
        env = {**os.environ, "ETL_FAULT_KILL_AT": "swap", "ETL_REDIS_URL": redis_url}
        proc = subprocess.run([sys.executable, "-m", "etl.cli", "load", str(runs.small.path),
                               "--database-url", loaded], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == -signal.SIGKILL, proc.stderr
        with connect(loaded) as conn:
            assert db_generation(conn, "mids") == 1
        assert client.get(gen_key(ns, "mids")) == b"2"
        # Generation 2 is announced but not committed: reads go to the database, old data.
        assert _probe_present(c) == (True, "db", 1)
        assert _probe_present(c) == (True, "db", 1)
        assert client.get(f"{ns}:mids:2:powerset:{PROBE_SET}") is None

        load(runs.small, dataset_of(runs.small), database_url=loaded, redis_url=redis_url)  # resumes: swap
        with connect(loaded) as conn:
            assert db_generation(conn, "mids") == 2
        assert _probe_present(c) == (False, "db", 2)
    client.close()


def test_no_read_older_than_the_last_committed_swap_during_reloads(pg_url: str, redis_url: str,
                                                                   runs: MidsRuns) -> None:
    """Concurrent readers of every tier during two full reloads; a watcher records each
    generation once it is committed; any read that started later and returned older data, or
    content not matching its generation, is counted."""
    try:
        result = run_benchmark(pg_url, redis_url=redis_url, runs={"full": runs.full, "small": runs.small},
                               reloads=2, lru_procs=1, redis_procs=1, db_procs=1, threads=2,
                               settle=0.5)
    finally:
        cache_mod.clear(pg_url, redis_url)
    assert result["reloads"] == 2
    assert result["errors"] == 0, result["examples"]
    assert result["stale_reads"] == 0, result["examples"]
    assert result["wrong_content"] == 0, result["examples"]
    assert {"lru", "redis", "db"} <= set(result["tiers"])


def test_lease_answers_lru_hits_without_asking_redis(loaded: str, redis_url: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """With a lease, the generation comes from the process, not from Redis: a bogus generation
    written into Redis behind the lease's back is not seen until the lease is renewed."""
    monkeypatch.setattr(cache_mod, "LEASE_MS", 60_000)  # no lease runs out during the test
    monkeypatch.setattr(cache_mod, "LEASE_REFRESH_MS", 600_000)  # renewed by hand only
    with connect(loaded) as conn:
        ns = cache_mod.namespace(conn)
    client = redis.Redis.from_url(redis_url)
    with Cache(loaded, redis_url=redis_url) as c:
        assert c.lease("mids") is None
        assert _probe_present(c) == (True, "db", 1)  # slow path; starts leasing mids
        c.renew_leases()
        assert c.lease("mids") == 1
        client.set(gen_key(ns, "mids"), b"99", px=cache_mod.GEN_TTL_MS)
        assert _probe_present(c) == (True, "lru", 1)  # the lease, no GET of the generation
        c.renew_leases()
        assert c.lease("mids") == 99
        assert _probe_present(c)[1:] == ("db", 1)  # generation 99 has no values: read, label 1
    client.delete(gen_key(ns, "mids"))
    client.close()


def test_fence_stops_leases_until_the_loader_takes_it_down(loaded: str, redis_url: str,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache_mod, "LEASE_REFRESH_MS", 600_000)
    with connect(loaded) as conn:
        ns = cache_mod.namespace(conn)
    client = redis.Redis.from_url(redis_url)
    with Cache(loaded, redis_url=redis_url) as c:
        c.generation("mids")
        c.renew_leases()
        assert c.lease("mids") == 1
        fence = cache_mod.Fence(redis_url, ns, "mids")
        fence.up()
        assert client.exists(cache_mod.fence_key(ns, "mids"))
        c.renew_leases()
        assert c.lease("mids") is None  # fence up: no lease, every read asks Redis
        fence.wait()
        fence.before_commit(2)
        assert client.get(gen_key(ns, "mids")) == b"2"
        c.renew_leases()
        assert c.lease("mids") is None
        assert c.generation("mids") == 2  # the slow path sees the published generation
        fence.down(2)
        fence.close()
        assert not client.exists(cache_mod.fence_key(ns, "mids"))
        c.renew_leases()
        assert c.lease("mids") == 2
    client.delete(gen_key(ns, "mids"))
    client.close()


def test_forked_child_leases_on_its_own(loaded: str, redis_url: str,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A pre-forking server forks after the cache was used: the child has no lease thread (threads
    do not survive fork) and must start its own, with its own connection."""
    monkeypatch.setattr(cache_mod, "LEASE_REFRESH_MS", 600_000)
    with Cache(loaded, redis_url=redis_url) as c:
        assert _probe_present(c) == (True, "db", 1)
        parent_thread = c._lease_thread
        assert parent_thread is not None
        pid = os.fork()
        if pid == 0:  # the child: exit 0 only if it leases and reads on its own
            ok = False
            try:
                ok = (c._lease_thread is None and _probe_present(c)[::2] == (True, 1)
                      and c._lease_thread is not None and c._lease_thread is not parent_thread)
                c.renew_leases()
                ok = ok and c.lease("mids") == 1
            finally:
                os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert c._lease_thread is parent_thread and _probe_present(c)[::2] == (True, 1)


def test_loader_puts_the_fence_up_before_the_swap_and_takes_it_down_after(
        loaded: str, redis_url: str, runs: MidsRuns) -> None:
    """Killed inside the swap, the loader leaves its fence up (it expires on its own), so no
    reader takes a lease on a generation about to change; a finished load leaves none."""
    with connect(loaded) as conn:
        ns = cache_mod.namespace(conn)
    client = redis.Redis.from_url(redis_url)
    assert not client.exists(cache_mod.fence_key(ns, "mids"))
    env = {**os.environ, "ETL_FAULT_KILL_AT": "swap", "ETL_REDIS_URL": redis_url}
    proc = subprocess.run([sys.executable, "-m", "etl.cli", "load", str(runs.small.path),
                           "--database-url", loaded], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert 0 < client.pttl(cache_mod.fence_key(ns, "mids")) <= cache_mod.FENCE_TTL_MS
    load(runs.small, dataset_of(runs.small), database_url=loaded, redis_url=redis_url)  # resumes at the swap
    assert not client.exists(cache_mod.fence_key(ns, "mids"))
    assert client.get(gen_key(ns, "mids")) == b"2"
    client.close()


def test_without_any_tier_a_read_goes_straight_to_the_query(loaded: str) -> None:
    with Cache(loaded, redis_url=None, lru_items=0) as c:
        got = query.fetch(c, "mids", "power", 3)
        assert (got.tier, got.generation) == ("db", 1)
        assert c.local_stats()["counts"] == {"db:power:read": 1}  # no LRU lookup, no generation read


def test_missing_generation_key_is_refilled_from_the_database(loaded: str, redis_url: str) -> None:
    with connect(loaded) as conn:
        ns = cache_mod.namespace(conn)
    client = redis.Redis.from_url(redis_url)
    client.delete(gen_key(ns, "mids"))
    with Cache(loaded, redis_url=redis_url) as c:
        assert c.generation("mids") == 1
    assert client.get(gen_key(ns, "mids")) == b"1"
    assert 0 < client.pttl(gen_key(ns, "mids")) <= cache_mod.GEN_TTL_MS
    client.close()


# ------------------------------------------------------------------------------ Redis down


def test_without_redis_reads_work_through_lru_and_database(loaded: str, caplog: pytest.LogCaptureFixture,
                                                           runs: MidsRuns) -> None:
    with Cache(loaded, redis_url=None) as c:
        assert query.fetch(c, "mids", "power", 3).tier == "db"
        assert query.fetch(c, "mids", "power", 3).tier == "lru"
        load(runs.small, dataset_of(runs.small), database_url=loaded, redis_url=None)
        # The generation comes from PostgreSQL: the LRU's old entry is not used.
        assert _probe_present(c) == (False, "db", 2)


def test_redis_down_then_back(loaded: str, own_redis: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="etl.infra.cache")
    with Cache(loaded, redis_url=own_redis.url, retry_after=0.2) as c:
        assert query.fetch(c, "mids", "power", 1).tier == "db"
        own_redis.stop()
        tiers = [query.fetch(c, "mids", "power", pid).tier for pid in range(2, 12)]
        tiers += [query.fetch(c, "mids", "power", 1).tier]
        assert tiers == ["db"] * 10 + ["lru"]
        time.sleep(0.3)
        assert query.fetch(c, "mids", "power", 12).tier == "db"  # retried: still down
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "unreachable" in warnings[0].getMessage()
        assert c.redis_down

        own_redis.start()  # an empty Redis (no persistence)
        time.sleep(0.3)
        assert query.fetch(c, "mids", "power", 13).tier == "db"
        assert not c.redis_down
        assert any("answers again" in r.getMessage() for r in caplog.records)
        # Used again: values and the generation are written to it, and read from it.
        client = redis.Redis(port=own_redis.port)
        assert client.get(gen_key(c.namespace, "mids")) == b"1"
        assert client.get(f"{c.namespace}:mids:1:power:13") is not None
        client.close()
    with Cache(loaded, redis_url=own_redis.url) as other:
        assert query.fetch(other, "mids", "power", 13).tier == "redis"


def test_unreachable_redis_from_the_start_logs_once(loaded: str, caplog: pytest.LogCaptureFixture) -> None:
    url = f"redis://127.0.0.1:{_free_port()}/0"
    with Cache(loaded, redis_url=url, retry_after=0.05) as c:
        for pid in range(1, 6):
            assert query.power(c, pid)["generation"] == 1
            time.sleep(0.06)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "etl.infra.cache"]
    assert len(warnings) == 1


# ------------------------------------------------------------------------------ CLI


def test_query_and_cache_cli(loaded: str, redis_url: str) -> None:
    cli = CliRunner()
    base = ["--database-url", loaded, "--redis-url", redis_url]
    res = cli.invoke(main, ["query", "mids", "power", "5", *base])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["generation"] == 1 and doc["power"]["power_id"] == 5
    res = cli.invoke(main, ["query", "mids", "powerset", PROBE_SET, *base])
    assert json.loads(res.stdout)["powerset"]["full_name"] == PROBE_SET
    res = cli.invoke(main, ["query", "mids", "build-summary", "Class_Blaster", *base])
    assert json.loads(res.stdout)["summary"]["archetype"]["display_name"] == "Blaster"
    res = cli.invoke(main, ["query", "mids", "powerset", "No_Such.Set", *base])
    assert res.exit_code == 1 and "no powerset" in res.output

    res = cli.invoke(main, ["cache", "warm", "mids", "--top", "10", "--json", *base])
    assert res.exit_code == 0, res.output
    warmed = json.loads(res.stdout)
    assert warmed["keys"] == 10 and warmed["from_hot_list"] >= 2

    res = cli.invoke(main, ["cache", "stats", "--json", *base])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["generations"]["mids"]["generation"] == 1
    assert info["redis"]["queries"]["power"]["db_read"] >= 1 and info["redis"]["keys"] > 0

    res = cli.invoke(main, ["cache", "clear", *base])
    assert res.exit_code == 0 and int(res.stdout.strip()) > 0
    assert json.loads(cli.invoke(main, ["cache", "stats", "--json", *base]).stdout)["redis"]["keys"] == 0

    res = cli.invoke(main, ["query", "--help"])
    assert "Example" in res.output


def test_load_warm_fills_redis_for_the_new_generation(loaded: str, redis_url: str, runs: MidsRuns,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """`etl load --warm N`: right after the swap, the N hottest keys (here: the defaults) are in
    Redis under the new generation, so the first readers of the new data skip the database."""
    monkeypatch.setenv("ETL_REDIS_URL", redis_url)
    with connect(loaded) as conn:
        ns = cache_mod.namespace(conn)
    res = CliRunner().invoke(main, ["load", str(runs.small.path), "--database-url", loaded,
                                    "--warm", "5", "--json"])
    assert res.exit_code == 0, res.output
    phases = {p["name"]: p for p in json.loads(res.stdout)["phases"]}
    assert phases["warm"]["rows"] == 5 and phases["warm"]["extra"]["generation"] == 2
    client = redis.Redis.from_url(redis_url)
    assert len(list(client.scan_iter(match=f"{ns}:mids:2:*"))) == 5
    client.close()
    with Cache(loaded, redis_url=redis_url, lru_items=0) as c:
        got = query.fetch(c, "mids", "build-summary", "Class_Blaster")
        assert (got.tier, got.generation) == ("redis", 2)
