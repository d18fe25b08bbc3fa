"""Rate limits shared by every replica: `LocalRateLimiter`'s token buckets kept in Redis, charged by one Lua script.

The script does what `LocalRateLimiter` does in one atomic step on the Redis server: refill every bucket that applies
(key, tenant and end user; requests and tokens), refuse if any lacks room (charging none), else charge all. So a
per-key limit of N requests a minute holds across all replicas combined. Time is Redis's own clock (`TIME`), not
the callers': replicas on different machines need no synchronized clocks, and the `now` the `RateLimiter` protocol
passes is ignored.

A bucket is a hash {level, updated, capacity} under `<prefix><scope>:<name>:<kind>` (an end user's:
`<prefix>user:<key id>:<user>:<kind>`), expiring after two idle minutes (it is full again after one anyway), so
per-user buckets, however many distinct users callers name, live only while used. Redis is called with the asyncio
client on the event loop, each call bounded by `timeout_s` (connecting included, no retries): a slow or dead Redis
costs the call waiting on it at most that, never the others. When Redis cannot be reached in time the limiter
follows `on_failure`: "open" allows the call and logs a warning (at most every 10 s), "closed" refuses it (429, with
a message that says why); for 2 s after a failure it is not asked again, so calls do not each wait out the
deadline. redis is imported here only: the default deployment neither needs nor loads it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import redis
import redis.asyncio
from redis.backoff import NoBackoff
from redis.retry import Retry

from service.access.limits import _EPSILON, BACKGROUND_PART, KINDS, Kind, LimitState, Quota, Refusal

log = logging.getLogger(__name__)

FAILURE_MODES = ("open", "closed")
WARN_EVERY_S = 10.0
CLOSED_RETRY_S = 1.0
# How long one call may wait for Redis (connecting included) before the failure mode applies.
DEFAULT_TIMEOUT_S = 0.25
# After a failure, Redis is not asked again for this long: calls would each wait out the deadline meanwhile.
RETRY_AFTER_FAILURE_S = 2.0

# KEYS: buckets. ARGV: mode ("acquire" | "background" | "state"), reserve, epsilon, smallest background part, then
# (capacity, amount) per key. acquire -> {0} charged | {1, i, used, wait} refused by bucket i (1-based) | {2, i, used}
# too large for bucket i. background -> {charged, wait}. state -> {level_1, ..., level_n}. Floats travel as strings.
_SCRIPT = """
local mode, reserve, eps, part = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local levels, caps, amounts = {}, {}, {}
for i, key in ipairs(KEYS) do
  local cap = tonumber(ARGV[3 + 2 * i])
  amounts[i] = tonumber(ARGV[4 + 2 * i])
  local stored = redis.call('HMGET', key, 'level', 'updated', 'capacity')
  local level, updated = tonumber(stored[1]), tonumber(stored[2])
  if level == nil then
    level, updated = cap, now
  elseif tonumber(stored[3]) ~= cap then
    level = math.min(level, cap)
  end
  if now > updated then
    level = math.min(cap, level + (now - updated) * cap / 60.0)
  end
  levels[i], caps[i] = level, cap
end
local function save()
  for i, key in ipairs(KEYS) do
    redis.call('HSET', key, 'level', tostring(levels[i]), 'updated', tostring(now), 'capacity', caps[i])
    redis.call('EXPIRE', key, 120)
  end
end
local function wait_for(i, level)
  local missing = level - levels[i]
  if missing <= eps then return 0 end
  return missing / (caps[i] / 60.0)
end
if mode == 'state' then
  local out = {}
  for i = 1, #KEYS do out[i] = tostring(levels[i]) end
  return out
end
if mode == 'background' then
  local take, wait = amounts[1], 0
  for i = 1, #KEYS do
    local kept = caps[i] * reserve
    wait = math.max(wait, wait_for(i, kept + math.min(amounts[i], (caps[i] - kept) * part)))
    take = math.min(take, levels[i] - kept)
  end
  if wait > 0 or take <= eps then return {'0', tostring(math.max(wait, eps))} end
  for i = 1, #KEYS do levels[i] = levels[i] - take end
  save()
  return {tostring(take), '0'}
end
local worst, worst_wait = 0, 0
for i = 1, #KEYS do
  local used = math.max(0, math.ceil(caps[i] - levels[i] - eps))
  if amounts[i] > caps[i] then return {2, i, used} end
  local wait = wait_for(i, amounts[i])
  if wait > worst_wait then worst, worst_wait = i, wait end
end
if worst > 0 then
  return {1, worst, math.max(0, math.ceil(caps[worst] - levels[worst] - eps)), tostring(worst_wait)}
end
for i = 1, #KEYS do levels[i] = levels[i] - amounts[i] end
save()
return {0}
"""


@dataclass(frozen=True)
class LimiterUnavailable(Refusal):
    """A call refused because the shared limits could not be checked (`rate_limit_redis_failure = closed`)."""

    @property
    def message(self) -> str:
        return (
            "Rate limits cannot be checked right now (the shared rate-limit store is unreachable), and this server "
            "refuses calls it cannot count. Please try again in 1s."
        )


@dataclass(frozen=True)
class _Bucket:
    quota: Quota
    kind: Kind
    key: str
    capacity: int
    amount: float


class RedisRateLimiter:
    """`RateLimiter` on Redis, called from the event loop (redis.asyncio's client pools its connections)."""

    def __init__(
        self,
        url: str,
        prefix: str = "embeddings:rl:",
        on_failure: str = "open",
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        if on_failure not in FAILURE_MODES:
            raise ValueError(f"rate_limit_redis_failure must be one of {FAILURE_MODES}, got {on_failure!r}")
        if timeout_s <= 0:
            raise ValueError(f"the Redis timeout must be positive, got {timeout_s}")
        self.prefix = prefix
        self.on_failure = on_failure
        self.timeout_s = timeout_s
        self._client = redis.asyncio.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 0)
        )
        self._script = self._client.register_script(_SCRIPT)
        self._warned_at = -math.inf
        self._down_until = -math.inf

    def _buckets(self, quotas: Sequence[Quota], amounts: Mapping[Kind, float]) -> list[_Bucket]:
        return [
            _Bucket(quota, kind, f"{self.prefix}{quota.bucket_id}:{kind}", quota.limit(kind), amount)
            for kind, amount in amounts.items()
            for quota in quotas
            if quota.limit(kind) > 0
        ]

    async def _run(self, buckets: list[_Bucket], mode: str, reserve: float = 0.0) -> list | None:
        """The script's answer, or None when Redis failed, failed recently or did not answer within the deadline
        (after logging per the failure mode)."""
        if time.monotonic() < self._down_until:
            return None
        args: list[object] = [mode, reserve, _EPSILON, BACKGROUND_PART]
        for bucket in buckets:
            args += [bucket.capacity, bucket.amount]
        try:
            async with asyncio.timeout(self.timeout_s):
                return await self._script(keys=[b.key for b in buckets], args=args)
        except (redis.RedisError, OSError, TimeoutError) as exc:
            self._failed(exc)
            return None

    def _failed(self, exc: BaseException) -> None:
        self._down_until = time.monotonic() + RETRY_AFTER_FAILURE_S
        if time.monotonic() - self._warned_at >= WARN_EVERY_S:
            self._warned_at = time.monotonic()
            verdict = "allowing calls unchecked" if self.on_failure == "open" else "refusing calls"
            log.warning("rate limits unavailable (%s): %s", type(exc).__name__, verdict)

    async def acquire(self, quotas: Sequence[Quota], amounts: Mapping[Kind, int], now: float) -> Refusal | None:
        buckets = self._buckets(quotas, {kind: amount for kind, amount in amounts.items() if amount > 0})
        if not buckets:
            return None
        answer = await self._run(buckets, "acquire")
        if answer is None:
            if self.on_failure == "open":
                return None
            first = buckets[0]
            return LimiterUnavailable(first.quota, first.kind, first.capacity, 0, int(first.amount), CLOSED_RETRY_S)
        status = int(answer[0])
        if status == 0:
            return None
        bucket = buckets[int(answer[1]) - 1]
        requested = int(bucket.amount)
        if status == 2:
            return Refusal(bucket.quota, bucket.kind, bucket.capacity, int(answer[2]), requested, 0.0, too_large=True)
        return Refusal(bucket.quota, bucket.kind, bucket.capacity, int(answer[2]), requested, float(answer[3]))

    async def acquire_background(
        self, quotas: Sequence[Quota], amount: float, reserve: float, now: float
    ) -> tuple[float, float]:
        buckets = self._buckets(quotas, {"tokens": amount})
        if not buckets:
            return amount, 0.0
        answer = await self._run(buckets, "background", reserve)
        if answer is None:
            return (amount, 0.0) if self.on_failure == "open" else (0.0, CLOSED_RETRY_S)
        return float(answer[0]), float(answer[1])

    async def state(self, quotas: Sequence[Quota], now: float) -> list[LimitState]:
        buckets = self._buckets(quotas, dict.fromkeys(KINDS, 0))
        if not buckets:
            return []
        answer = await self._run(buckets, "state")
        if answer is None:
            return []
        states = []
        for kind in KINDS:
            levels = [(float(level), b) for level, b in zip(answer, buckets, strict=True) if b.kind == kind]
            if not levels:
                continue
            level, tightest = min(levels, key=lambda pair: pair[0])
            reset = max(0.0, tightest.capacity - level) / (tightest.capacity / 60.0)
            states.append(LimitState(kind, tightest.capacity, max(0, math.floor(level + _EPSILON)), reset))
        return states

    async def close(self) -> None:
        await self._client.aclose()
