"""Where the service keeps its state: one switch, `store_url`.

Empty (the default): SQLite in `<data_dir>/jobs.sqlite3` for jobs, keys and usage, rate limits in this process: one
replica, nothing else to run. `postgresql://...`: the shared mode for several replicas: jobs, keys and usage in that
PostgreSQL database, rate limits in Redis at `redis_url` (empty: per-replica limits). The drivers are imported only
in shared mode.
"""

from __future__ import annotations

from pathlib import Path

from service.access.limits import LocalRateLimiter, RateLimiter
from service.access.store import AccessStore
from service.batches.store import BatchStore
from service.config import Settings
from service.engine.cache import SharedVectors
from service.jobs.records import Announce
from service.stores.sqlite import DB_NAME, SqliteAccessStore, SqliteStore

SHARED_SCHEMES = ("postgresql://", "postgres://")


def shared(settings: Settings) -> bool:
    """True when `store_url` names a PostgreSQL database; ValueError for any other non-empty value."""
    if not settings.store_url:
        return False
    if settings.store_url.startswith(SHARED_SCHEMES):
        return True
    raise ValueError("store_url must be empty (SQLite in data_dir) or a postgresql:// URL")


def open_job_store(settings: Settings, announce: Announce | None = None) -> BatchStore:
    """Jobs and webhooks, with the Batch API's files and batches beside them."""
    if shared(settings):
        from service.stores.postgres import PostgresStore

        return PostgresStore(settings.store_url, retention_s=settings.results_retention_s, announce=announce)
    return SqliteStore(Path(settings.data_dir) / DB_NAME, retention_s=settings.results_retention_s, announce=announce)


def open_access_store(settings: Settings) -> AccessStore:
    if shared(settings):
        from service.stores.postgres import PostgresAccessStore

        return PostgresAccessStore(settings.store_url)
    return SqliteAccessStore.in_data_dir(settings.data_dir)


def open_rate_limiter(settings: Settings) -> RateLimiter:
    if settings.rate_limit_redis_failure not in ("open", "closed"):
        raise ValueError(f"rate_limit_redis_failure must be open or closed, got {settings.rate_limit_redis_failure!r}")
    if shared(settings) and settings.redis_url:
        from service.access.redis_limits import RedisRateLimiter

        return RedisRateLimiter(
            settings.redis_url,
            settings.redis_key_prefix,
            settings.rate_limit_redis_failure,
            settings.rate_limit_redis_timeout_s,
        )
    return LocalRateLimiter()


CACHE_SCOPES = ("tenant", "global")
# Bounds of the cache's settings that are not a matter of taste: Redis refuses an expiry beyond ~2.9e8 years (and then
# every write would fail, resting the shared tier after each one); a read deadline of 0 or less turns every read into a
# miss, and one over a minute is longer than any call waits for a cache.
MAX_CACHE_TTL_S = 100 * 365 * 86400
MAX_CACHE_REDIS_TIMEOUT_S = 60.0


def check_cache_settings(settings: Settings) -> None:
    """ValueError for a cache setting the server would misuse, whether or not the tier it concerns is on (a value
    refused only once `cache_shared` is turned on would surprise the operator who turns it on)."""
    if settings.cache_scope not in CACHE_SCOPES:
        raise ValueError(f"cache_scope must be one of {CACHE_SCOPES}, got {settings.cache_scope!r}")
    if settings.cache_bytes < 0:
        raise ValueError(f"cache_bytes must be 0 (off) or more, got {settings.cache_bytes}")
    if not 1 <= settings.cache_ttl_s <= MAX_CACHE_TTL_S:
        raise ValueError(f"cache_ttl_s must be between 1 and {MAX_CACHE_TTL_S} seconds, got {settings.cache_ttl_s}")
    if not 0 < settings.cache_redis_timeout_s <= MAX_CACHE_REDIS_TIMEOUT_S:
        raise ValueError(
            f"cache_redis_timeout_s must be over 0 and at most {MAX_CACHE_REDIS_TIMEOUT_S:g} seconds, "
            f"got {settings.cache_redis_timeout_s}"
        )


def open_vector_store(settings: Settings) -> SharedVectors | None:
    """The embedding cache's tier shared by replicas (Redis at cache_redis_url, else redis_url), if `cache_shared`.
    A Redis of its own lets it evict (maxmemory, allkeys-lru) without touching the rate limiter's buckets."""
    check_cache_settings(settings)
    if not settings.cache_shared:
        return None
    url = settings.cache_redis_url or settings.redis_url
    if not url:
        raise ValueError("cache_shared needs cache_redis_url or redis_url")
    from service.stores.redis_cache import RedisVectors

    return RedisVectors(url, settings.cache_redis_prefix, settings.cache_ttl_s, settings.cache_redis_timeout_s)
