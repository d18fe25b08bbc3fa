"""The access store's billing data on real SQLite files and on real PostgreSQL: per-user limits of keys and tenants,
usage rows by end user and by the price they were used at, reports with exact costs, and the upgrade of a store
written before any of it (schema 5)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from service.access.records import NewKey, TenantRecord, UsageDelta, UsageQuery
from service.access.store import AccessStore
from service.stores import schema
from tests.shared_stores import temp_schema
from tests.test_job_store import Backend, _postgres_query, undo_billing

T0 = 1_700_000_000


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        from service.stores.sqlite import SqliteAccessStore

        path = tmp_path / "jobs.sqlite3"

        def query(sql: str, params: tuple = ()) -> list[tuple]:
            with sqlite3.connect(path) as raw:
                return [tuple(row) for row in raw.execute(sql, params).fetchall()]

        yield Backend("sqlite", lambda: SqliteAccessStore(path), query)
        return
    from service.stores.postgres import PostgresAccessStore

    with temp_schema() as url:
        yield Backend(
            "postgres", lambda: PostgresAccessStore(url), lambda sql, params=(): _postgres_query(url, sql, params)
        )


@pytest.fixture
def store(backend: Backend) -> Iterator[AccessStore]:
    opened = backend.open()
    yield opened
    opened.close()


def test_keys_and_tenants_keep_their_per_user_limits(store):
    record, _ = store.create_key(NewKey("acme", "ci", user_rpm=5, user_tpm=0), T0)
    plain, _ = store.create_key(NewKey("acme", "plain"), T0)
    assert (record.user_rpm, record.user_tpm) == (5, 0) and (plain.user_rpm, plain.user_tpm) == (None, None)
    assert store.get_key(record.id) == record and store.snapshot().keys[record.id] == record
    tenant = store.set_tenant(TenantRecord("acme", None, None, user_rpm=7), T0)
    assert (tenant.user_rpm, tenant.user_tpm) == (7, None)
    assert store.snapshot().tenants["acme"] == tenant
    assert store.set_tenant(TenantRecord("acme", 1, 2), T0).user_rpm is None  # a tenant's limits are set as a whole
    assert store.list_tenants()[0].user_rpm is None


def test_usage_by_user_and_price_with_exact_costs(store):
    day, key = "2026-01-01", "k1"
    store.add_usage(
        [
            UsageDelta(day, "acme", key, "m", requests=1, tokens=1000, user="alice", price="0.02"),
            UsageDelta(day, "acme", key, "m", requests=2, tokens=3000, user="bob", price="0.02"),
            # The price changed during the day: a row of its own, costed at its own price.
            UsageDelta(day, "acme", key, "m", requests=1, tokens=500, job_tokens=500, user="alice", price="0.1"),
            UsageDelta(day, "acme", key, "m", job_requests=1, user="alice", price="0.1"),
            UsageDelta(day, "acme", key, "free", requests=1, tokens=70),
        ]
    )
    store.add_usage([UsageDelta(day, "acme", key, "m", requests=1, tokens=1000, user="alice", price="0.02")])
    summed = store.usage(UsageQuery("acme"))
    assert [(r.model, r.user, r.requests, r.tokens, r.job_requests, r.job_tokens) for r in summed] == [
        ("free", "", 1, 70, 0, 0),
        ("m", "", 5, 5500, 1, 500),
    ]
    # (2000 + 3000) tokens at 0.02 and (500 + 500) at 0.1, per million.
    assert summed[1].cost == Decimal("0.0001") + Decimal("0.0001") and summed[0].cost == 0
    grouped = {(r.model, r.user): r for r in store.usage(UsageQuery("acme", since=day, until=day, group_by_user=True))}
    assert set(grouped) == {("free", ""), ("m", "alice"), ("m", "bob")}
    assert (grouped["m", "alice"].tokens, grouped["m", "alice"].job_requests) == (2500, 1)
    assert (
        grouped["m", "alice"].cost == Decimal(2000) * Decimal("0.02") / 10**6 + Decimal(1000) * Decimal("0.1") / 10**6
    )
    assert grouped["m", "bob"].cost == Decimal("0.00006")
    assert store.usage(UsageQuery("acme", since="2026-01-02")) == []


def test_a_store_of_schema_5_keeps_its_keys_and_usage(backend):
    """Usage rows and keys written before migration 6 stay: unpriced (cost 0), under no user, without per-user
    limits."""
    with_store = backend.open()
    key, _ = with_store.create_key(NewKey("acme", "old", rpm=3), T0)
    with_store.close()
    table = "schema_version" if backend.name == "sqlite" else "schema_migrations"
    for statement in undo_billing(backend):
        backend.query(statement, ())
    if backend.name == "sqlite":  # the usage table as SQLite's access store made it before versioning
        backend.query(schema.render(schema.ACCESS_TABLES[-1], schema.SQLITE), ())
    backend.query(f"DELETE FROM {table} WHERE version > 5", ())
    backend.query(
        "INSERT INTO access_usage (day, tenant, key_id, model, requests, tokens, job_requests, job_tokens)"
        " VALUES ('2025-12-31', 'acme', ?, 'm', 4, 40, 1, 10)",
        (key.id,),
    )
    upgraded = backend.open()
    try:
        assert [
            (r.requests, r.tokens, r.job_tokens, r.user, r.cost) for r in upgraded.usage(UsageQuery(group_by_user=True))
        ] == [(4, 40, 10, "", 0)]
        assert upgraded.get_key(key.id) == key and key.user_rpm is None
        upgraded.add_usage([UsageDelta("2025-12-31", "acme", key.id, "m", tokens=10**6, user="u", price="1")])
        assert [(r.tokens, r.cost) for r in upgraded.usage(UsageQuery())] == [(40 + 10**6, Decimal(1))]
    finally:
        upgraded.close()
    assert backend.query(f"SELECT MAX(version) FROM {table}", ()) == [(schema.SCHEMA_VERSION,)]
