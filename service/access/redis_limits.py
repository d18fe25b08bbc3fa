"""Rate limits shared by every replica: `LocalRateLimiter`'s token buckets kept in Redis, charged by one Lua script.

The script does what `LocalRateLimiter` does in one atomic step on the Redis server: refill every bucket that applies
(key and tenant), refuse if any lacks room (charging none), else charge all. So a per-key limit of N requests a
minute holds across all replicas combined. Time is Redis's own clock (`TIME`), not the callers': replicas on
different machines need no synchronized clocks, and the `now` the `RateLimiter` protocol passes is ignored.

A bucket is a hash {level, updated, capacity} under `<prefix><scope>:<name>:<kind>`, expiring after two idle
minutes (it is full again after one anyway). When Redis cannot be reached the limiter follows `on_failure`: "open"
allows the call and logs a warning (at most every 10 s), "closed" refuses it (429, with a message that says why).
redis is imported here only: the default deployment neither needs nor loads it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import redis

from service.access.limits import _EPSILON, KINDS, Kind, LimitState, Quota, Refusal

log = logging.getLogger(__name__)

FAILURE_MODES = ("open", "closed")
WARN_EVERY_S = 10.0
CLOSED_RETRY_S = 1.0
SOCKET_TIMEOUT_S = 0.5
# After a failure, Redis is not tried again for this long: calls are checked on the event loop, and waiting out a
# connect timeout on every call would stall the server.
RETRY_AFTER_FAILURE_S = 2.0

# KEYS: buckets. ARGV: mode ("acquire" | "background" | "state"), amount, reserve, epsilon, then one capacity per key.
# acquire -> {0} charged | {1, i, used, wait} refused by bucket i (1-based) | {2, i, used} too large for bucket i.
# background -> {wait} ("0" when charged). state -> {level_1, ..., level_n}. Floats travel as strings.
_SCRIPT = """
local mode, amount, reserve, eps = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local levels, caps = {}, {}
for i, key in ipairs(KEYS) do
  local cap = tonumber(ARGV[4 + i])
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
  local wait = 0
  for i = 1, #KEYS do
    local kept = caps[i] * reserve
    wait = math.max(wait, wait_for(i, kept + math.min(amount, caps[i] - kept)))
  end
  if wait > 0 then return {tostring(wait)} end
  for i = 1, #KEYS do levels[i] = levels[i] - amount end
  save()
  return {'0'}
end
local worst, worst_wait = 0, 0
for i = 1, #KEYS do
  local used = math.max(0, math.ceil(caps[i] - levels[i] - eps))
  if amount > caps[i] then return {2, i, used} end
  local wait = wait_for(i, amount)
  if wait > worst_wait then worst, worst_wait = i, wait end
end
if worst > 0 then
  return {1, worst, math.max(0, math.ceil(caps[worst] - levels[worst] - eps)), tostring(worst_wait)}
end
for i = 1, #KEYS do levels[i] = levels[i] - amount end
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


class RedisRateLimiter:
    """`RateLimiter` on Redis. Thread-safe (redis-py's client pools its connections)."""

    def __init__(self, url: str, prefix: str = "embeddings:rl:", on_failure: str = "open") -> None:
        if on_failure not in FAILURE_MODES:
            raise ValueError(f"rate_limit_redis_failure must be one of {FAILURE_MODES}, got {on_failure!r}")
        self.prefix = prefix
        self.on_failure = on_failure
        self._client = redis.Redis.from_url(
            url, socket_timeout=SOCKET_TIMEOUT_S, socket_connect_timeout=SOCKET_TIMEOUT_S
        )
        self._script = self._client.register_script(_SCRIPT)
        self._warned_at = -math.inf
        self._down_until = -math.inf

    def _buckets(self, quotas: Sequence[Quota], kind: Kind) -> list[tuple[Quota, str, int]]:
        return [
            (quota, f"{self.prefix}{quota.scope}:{quota.name}:{kind}", quota.limit(kind))
            for quota in quotas
            if quota.limit(kind) > 0
        ]

    def _run(self, buckets: list[tuple[Quota, str, int]], *args: object) -> list | None:
        """The script's answer, or None when Redis failed or failed recently (after logging per the failure mode)."""
        if time.monotonic() < self._down_until:
            return None
        try:
            return self._script(keys=[key for _, key, _ in buckets], args=[*args, *(cap for _, _, cap in buckets)])
        except redis.RedisError as exc:
            self._down_until = time.monotonic() + RETRY_AFTER_FAILURE_S
            if time.monotonic() - self._warned_at >= WARN_EVERY_S:
                self._warned_at = time.monotonic()
                verdict = "allowing calls unchecked" if self.on_failure == "open" else "refusing calls"
                log.warning("rate limits unavailable (%s): %s", type(exc).__name__, verdict)
            return None

    def acquire(self, quotas: Sequence[Quota], kind: Kind, amount: int, now: float) -> Refusal | None:
        buckets = self._buckets(quotas, kind)
        if not buckets:
            return None
        answer = self._run(buckets, "acquire", amount, 0, _EPSILON)
        if answer is None:
            if self.on_failure == "open":
                return None
            return LimiterUnavailable(buckets[0][0], kind, buckets[0][2], 0, amount, CLOSED_RETRY_S)
        status = int(answer[0])
        if status == 0:
            return None
        quota, _, capacity = buckets[int(answer[1]) - 1]
        if status == 2:
            return Refusal(quota, kind, capacity, int(answer[2]), amount, 0.0, too_large=True)
        return Refusal(quota, kind, capacity, int(answer[2]), amount, float(answer[3]))

    def acquire_background(self, quotas: Sequence[Quota], amount: int, reserve: float, now: float) -> float:
        buckets = self._buckets(quotas, "tokens")
        if not buckets:
            return 0.0
        answer = self._run(buckets, "background", amount, reserve, _EPSILON)
        if answer is None:
            return 0.0 if self.on_failure == "open" else CLOSED_RETRY_S
        return float(answer[0])

    def state(self, quotas: Sequence[Quota], now: float) -> list[LimitState]:
        states = []
        for kind in KINDS:
            buckets = self._buckets(quotas, kind)
            if not buckets:
                continue
            answer = self._run(buckets, "state", 0, 0, _EPSILON)
            if answer is None:
                continue
            levels = [float(level) for level in answer]
            tightest = min(range(len(buckets)), key=lambda i: levels[i])
            capacity, level = buckets[tightest][2], levels[tightest]
            reset = max(0.0, capacity - level) / (capacity / 60.0)
            states.append(LimitState(kind, capacity, max(0, math.floor(level + _EPSILON)), reset))
        return states

    def close(self) -> None:
        self._client.close()
