"""One load's fence of the read cache: raised before the post-load SQL, lowered after the swap."""

from __future__ import annotations

from typing import Any

from etl.infra import cache, pg


class CacheFence:
    """One load's fence of the read cache (see :mod:`etl.infra.cache`): raised from the post-load
    SQL on, so the wait for readers' leases to run out overlaps it and the swap rarely waits at
    all; lowered after the commit with the new generation (or without one, after a failure)."""

    def __init__(self, url: str, dataset: str, redis_url: str | None) -> None:
        self.url = url
        self.dataset = dataset
        self.redis_url = redis_url
        self.namespace = ""
        #: The dataset's generation this load moved to (0 until it did).
        self.generation = 0
        self._fence: cache.Fence | None = None

    def up(self) -> cache.Fence:
        if self._fence is None:
            with pg.connect(self.url) as conn:
                self.namespace = cache.namespace(conn)
            self._fence = cache.Fence(self.redis_url, self.namespace, self.dataset)
        self._fence.up()
        return self._fence

    def advance(self, conn: Any, *, run_id: str, ledger_id: int) -> None:
        """In the swap's transaction (the fence up): the generation moves, and Redis learns it
        before the commit (again after it, in :meth:`publish`)."""
        assert self._fence is not None
        self.generation = cache.bump_generation(conn, self.dataset, run_id=run_id,
                                                ledger_id=ledger_id)
        self._fence.before_commit(self.generation)

    def down(self, generation: int | None = None) -> None:
        if self._fence is not None:
            self._fence.down(generation)
            self._fence.close()
            self._fence = None

    def publish(self) -> None:
        """After the swap committed: the new generation to Redis again (the pre-commit write
        may have expired if the commit was slow), and the fence down."""
        self.down(self.generation or None)
