"""When to try a failed call again, and after how long.

gRPC's own retries (the `retryPolicy` of the shipped service config) absorb short transport blips; this policy sits
above them and covers what they cannot: longer outages (a server restarting, a replica being replaced) with
exponential back-off, and `RESOURCE_EXHAUSTED` answers (rate limit, full queue), waiting exactly as long as the
server asked in its `retry-after-ms` metadata. Only idempotent calls are retried on UNAVAILABLE; a job submission
is retried only when the server refused it before doing anything (rate limited).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from embeddings_client.errors import EmbeddingsError


@dataclass(frozen=True)
class RetryPolicy:
    """Back-off for retryable errors (`EmbeddingsError.retryable`). `max_attempts=1` turns retries off."""

    max_attempts: int = 5
    initial_backoff_s: float = 0.25
    max_backoff_s: float = 8.0
    multiplier: float = 2.0
    jitter: float = 0.2  # each back-off is randomised by +-20% so clients that failed together spread out
    max_retry_after_s: float = 60.0  # a server asking for a longer wait is not waited for: the error is raised
    # Called before each wait with (attempt that failed, its error, seconds about to be waited): logging, progress.
    on_retry: Callable[[int, EmbeddingsError, float], None] | None = None

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.initial_backoff_s < 0 or self.multiplier < 1 or not 0 <= self.jitter < 1:
            raise ValueError("max_attempts >= 1, initial_backoff_s >= 0, multiplier >= 1, 0 <= jitter < 1")

    def delay(self, attempt: int, error: EmbeddingsError, idempotent: bool = True) -> float | None:
        """Seconds to wait before trying again after failed attempt `attempt` (1-based), or None to give up."""
        if attempt >= self.max_attempts or not error.retryable:
            return None
        if not idempotent and error.code != "RESOURCE_EXHAUSTED":
            return None  # the server may have acted on it
        if error.retry_after_s is not None:
            return error.retry_after_s if error.retry_after_s <= self.max_retry_after_s else None
        backoff = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (attempt - 1))
        return backoff * random.uniform(1 - self.jitter, 1 + self.jitter)

    def notify(self, attempt: int, error: EmbeddingsError, wait_s: float) -> None:
        if self.on_retry is not None:
            self.on_retry(attempt, error, wait_s)


NO_RETRIES = RetryPolicy(max_attempts=1)
