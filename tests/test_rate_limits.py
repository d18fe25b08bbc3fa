"""The rate limiter's contract, on both implementations: the process-local buckets and the shared ones in real Redis.

A call's requests and tokens are charged together or not at all; a refusal costs nothing; job chunks draw only on
the room above the reserve, in parts, never overdrawing a bucket. Redis keeps its own clock, so its cases only check
what holds at any moment; the local limiter's are driven through time by the test.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from service.access.limits import BACKGROUND_PART, LocalRateLimiter, Quota, RateLimiter
from tests.shared_stores import REDIS_URL, temp_redis_prefix


@pytest.fixture(params=["local", "redis"])
def limiter(request: pytest.FixtureRequest) -> Iterator[RateLimiter]:
    if request.param == "local":
        yield LocalRateLimiter()
        return
    from service.access.redis_limits import RedisRateLimiter

    with temp_redis_prefix() as prefix:
        yield RedisRateLimiter(REDIS_URL, prefix, timeout_s=5.0)


async def remaining(limiter: RateLimiter, quotas, now: float = 0.0) -> dict[str, int]:
    return {state.kind: state.remaining for state in await limiter.state(quotas, now)}


async def test_requests_and_tokens_are_charged_together_or_not_at_all(limiter):
    key, tenant = Quota("key", "k1", rpm=5, tpm=60), Quota("tenant", "t1", rpm=0, tpm=0)
    assert await limiter.acquire((key, tenant), {"requests": 1, "tokens": 50}, 0.0) is None
    refusal = await limiter.acquire((key, tenant), {"requests": 1, "tokens": 40}, 0.0)
    assert refusal is not None and refusal.kind == "tokens" and refusal.quota == key and not refusal.too_large
    assert "Limit 60, Used 50, Requested 40" in refusal.message and refusal.retry_after_s > 0
    left = await remaining(limiter, (key, tenant))
    assert left["requests"] == 4  # the refused call took no request
    assert 10 <= left["tokens"] <= 12  # nor tokens (Redis refills ~1 token a second meanwhile)
    assert await limiter.acquire((key, tenant), {"requests": 1, "tokens": 10}, 0.0) is None
    assert (await remaining(limiter, (key, tenant)))["requests"] == 3
    too_large = await limiter.acquire((key, tenant), {"requests": 1, "tokens": 61}, 0.0)
    assert too_large is not None and too_large.too_large and "Request too large" in too_large.message
    assert (await remaining(limiter, (key, tenant)))["requests"] == 3


async def test_requests_alone_and_the_tightest_bucket(limiter):
    key, tenant = Quota("key", "k1", rpm=0, tpm=100), Quota("tenant", "t1", rpm=2, tpm=150)
    other_key = Quota("key", "k2", rpm=0, tpm=100)
    assert await limiter.acquire((key, tenant), {"requests": 1}, 0.0) is None
    assert await limiter.acquire((other_key, tenant), {"requests": 1, "tokens": 80}, 0.0) is None
    refusal = await limiter.acquire((key, tenant), {"requests": 1, "tokens": 10}, 0.0)
    assert refusal is not None and refusal.kind == "requests" and refusal.quota == tenant  # 0 of 2 left
    assert await limiter.acquire((key, tenant), {"requests": 1000}, 0.0) is not None
    assert await limiter.acquire((key,), {"requests": 1000, "tokens": 100}, 0.0) is None  # rpm 0: unlimited


async def test_job_chunks_never_take_a_bucket_below_the_reserve(limiter):
    quota = Quota("key", "k1", rpm=0, tpm=6000)  # 100 tokens a second; the reserve (half) is 3000
    charged, wait = await limiter.acquire_background((quota,), 10_000, 0.5, 0.0)
    assert 3000 <= charged <= 3010 and wait == 0  # all the room above the reserve, not the whole chunk
    charged, wait = await limiter.acquire_background((quota,), 10_000 - charged, 0.5, 0.0)
    assert charged == 0 and wait > 0  # the reserve is for interactive calls
    assert await limiter.acquire((quota,), {"requests": 1, "tokens": 2900}, 0.0) is None  # and they find it


async def test_a_chunk_larger_than_the_room_above_the_reserve_is_charged_in_parts():
    """The local limiter, through time: a 306-token chunk on a 60-token-a-minute key (the reported debt: the key's
    next call waited 4 minutes) is charged in parts that never take the bucket below its reserve."""
    limiter, quota = LocalRateLimiter(), Quota("key", "k1", rpm=0, tpm=60)
    kept, part = 30, 30 * BACKGROUND_PART
    now, left, parts = 0.0, 306.0, []
    while left > 1e-6:
        charged, wait = await limiter.acquire_background((quota,), left, 0.5, now)
        level = (await limiter.state((quota,), now))[0].remaining
        assert level >= kept - 1  # never below the reserve (floor of a float level)
        if charged:
            parts.append(charged)
            left -= charged
        else:
            assert wait > 0
            now += wait
        assert now < 10 * 60
    assert abs(sum(parts) - 306) < 1e-6 and len(parts) > 1 and min(parts) >= min(part, parts[-1]) - 1e-6
    # Interactive calls meanwhile find the reserve at once.
    assert await limiter.acquire((quota,), {"requests": 1, "tokens": 29}, now) is None


async def test_each_end_user_of_a_key_has_a_bucket_of_its_own(limiter):
    """Per-user buckets: (key, user) pairs, charged with the key's (all or nothing), the tightest one reported."""
    key, other_key = Quota("key", "k1", rpm=100, tpm=0), Quota("key", "k2", rpm=100, tpm=0)

    def user(name: str, parent: str = "k1") -> Quota:
        return Quota("user", name, rpm=1, tpm=0, parent=parent)

    assert await limiter.acquire((key, user("alice")), {"requests": 1}, 0.0) is None
    refusal = await limiter.acquire((key, user("alice")), {"requests": 1}, 0.0)
    assert refusal is not None and refusal.quota == user("alice") and "on user 'alice' of key k1" in refusal.message
    state = {s.kind: s for s in await limiter.state((key, user("alice")), 0.0)}
    assert (state["requests"].limit, state["requests"].remaining) == (1, 0)  # the tightest: the user's
    assert await limiter.acquire((key, user("bob")), {"requests": 1}, 0.0) is None  # another user
    assert await limiter.acquire((other_key, user("alice", "k2")), {"requests": 1}, 0.0) is None  # another key's
    assert await limiter.acquire((key, user("a:b")), {"requests": 1}, 0.0) is None  # names are opaque
    assert 97 <= (await remaining(limiter, (key,)))["requests"] <= 98  # the refused call took nothing from the key


async def test_the_local_limiter_keeps_a_bounded_number_of_user_buckets():
    """A caller naming a new user on every call cannot grow the process: the least recently used user buckets go
    first (the key's and the tenant's are never dropped), and a bucket idle for a minute is full again: dropped."""
    limiter = LocalRateLimiter(max_user_buckets=4)
    key = Quota("key", "k1", rpm=0, tpm=1000)
    for n in range(100):
        user = Quota("user", f"u{n}", rpm=0, tpm=10, parent="k1")
        assert await limiter.acquire((key, user), {"tokens": 1}, 0.0) is None
        assert limiter.user_buckets <= 4
    assert (await remaining(limiter, (key,)))["tokens"] == 900  # every call counted on the key
    recent = Quota("user", "u99", rpm=0, tpm=10, parent="k1")
    assert (await remaining(limiter, (recent,)))["tokens"] == 9  # the most recent user's bucket was kept

    fresh = Quota("user", "new", rpm=0, tpm=10, parent="k1")
    assert await limiter.acquire((fresh,), {"tokens": 1}, 61.0) is None  # a minute on: the others are full again
    assert limiter.user_buckets == 1
