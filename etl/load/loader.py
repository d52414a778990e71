"""Load: a transformed run's tables → PostgreSQL, atomically, resumably, verified.

A full load never touches the live schema (named after the dataset) until the very end:

1. ``create``: a build schema ``<dataset>__b<ledger id>`` beside it, with bare tables.
2. ``copy:<table>``: each table streamed from its Parquet chunks through ADBC's binary COPY
   (``adbc_ingest``), tables concurrently, each in one transaction with its ledger step. Every
   ADBC call runs in a forked worker process (:mod:`etl.load.forked`), one per thread: a driver
   crash there is retried like a lost connection. (:mod:`.copy`) With the ray engine, a Ray
   task per staged chunk instead, each chunk with a ledger step of its own. (:mod:`.on_ray`)
3. ``keys:<table>``, ``fkeys``, ``validate:<fk>``: primary and unique keys, ANALYZE and each
   table read back for its checksum (tables concurrently), then foreign keys added NOT VALID
   and validated (tables concurrently). (:mod:`.keys`)
4. ``sql``: the dataset's SQL under ``sql/<dataset>/`` (secondary indexes, materialized views).
5. ``verify``: every table's row count and content checksum (read back in step 3) must equal
   the staged ones. (:mod:`.verify`)
6. ``swap``: one short transaction renames the live schema away and the build schema into its
   place, and marks the run succeeded in the ledger. The old schema is dropped afterwards.
   (:mod:`.swap`)

Each step commits together with its row in ``etl.load_steps``, so a killed load resumes where it
stopped: running the same command again skips the finished steps and redoes the rest
(:mod:`.plan`). Readers see the old data until the swap commits and the new data after it,
never a mix. Merge mode is a path of its own (:mod:`.merge`).

This module sequences the steps; the state they share is :class:`etl.load.state.Load`.
"""

from __future__ import annotations

import logging

from etl.config import Settings, load_settings
from etl.dataset import Dataset
from etl.errors import ConfigError, RunStateError
from etl.infra import cache, pg
from etl.infra.pg import DatabaseError, quote_ident
from etl.load import plan, swap
from etl.load._utils import sql_files
from etl.load.copy import copy_all
from etl.load.errors import VerificationFailed
from etl.load.keys import keys_all, post_sql
from etl.load.merge import merge
from etl.load.plan import LoadResult, check_database, ensure_ledger, manifest_digest
from etl.load.state import Load, Mode, Progress
from etl.load.verify import RECONCILE_SAMPLE, RECONCILED, table_checksums, verify
from etl.metrics import Phase, load_allocator, timed
from etl.run import Run

log = logging.getLogger(__name__)


def load(
    run: Run,
    dataset: Dataset,
    *,
    database_url: str | None = None,
    mode: Mode = "full",
    force: bool = False,
    workers: int = 2,
    retries: int = 4,
    retry_delay: float = 0.5,
    progress: Progress | None = None,
    redis_url: str | None = None,
    tag: str | None = None,
    delete_missing: bool = False,
    warm: int = 0,
    reconcile_sample: float = RECONCILE_SAMPLE,
    settings: Settings | None = None,
) -> LoadResult:
    """Load a transformed run into PostgreSQL (see the module docstring for the steps).

    ``database_url=None`` uses the embedded server. ``redis_url`` (default: ``ETL_REDIS_URL``) is
    the read cache's Redis, told the new generation at the swap (see :mod:`etl.infra.cache`). The
    ledger is created or upgraded first if needed. A run already loaded (same content, same
    mode) is skipped unless ``force``.
    Raises :class:`~etl.infra.pg.LockBusy` if another load of the dataset runs,
    :class:`VerificationFailed` if the database differs from the staged tables, and
    :class:`~etl.infra.pg.DatabaseError` when the connection keeps dropping.

    ``mode="merge"`` upserts into the live tables instead (see :mod:`etl.load.merge`):
    the result's ``merged`` counts rows inserted, updated, unchanged (and, with
    ``delete_missing``, deleted). ``tag`` sets the dataset's tag columns (e.g. the licenses
    import's ``datasets.tag``) in every row, in any mode.

    ``warm > 0``: after a load that changed the data, preload that many of the read cache's
    hottest keys into Redis for the new generation (a ``warm`` phase; needs ``redis_url``).

    ``reconcile_sample``: the share of source files whose records the verify step rebuilds from
    the staged rows and compares with the export (chosen by content hash; small sources whole;
    0 turns it off, 1 reads every file). See :mod:`etl.load.reconcile`.

    ``settings``: where the COPY runs, ``settings.engine``: ``"local"`` (forked worker processes,
    ``workers`` tables at a time) or ``"ray"`` (a COPY task per staged chunk on the Ray cluster
    ``settings.ray_address`` names, or a local Ray; see :mod:`etl.load.on_ray`). Keys, indexes,
    verification and the swap run in this process either way; a merge always runs here.
    """
    run = run.current()
    run.check_dataset(dataset)
    if "tables" not in run.manifest:
        raise RunStateError(f"run {run.id} has no transformed tables", run=run.id,
                            hint=f"run `etl transform {run.path}` first")
    url = check_database(database_url)
    ensure_ledger(url, dataset)
    if tag is not None and not dataset.tag_columns:
        raise ConfigError(f"dataset {run.dataset_name} has no tag column; --tag does not apply",
                          hint="leave out --tag")
    if tag is not None and (not tag.strip() or len(tag) > 200 or not tag.isprintable()):
        raise ConfigError(f"--tag {tag!r} is not a name: it must be 1 to 200 printable characters, "
                          "not only spaces", hint="e.g. --tag 2026-11-import")
    if delete_missing and mode != "merge":
        raise ConfigError("--delete-missing applies to --mode merge only",
                          hint="a full load replaces every row anyway")
    redis_url = redis_url or load_settings().redis_url
    with load_allocator():
        return _load(run, dataset, url, mode=mode, workers=workers, retries=retries,
                     retry_delay=retry_delay, progress=progress, tag=tag,
                     reconcile_sample=reconcile_sample, redis_url=redis_url, settings=settings,
                     delete_missing=delete_missing, force=force, warm=warm)


def _load(run: Run, dataset: Dataset, url: str, *, mode: Mode, workers: int, retries: int,
          retry_delay: float, progress: Progress | None, tag: str | None, reconcile_sample: float,
          redis_url: str | None, settings: Settings | None, delete_missing: bool, force: bool,
          warm: int) -> LoadResult:
    state = Load(run, dataset, url, mode=mode, workers=workers, retries=retries, retry_delay=retry_delay,
                 progress=progress, tag=tag, reconcile_sample=reconcile_sample, redis_url=redis_url,
                 settings=settings)
    if mode == "merge":
        result = merge(state, delete_missing=delete_missing)
        log.info("merged %s into %s: %s", run.id, result.schema, ", ".join(
            f"{n} +{c['inserted']} ~{c['updated']} ={c['unchanged']}"
            + (f" -{c['deleted']}" if "deleted" in c else "") for n, c in result.merged.items()))
    else:
        result = _full(state, force=force)
        if not result.skipped:
            log.info("loaded %s into %s (%d rows, ledger #%s)", run.id, result.schema,
                     sum(result.rows.values()), result.ledger_id)
    if warm > 0 and not result.skipped and (mode != "merge" or result.changed):
        result.phases.append(_warm(url, redis_url, state.live, warm))
    return result


def _full(load: Load, *, force: bool) -> LoadResult:
    """A full load (any mode but merge), under the dataset's lock: skipped, resumed or begun."""
    digest = manifest_digest(load.run, load.tag)
    result = LoadResult(load.run, load.url, None, load.live, load.mode)
    with plan.locked(load) as lock_conn:
        last = plan.already_loaded(load, lock_conn, digest, force=force)
        if last is not None:
            result.ledger_id = int(last["id"])
            result.rows = dict(last.get("rows") or {})
            result.skipped = True
            # A load killed between its swap and dropping the old schema leaves it behind.
            swap.drop_old(load, lock_conn)
            return result
        plan.begin(load, lock_conn, digest)
        result.ledger_id = load.ledger_id
        result.schema = load.live
        result.resumed_from = list(load.steps)
        try:
            swap.cleanup_stale(load, lock_conn)
            _run_steps(load)
        except BaseException as exc:
            plan.fail(load, exc)
            raise
        finally:
            load.close()
        swap.drop_old(load, lock_conn)
    result.rows = {n: int(e["rows"]) for n, e in load.entries.items()}
    verified = load.steps.get("verify") or {}
    result.checksums = {n: v["checksum"] for n, v in verified.items() if n != RECONCILED}
    result.reconciled = verified.get(RECONCILED)
    result.phases = load.phases
    return result


def _run_steps(load: Load) -> None:
    """The phases in order, each timed; the new generation published after the swap."""
    total_rows = sum(int(e["rows"]) for e in load.entries.values())
    # Largest tables first, so the concurrent copies end together.
    order = sorted(load.tables, key=lambda n: -int(load.entries[n]["rows"]))

    def post_load() -> None:
        if "swap" not in load.steps:
            load.fence.up()  # readers' leases run out while indexes and views build
        plan.step(load, "sql", lambda conn: post_sql(load, conn))

    load.timed("load", total_rows, lambda: copy_all(load, order))
    load.timed("keys", total_rows, lambda: keys_all(load, order))
    load.timed("post-load", total_rows, post_load)
    load.timed("verify", total_rows, lambda: plan.step(load, "verify", lambda conn: verify(load, conn)))
    load.timed("swap", 0, lambda: plan.step(load, "swap", lambda conn: swap.swap(load, conn)))
    load.fence.publish()


def _warm(url: str, redis_url: str | None, dataset: str, top: int) -> Phase:
    """The ``warm`` phase: the ``top`` hottest keys read into Redis for the new generation. A
    failure here is logged, never raised: the load itself has succeeded."""
    from etl.query import warm

    with timed("warm") as phase:
        if not redis_url:
            log.warning("--warm needs the read cache's Redis (ETL_REDIS_URL): nothing warmed")
            return phase
        try:
            with cache.Cache(url, redis_url=redis_url, lru_items=0, leases=False) as c:
                done = warm(c, dataset, top=top)
            phase.rows = int(done["keys"])
            phase.extra = {"generation": done["generation"], "tiers": done["tiers"]}
        except Exception as exc:
            log.warning("warming the read cache of %s failed: %s", dataset, exc)
            phase.extra = {"error": str(exc)[:500]}
    return phase


def live_tables(url: str, dataset: Dataset) -> dict[str, int]:
    """Row counts of the dataset's live tables (for summaries and tests)."""
    out: dict[str, int] = {}
    with pg.connect(url) as conn:
        for t in dataset.tables:
            row = conn.execute(
                f"SELECT count(*) FROM {quote_ident(dataset.name)}.{quote_ident(t.name)}").fetchone()
            out[t.name] = int(row[0]) if row else 0
    return out


__all__ = ["RECONCILE_SAMPLE", "DatabaseError", "LoadResult", "Mode", "VerificationFailed",
           "ensure_ledger", "live_tables", "load", "manifest_digest", "sql_files", "table_checksums"]
