"""Usage metering: requests and tokens per (UTC day, tenant, key, model, user, price), what clients were told they
used. `user` is the end user (OpenAI's `user`) for keys that record users, else ""; `price` the model's price per
million tokens when the tokens were used (exact decimal text, "" unpriced), so reports cost usage at the prices it
was actually charged at, even after a price changes.

Counts are added up in memory and written to the store about once a second (one small transaction, however busy
the server is) and on shutdown; a process killed with SIGKILL loses at most the last second. Interactive calls
count `requests` and `tokens` (the `usage.total_tokens` of their answers); async jobs count `job_requests` (one
per accepted job) and `job_tokens` (the tokens of each embedded chunk, so a job's total equals its `usage`).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import Counter, defaultdict

from service.access.records import UsageDelta
from service.access.store import AccessStore

log = logging.getLogger(__name__)

OPEN_KEY_ID = "open"  # calls made while the server runs without keys


def utc_day(now: float) -> str:
    """The UTC date of a Unix time, as usage rows name days (every call asks: formatted once a day)."""
    return _day_name(int(now // 86_400))


@functools.lru_cache(maxsize=4)
def _day_name(day: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(day * 86_400))


class UsageMeter:
    """Aggregates usage in memory; `flush` writes it through the store. Thread-safe."""

    def __init__(self, store: AccessStore) -> None:
        self._store = store
        # The counts (UsageLine's count fields, by name) added up per row key since the last flush.
        self._pending: defaultdict[tuple[str, ...], Counter[str]] = defaultdict(Counter)
        self._lock = threading.Lock()

    def record(
        self,
        tenant: str,
        key_id: str | None,
        model: str,
        *,
        requests: int = 0,
        tokens: int = 0,
        job_requests: int = 0,
        job_tokens: int = 0,
        user: str = "",
        price: str = "",
        now: float | None = None,
    ) -> None:
        key = (utc_day(time.time() if now is None else now), tenant, key_id or OPEN_KEY_ID, model, user, price)
        with self._lock:
            self._pending[key].update(
                requests=requests, tokens=tokens, job_requests=job_requests, job_tokens=job_tokens
            )

    def flush(self) -> None:
        """Write what was recorded since the last flush; on failure it is kept for the next one."""
        with self._lock:
            pending, self._pending = self._pending, defaultdict(Counter)
        if not pending:
            return
        deltas = [
            UsageDelta(day, tenant, key_id, model, user=user, price=price, **counts)
            for (day, tenant, key_id, model, user, price), counts in pending.items()
        ]
        try:
            self._store.add_usage(deltas)
        except Exception:
            log.exception("writing usage failed; keeping it for the next flush")
            with self._lock:
                for key, counts in pending.items():
                    self._pending[key].update(counts)
