"""The embedding cache's shared tier: vectors kept in Redis for every replica, each expiring `ttl_s` after it was
written.

A value is the key itself followed by the pooled vector's float32 bytes, under `<prefix><key hex>` (the key already
names the model's content digest and the cache scope: service/engine/cache.py). A value read back must start with
the key asked for: a reply that answers another lookup (a client or proxy that hands a late reply to the next
command) or a value copied under another name is a miss, never another tenant's vector.

The cache is an accelerator, never a dependency: every read is bounded by `timeout_s` (connecting included, no
retries) and answers misses when Redis is slow or down; writes go out in the background, dropped beyond
`MAX_PENDING_WRITES` batches in flight; after a failure Redis is left alone for `RETRY_AFTER_FAILURE_S` so calls do
not each wait out the deadline. Used on the event loop only.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

import redis
import redis.asyncio
from redis.backoff import NoBackoff
from redis.retry import Retry

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "embeddings:vc:"
DEFAULT_TIMEOUT_S = 0.05
RETRY_AFTER_FAILURE_S = 2.0
WARN_EVERY_S = 30.0
MAX_PENDING_WRITES = 64


class RedisVectors:
    """`SharedVectors` in Redis (service.engine.cache)."""

    def __init__(
        self, url: str, prefix: str = DEFAULT_PREFIX, ttl_s: int = 86400, timeout_s: float = DEFAULT_TIMEOUT_S
    ) -> None:
        if ttl_s < 1:
            raise ValueError(f"cache_ttl_s must be at least 1, got {ttl_s}")
        self._client = redis.asyncio.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 0)
        )
        self._prefix = prefix.encode()
        self._ttl_s = ttl_s
        self._timeout_s = timeout_s
        self._writes: set[asyncio.Task] = set()
        self._resting_until = 0.0
        self._warned_at = 0.0
        self.failures = 0
        self.dropped_writes = 0

    @property
    def pending_writes(self) -> int:
        """Write batches in flight (at most MAX_PENDING_WRITES: beyond, writes are dropped, never queued)."""
        return len(self._writes)

    def _name(self, key: bytes) -> bytes:
        return self._prefix + key.hex().encode()

    def _available(self) -> bool:
        return time.monotonic() >= self._resting_until

    def _failed(self, exc: BaseException, doing: str) -> None:
        self.failures += 1
        now = time.monotonic()
        self._resting_until = now + RETRY_AFTER_FAILURE_S
        if now - self._warned_at >= WARN_EVERY_S:
            self._warned_at = now
            log.warning("embedding cache: Redis %s failed (%s); serving without the shared tier for now", doing, exc)

    async def start(self) -> None:
        """Connect before the first call needs it (a connection made inside a call's deadline would spend it);
        an unreachable Redis is only warned about: calls then run without the shared tier."""
        try:
            async with asyncio.timeout(max(1.0, self._timeout_s)):
                await self._client.ping()
        except (redis.RedisError, OSError, TimeoutError) as exc:
            self._failed(exc, "connection")

    async def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        if not keys or not self._available():
            return [None] * len(keys)
        try:
            async with asyncio.timeout(self._timeout_s):
                values = await self._client.mget([self._name(key) for key in keys])
        except (redis.RedisError, OSError, TimeoutError) as exc:
            self._failed(exc, "read")
            return [None] * len(keys)
        return [_vector_of(key, value) for key, value in zip(keys, values, strict=True)]

    def put_many(self, items: Sequence[tuple[bytes, bytes]]) -> None:
        if not items or not self._available():
            return
        if len(self._writes) >= MAX_PENDING_WRITES:
            self.dropped_writes += 1
            return
        task = asyncio.get_running_loop().create_task(self._write(list(items)))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _write(self, items: list[tuple[bytes, bytes]]) -> None:
        try:
            async with asyncio.timeout(self._timeout_s * 4):
                pipe = self._client.pipeline(transaction=False)
                for key, value in items:
                    pipe.set(self._name(key), key + value, ex=self._ttl_s)
                await pipe.execute()
        except (redis.RedisError, OSError, TimeoutError) as exc:
            self._failed(exc, "write")

    async def close(self) -> None:
        if self._writes:
            await asyncio.wait(set(self._writes), timeout=1.0)
        await self._client.aclose()


def _vector_of(key: bytes, value: object) -> bytes | None:
    """The vector a stored value holds for `key`, or None when it is not the value written for that key."""
    if not isinstance(value, bytes) or not value.startswith(key):
        return None
    return value[len(key) :]
