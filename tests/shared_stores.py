"""PostgreSQL and Redis for tests of the shared (multi-replica) mode: a private schema or key prefix per use.

The machine runs PostgreSQL at 127.0.0.1:5432 (trust auth, database `test`) and Redis at 127.0.0.1:6379. Each test
gets its own schema (`t_<random>`, dropped afterwards) or Redis key prefix (deleted afterwards), so runs side by side
never see each other's rows or counters. Without a reachable server the tests that need one are skipped, saying why.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote

import pytest

PG_BASE = os.environ.get("EMBED_TEST_POSTGRES", "postgresql://root@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("EMBED_TEST_REDIS", "redis://127.0.0.1:6379/0")


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def require_postgres() -> None:
    if not _reachable("127.0.0.1", 5432):
        pytest.skip("PostgreSQL is not reachable at 127.0.0.1:5432")


def require_redis() -> None:
    if not _reachable("127.0.0.1", 6379):
        pytest.skip("Redis is not reachable at 127.0.0.1:6379")


def schema_url(schema: str) -> str:
    """The test database with `schema` first on the search path (libpq `options`)."""
    return f"{PG_BASE}?options={quote(f'-csearch_path={schema}')}"


@contextmanager
def temp_schema() -> Iterator[str]:
    """A fresh, empty schema; yields a URL that uses it. Dropped (with everything in it) on exit."""
    import psycopg

    require_postgres()
    schema = f"t_{secrets.token_hex(6)}"
    with psycopg.connect(PG_BASE, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield schema_url(schema)
    finally:
        with psycopg.connect(PG_BASE, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


@contextmanager
def temp_redis_prefix() -> Iterator[str]:
    """A key prefix no one else uses; its keys are deleted on exit."""
    import redis

    require_redis()
    prefix = f"test:{secrets.token_hex(6)}:"
    try:
        yield prefix
    finally:
        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(match=f"{prefix}*"))
        if keys:
            client.delete(*keys)
        client.close()
