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


def open_vector_store(settings: Settings) -> SharedVectors | None:
    """The embedding cache's tier shared by replicas (Redis at redis_url), if `cache_shared`."""
    if settings.cache_scope not in CACHE_SCOPES:
        raise ValueError(f"cache_scope must be one of {CACHE_SCOPES}, got {settings.cache_scope!r}")
    if not settings.cache_shared:
        return None
    if not settings.redis_url:
        raise ValueError("cache_shared needs redis_url")
    from service.stores.redis_cache import RedisVectors

    return RedisVectors(
        settings.redis_url, settings.cache_redis_prefix, settings.cache_ttl_s, settings.cache_redis_timeout_s
    )
