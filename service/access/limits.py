"""Rate limits: requests and tokens per minute, per key, per tenant and per end user of a key, as token buckets.

A bucket holds up to one minute's allowance and refills continuously (limit / 60 per second), so a client may
burst up to its limit and then runs at the limit's pace. A call is checked against every bucket that applies (its
key's and its tenant's, for requests and for tokens) and charged to all of them only if all allow it: a refused call
costs nothing. Async job chunks draw from the same token buckets, but only from the room above a reserve, in parts
when a chunk is larger than that room, so interactive calls always find the reserve and a bucket is never overdrawn.

A per-user bucket belongs to a (key, user) pair: OpenAI's `user` names an end user inside a key, and any caller can
send a million distinct names, so the local limiter keeps at most `max_user_buckets` of them (least recently used
first out) and drops those idle long enough to be full again (a bucket refills completely within a minute, so
dropping it changes nothing); Redis expires them after two idle minutes.

`RateLimiter` is the interface (async: a shared limiter waits on the network); `LocalRateLimiter` keeps buckets in
this process (one replica), `service.access.redis_limits.RedisRateLimiter` in Redis (several).
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

Kind = Literal["requests", "tokens"]
KINDS: tuple[Kind, ...] = ("requests", "tokens")
_ABBREVIATION = {"requests": "RPM", "tokens": "TPM"}
# Floating-point slack: a bucket refilled for exactly the advertised wait must admit the retry.
_EPSILON = 1e-6
# A bucket idle this long is full again (it holds one minute's allowance): forgetting it changes nothing.
REFILL_S = 60.0
# Per-user buckets kept in one process at most (least recently used dropped first).
MAX_USER_BUCKETS = 100_000


@dataclass(frozen=True)
class Quota:
    """One party's limits per minute; 0 means unlimited. A "user" quota is an end user's (`name`) of one key
    (`parent`, the key id)."""

    scope: Literal["key", "tenant", "user"]
    name: str
    rpm: int
    tpm: int
    parent: str = ""

    def limit(self, kind: Kind) -> int:
        return self.rpm if kind == "requests" else self.tpm

    @property
    def label(self) -> str:
        if self.scope == "user":
            return f"user {self.name!r} of key {self.parent}"
        return f"{self.scope} {self.name}"

    @property
    def bucket_id(self) -> str:
        """The bucket's name, unique across scopes ("key:<id>", "tenant:<name>", "user:<key id>:<user>")."""
        if self.scope == "user":
            return f"user:{self.parent}:{self.name}"
        return f"{self.scope}:{self.name}"


@dataclass(frozen=True)
class Refusal:
    """Why a call may not run now: the limit that stopped it and how long until it would pass."""

    quota: Quota
    kind: Kind
    limit: int
    used: int
    requested: int
    retry_after_s: float
    # The request alone exceeds the limit: waiting will never help.
    too_large: bool = False

    @property
    def message(self) -> str:
        what = f"{self.kind} per min ({_ABBREVIATION[self.kind]})"
        if self.too_large:
            return (
                f"Request too large for {what} on {self.quota.label}: Limit {self.limit}, Requested {self.requested}. "
                "Split the request into smaller ones, or ask for a higher limit."
            )
        return (
            f"Rate limit reached for {what} on {self.quota.label}: Limit {self.limit}, Used {self.used}, "
            f"Requested {self.requested}. Please try again in {format_duration(self.retry_after_s)}."
        )


@dataclass(frozen=True)
class LimitState:
    """What the `x-ratelimit-*` headers report for one kind: the tighter of the applicable buckets."""

    kind: Kind
    limit: int
    remaining: int
    reset_s: float


class RateLimiter(Protocol):
    async def acquire(self, quotas: Sequence[Quota], amounts: Mapping[Kind, int], now: float) -> Refusal | None:
        """Charge each kind's amount (requests, tokens) to every quota's bucket of that kind, all or nothing: when
        any bucket lacks room none is charged, and the refusal names the one that waits longest."""
        ...

    async def acquire_background(
        self, quotas: Sequence[Quota], amount: float, reserve: float, now: float
    ) -> tuple[float, float]:
        """Charge up to `amount` job tokens from the room above every token bucket's `reserve` (a fraction of its
        capacity): (tokens charged, seconds to wait before asking for the rest). Never takes a bucket below its
        reserve; takes a part once at least `BACKGROUND_PART` of the room above the reserve is free (or all that
        is asked), so a chunk larger than that room is charged in parts and still progresses."""
        ...

    async def state(self, quotas: Sequence[Quota], now: float) -> list[LimitState]: ...

    async def close(self) -> None: ...


# The smallest part of a job chunk's tokens worth charging: a quarter of the room above the reserve.
BACKGROUND_PART = 0.25


@dataclass
class _Bucket:
    capacity: int
    level: float
    updated: float

    @property
    def rate(self) -> float:
        return self.capacity / 60.0

    def refill(self, now: float) -> None:
        if now > self.updated:
            self.level = min(float(self.capacity), self.level + (now - self.updated) * self.rate)
            self.updated = now

    def wait_for(self, level: float) -> float:
        missing = level - self.level
        return 0.0 if missing <= _EPSILON else missing / self.rate


class LocalRateLimiter:
    """`RateLimiter` in this process's memory. Thread-safe. Key and tenant buckets are as many as keys and tenants;
    per-user buckets are bounded (`max_user_buckets`, least recently used first out, idle ones dropped)."""

    def __init__(self, max_user_buckets: int = MAX_USER_BUCKETS) -> None:
        self._buckets: dict[tuple[str, Kind], _Bucket] = {}
        self._user_buckets: OrderedDict[tuple[str, Kind], _Bucket] = OrderedDict()
        self._max_user_buckets = max(1, max_user_buckets)
        self._lock = threading.Lock()

    @property
    def user_buckets(self) -> int:
        """How many per-user buckets are kept now."""
        return len(self._user_buckets)

    def _bucket(self, quota: Quota, kind: Kind, now: float) -> _Bucket | None:
        limit = quota.limit(kind)
        if limit <= 0:
            return None
        key = (quota.bucket_id, kind)
        buckets = self._user_buckets if quota.scope == "user" else self._buckets
        bucket = buckets.get(key)
        if bucket is None or bucket.capacity != limit:
            level = float(limit) if bucket is None else min(bucket.level, float(limit))
            bucket = buckets[key] = _Bucket(limit, level, now)
        bucket.refill(now)
        if buckets is self._user_buckets:
            self._user_buckets.move_to_end(key)
            self._forget_users(now)
        return bucket

    def _forget_users(self, now: float) -> None:
        """Drop the least recently used user buckets beyond the bound, and those idle long enough to be full."""
        while len(self._user_buckets) > self._max_user_buckets:
            self._user_buckets.popitem(last=False)
        while self._user_buckets:
            oldest = next(iter(self._user_buckets.values()))
            if now - oldest.updated < REFILL_S:
                break
            self._user_buckets.popitem(last=False)

    async def acquire(self, quotas: Sequence[Quota], amounts: Mapping[Kind, int], now: float) -> Refusal | None:
        with self._lock:
            charges: list[tuple[_Bucket, int]] = []
            refusals: list[Refusal] = []
            for kind, amount in amounts.items():
                if amount <= 0:
                    continue
                for quota in quotas:
                    bucket = self._bucket(quota, kind, now)
                    if bucket is None:
                        continue
                    used = max(0, math.ceil(bucket.capacity - bucket.level - _EPSILON))
                    if amount > bucket.capacity:
                        return Refusal(quota, kind, bucket.capacity, used, amount, 0.0, too_large=True)
                    wait = bucket.wait_for(amount)
                    if wait > 0:
                        refusals.append(Refusal(quota, kind, bucket.capacity, used, amount, wait))
                    charges.append((bucket, amount))
            if refusals:
                return max(refusals, key=lambda r: r.retry_after_s)
            for bucket, amount in charges:
                bucket.level -= amount
            return None

    async def acquire_background(
        self, quotas: Sequence[Quota], amount: float, reserve: float, now: float
    ) -> tuple[float, float]:
        with self._lock:
            buckets = [b for q in quotas if (b := self._bucket(q, "tokens", now)) is not None]
            if not buckets:
                return amount, 0.0
            take, wait = amount, 0.0
            for bucket in buckets:
                kept = bucket.capacity * reserve
                wanted = min(amount, (bucket.capacity - kept) * BACKGROUND_PART)
                wait = max(wait, bucket.wait_for(kept + wanted))
                take = min(take, bucket.level - kept)
            if wait > 0 or take <= _EPSILON:
                return 0.0, max(wait, _EPSILON)
            for bucket in buckets:
                bucket.level -= take
            return take, 0.0

    async def state(self, quotas: Sequence[Quota], now: float) -> list[LimitState]:
        with self._lock:
            states = []
            for kind in KINDS:
                buckets = [b for q in quotas if (b := self._bucket(q, kind, now)) is not None]
                if not buckets:
                    continue
                tightest = min(buckets, key=lambda b: b.level)
                remaining = max(0, math.floor(tightest.level + _EPSILON))
                states.append(LimitState(kind, tightest.capacity, remaining, tightest.wait_for(tightest.capacity)))
            return states

    async def close(self) -> None:
        """Nothing to release."""


def format_duration(seconds: float) -> str:
    """OpenAI's (Go's) duration format: `12ms`, `1s`, `1.5s`, `6m0s`, `1h0m0s`."""
    millis = max(0, math.ceil(seconds * 1000 - _EPSILON))
    if millis == 0:
        return "0s"
    if millis < 1000:
        return f"{millis}ms"
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def rate_headers(states: Sequence[LimitState]) -> dict[str, str]:
    """`x-ratelimit-{limit,remaining,reset}-{requests,tokens}` for the limits that apply."""
    headers = {}
    for state in states:
        headers[f"x-ratelimit-limit-{state.kind}"] = str(state.limit)
        headers[f"x-ratelimit-remaining-{state.kind}"] = str(state.remaining)
        headers[f"x-ratelimit-reset-{state.kind}"] = format_duration(state.reset_s)
    return headers


def retry_headers(wait_s: float) -> dict[str, str]:
    """`retry-after` (whole seconds, rounded up) and `retry-after-ms`, which the openai SDKs obey."""
    return {
        "retry-after": str(max(1, math.ceil(wait_s - _EPSILON))),
        "retry-after-ms": str(max(1, math.ceil(wait_s * 1000 - _EPSILON))),
    }
