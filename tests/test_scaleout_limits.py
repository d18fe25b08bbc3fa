"""Shared state for several replicas, below the server: the PostgreSQL access store and the Redis rate limiter.

Two instances of each stand for two replicas: what one writes or charges, the other sees. Real PostgreSQL and Redis
(a private schema and key prefix per test)."""

from __future__ import annotations

import pytest

from service.access.limits import LocalRateLimiter, Quota
from service.access.records import NewKey, TenantRecord, UsageDelta, UsageQuery
from tests.shared_stores import REDIS_URL, temp_redis_prefix, temp_schema

T0 = 1_700_000_000


@pytest.fixture
def pg_url():
    with temp_schema() as url:
        yield url


@pytest.fixture
def prefix():
    with temp_redis_prefix() as value:
        yield value


def test_keys_and_usage_written_by_one_replica_are_seen_by_the_other(pg_url):
    from service.stores.postgres import PostgresAccessStore

    first, second = PostgresAccessStore(pg_url), PostgresAccessStore(pg_url)  # two replicas, one migration
    try:
        record, token = first.create_key(NewKey("acme", "ci", rpm=5), T0)
        assert token.startswith("sk-") and token not in record.secret_hash
        snapshot = second.snapshot()
        assert snapshot.active_keys == 1 and snapshot.keys[record.id] == record
        second.set_tenant(TenantRecord("acme", 10, None), T0)
        assert first.list_tenants()[0].rpm == 10
        assert [k.id for k in second.list_keys("acme")] == [record.id] and second.list_keys("other") == []
        delta = UsageDelta("2026-01-01", "acme", record.id, "m", requests=1, tokens=7)
        first.add_usage([delta])
        second.add_usage([delta, UsageDelta("2026-01-02", "acme", record.id, "m", job_tokens=3)])
        rows = first.usage(UsageQuery(tenant="acme", since="2026-01-01", until="2026-01-01"))
        assert [(r.requests, r.tokens) for r in rows] == [(2, 14)]
        assert len(first.usage(UsageQuery())) == 2
        rotated = second.rotate_key(record.id, T0 + 1)
        assert rotated is not None and first.get_key(record.id).secret_hash == rotated[0].secret_hash
        assert first.revoke_key(record.id, T0 + 2).revoked_at == T0 + 2
        assert second.active_key_count() == 0 and second.rotate_key(record.id, T0 + 3) is None
        assert second.snapshot().keys_required  # held a key once: never open again
    finally:
        first.close()
        second.close()


def _limiters(prefix: str):
    from service.access.redis_limits import RedisRateLimiter

    return RedisRateLimiter(REDIS_URL, prefix, timeout_s=5.0), RedisRateLimiter(REDIS_URL, prefix, timeout_s=5.0)


async def test_a_request_limit_holds_across_two_replicas(prefix):
    first, second = _limiters(prefix)
    quotas = (Quota("key", "k1", 4, 0), Quota("tenant", "t1", 0, 0))
    granted = [await limiter.acquire(quotas, {"requests": 1}, 0.0) is None for limiter in (first, second) * 3]
    assert granted == [True, True, True, True, False, False]
    refusal = await second.acquire(quotas, {"requests": 1}, 0.0)
    assert refusal is not None and refusal.quota.name == "k1" and refusal.limit == 4 and refusal.used == 4
    assert 0 < refusal.retry_after_s <= 15.0 + 1e-3  # one request refills in 60 / 4 seconds
    assert "Rate limit reached for requests per min (RPM) on key k1" in refusal.message
    state = {s.kind: s for s in await first.state(quotas, 0.0)}
    assert (state["requests"].limit, state["requests"].remaining) == (4, 0)


async def test_a_refused_charge_costs_nothing_and_the_tightest_bucket_answers(prefix):
    first, second = _limiters(prefix)
    key, tenant = Quota("key", "k1", 0, 100), Quota("tenant", "t1", 0, 150)
    other_key = Quota("key", "k2", 0, 100)
    assert await first.acquire((key, tenant), {"tokens": 80}, 0.0) is None
    refusal = await second.acquire((other_key, tenant), {"tokens": 80}, 0.0)  # the tenant's bucket has 70 left
    assert refusal is not None and refusal.quota == tenant and refusal.used == 80
    assert await second.acquire((other_key, tenant), {"tokens": 60}, 0.0) is None  # k2 was not charged
    too_large = await first.acquire((key, tenant), {"tokens": 101}, 0.0)
    assert too_large is not None and too_large.too_large and too_large.quota == key
    assert "Request too large" in too_large.message


async def test_background_charges_stay_above_the_reserve(prefix):
    first, second = _limiters(prefix)
    quotas = (Quota("tenant", "t1", 0, 1000),)
    assert await first.acquire_background(quotas, 400, 0.5, 0.0) == (400.0, 0.0)
    charged, wait = await second.acquire_background(quotas, 400, 0.5, 0.0)  # only ~100 above the 500 reserve
    assert charged <= 101 and (charged > 0 or wait > 0)
    assert await first.acquire(quotas, {"tokens": 490}, 0.0) is None  # interactive calls still find the reserve


async def test_an_unreachable_redis_fails_open_or_closed_as_configured(caplog):
    from service.access.redis_limits import RedisRateLimiter

    quotas = (Quota("key", "k1", 1, 10),)
    unreachable = "redis://127.0.0.1:1/0"
    open_limiter = RedisRateLimiter(unreachable, "x:", "open")
    assert [await open_limiter.acquire(quotas, {"requests": 1}, 0.0) for _ in range(3)] == [None, None, None]
    assert "rate limits unavailable" in caplog.text and "allowing calls unchecked" in caplog.text
    closed = RedisRateLimiter(unreachable, "x:", "closed")
    refusal = await closed.acquire(quotas, {"requests": 1}, 0.0)
    assert refusal is not None and not refusal.too_large and refusal.retry_after_s == 1.0
    assert "rate-limit store is unreachable" in refusal.message
    assert (await closed.acquire_background(quotas, 1, 0.5, 0.0))[0] == 0
    with pytest.raises(ValueError, match="open"):
        RedisRateLimiter(unreachable, "x:", "maybe")


def test_the_local_limiter_is_what_the_default_mode_uses():
    from service.config import Settings
    from service.stores import open_rate_limiter

    assert isinstance(open_rate_limiter(Settings()), LocalRateLimiter)
    with pytest.raises(ValueError, match="postgresql"):
        open_rate_limiter(Settings(store_url="mysql://x"))


def test_an_unreachable_postgresql_is_a_clear_start_up_error_without_the_password() -> None:
    import subprocess
    import sys

    from tests.serving import ROOT

    command = [sys.executable, "-m", "service", "--store-url", "postgresql://root:sekrit@127.0.0.1:1/test"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "cannot connect to the PostgreSQL store" in done.stderr and "sekrit" not in done.stdout + done.stderr


async def test_per_user_buckets_are_shared_and_expire_when_idle(prefix):
    """An end user's bucket holds across replicas, and Redis forgets it two idle minutes after its last use however
    many distinct users callers name."""
    import redis

    first, second = _limiters(prefix)
    quotas = (Quota("key", "k1", 0, 0), Quota("user", "alice", 2, 0, parent="k1"))
    assert [await limiter.acquire(quotas, {"requests": 1}, 0.0) is None for limiter in (first, second, first)] == [
        True,
        True,
        False,
    ]
    client = redis.Redis.from_url(REDIS_URL)
    try:
        assert 0 < client.ttl(f"{prefix}user:k1:alice:requests") <= 120
    finally:
        client.close()
