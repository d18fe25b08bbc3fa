"""A worker's hold on one batch: every step renews it as it goes, and stops when it is lost."""

from __future__ import annotations

import asyncio
import time

from service.batches.store import BatchStore
from service.worker_loops import now_s


class LeaseLost(Exception):
    """The batch was cancelled or taken over by another worker: stop this step."""


class BatchLease:
    """The worker's hold on one batch, renewed at most every third of its length."""

    def __init__(self, store: BatchStore, batch_id: str, owner: str, lease_s: int) -> None:
        self._store, self._batch_id, self._owner, self._lease_s = store, batch_id, owner, lease_s
        self._renewed = time.monotonic()

    def keep_sync(self, force: bool = False) -> None:
        if force or time.monotonic() - self._renewed > self._lease_s / 3:
            if self._store.renew_batch_lease(self._batch_id, self._owner, now_s(), self._lease_s) is None:
                raise LeaseLost(self._batch_id)
            self._renewed = time.monotonic()

    async def keep(self, force: bool = False) -> None:
        if force or time.monotonic() - self._renewed > self._lease_s / 3:
            await asyncio.to_thread(self.keep_sync, True)
