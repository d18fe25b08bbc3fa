"""The async-job store on real SQLite files and on real PostgreSQL: jobs, chunk leases, results, retention, webhooks
and deliveries.

Every contract test runs against both implementations (`backend`): the PostgreSQL store (several replicas on one
database) must behave exactly as the SQLite one. Time is whatever the test says it is (`now`); durability is checked
by reopening the store, including after a process that was killed with SIGKILL halfway through a job (SQLite).
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.jobs.records import (
    Chunk,
    ChunkVectors,
    InvalidCursor,
    Job,
    NewAttempt,
    NewJob,
    NotFound,
    ResultsNotReady,
    ResultsRemoved,
    TooManyWebhooks,
)
from service.jobs.store import JobStore
from service.stores import schema
from service.stores.schema import SCHEMA_VERSION as SQLITE_SCHEMA_VERSION
from service.stores.sqlite import SqliteJobStore
from tests.shared_stores import temp_schema

REPO_ROOT = Path(__file__).resolve().parent.parent
T0 = 1_700_000_000
RETENTION_S = 3600
DIMS = 4
LEASE_S = 60


@dataclass
class Backend:
    """One database, SQLite file or PostgreSQL schema: `open` gives a store on it (another replica when called
    again), `query` reads it with the driver, beside the store."""

    name: str
    open: Callable[..., SqliteJobStore]
    query: Callable[[str, tuple], list[tuple]]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "jobs.db"


def _sqlite_query(db: Path, sql: str, params: tuple) -> list[tuple]:
    with sqlite3.connect(db) as raw:
        return [tuple(row) for row in raw.execute(sql, params).fetchall()]


def _postgres_query(url: str, sql: str, params: tuple) -> list[tuple]:
    import psycopg

    from service.stores.postgres import translate

    with psycopg.connect(url, autocommit=True) as raw:
        cursor = raw.execute(translate(sql), params)
        return [tuple(row) for row in cursor.fetchall()] if cursor.description else []


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, db: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        yield Backend(
            "sqlite",
            lambda **kwargs: SqliteJobStore(db, **{"retention_s": RETENTION_S, **kwargs}),
            lambda sql, params=(): _sqlite_query(db, sql, params),
        )
        return
    from service.stores.postgres import PostgresJobStore

    with temp_schema() as url:
        opened: list[SqliteJobStore] = []

        def open_store(**kwargs: Any) -> SqliteJobStore:
            opened.append(PostgresJobStore(url, **{"retention_s": RETENTION_S, **kwargs}))
            return opened[-1]

        yield Backend("postgres", open_store, lambda sql, params=(): _postgres_query(url, sql, params))
        for each in opened:
            each.close()


@pytest.fixture
def store(backend: Backend):
    with backend.open() as opened:
        yield opened


def texts(n: int, tag: str = "t") -> list[str]:
    return [f"{tag} {i}" for i in range(n)]


def make_job(store: SqliteJobStore, n: int = 10, chunk_size: int = 3, tenant: str = "default", **kwargs) -> Job:
    now = kwargs.pop("now", T0)
    kwargs.setdefault("webhook_id", None)
    return store.create_job(
        NewJob(tenant, "mini", {"normalize": True}, {"k": "v"}, inputs=texts(n), chunk_size=chunk_size, **kwargs), now
    )


def vectors_for(chunk: Chunk, dims: int = DIMS) -> np.ndarray:
    """Row i holds input (start + i)'s index plus column / 10: any misplaced row shows."""
    rows = np.arange(chunk.start, chunk.start + chunk.count, dtype=np.float32)[:, None]
    return rows + np.arange(dims, dtype=np.float32)[None, :] / 10


def complete(store: SqliteJobStore, chunk: Chunk, owner: str = "w1", now: int = T0) -> Job:
    vectors = vectors_for(chunk)
    tokens = [chunk.start + i + 1 for i in range(chunk.count)]
    return store.complete_chunk(chunk.job_id, chunk.idx, owner, ChunkVectors(vectors.tobytes(), DIMS, tokens), now)


def run_all(store: SqliteJobStore, now: int = T0) -> Job:
    job = None
    while (chunk := store.claim_chunk("w1", now, LEASE_S)) is not None:
        job = complete(store, chunk, now=now)
    assert job is not None
    return job


def schema_versions(backend: Backend) -> list[tuple]:
    table = "schema_version" if backend.name == "sqlite" else "schema_migrations"
    return backend.query(f"SELECT version FROM {table} ORDER BY version", ())


def every_version(backend: Backend) -> list[tuple]:
    if backend.name == "sqlite":
        return [(v,) for v in range(1, SQLITE_SCHEMA_VERSION + 1)]
    from service.stores.postgres import SCHEMA_VERSION

    return [(v,) for v in range(1, SCHEMA_VERSION + 1)]


# --- jobs ---------------------------------------------------------------------------------------------------------


def test_store_implements_the_interface(store):
    assert {name for name in dir(JobStore) if not name.startswith("_")} <= set(dir(store))


def test_create_and_get(store):
    job = make_job(store, n=10, chunk_size=3)
    assert job.id.startswith("job_") and len(job.id) == 4 + 24
    assert (job.status, job.total_inputs, job.completed_inputs, job.chunk_count) == ("queued", 10, 0, 4)
    assert (job.options, job.metadata, job.created_at, job.started_at, job.expires_at) == (
        {"normalize": True},
        {"k": "v"},
        T0,
        None,
        None,
    )
    assert store.get_job("default", job.id) == job
    assert store.get_job("other", job.id) is None
    assert store.get_job("default", "job_missing") is None
    with pytest.raises(ValueError):
        store.create_job(NewJob("default", "mini", {}, {}, None, [], 3), T0)


def test_list_is_newest_first_with_a_cursor_and_per_tenant(store):
    ids = [make_job(store, n=1).id for _ in range(5)]  # all in the same second: creation order still holds
    make_job(store, n=1, tenant="other")
    first = store.list_jobs("default", limit=2)
    assert [job.id for job in first.items] == ids[::-1][:2] and first.has_more
    second = store.list_jobs("default", limit=2, after=first.last_id)
    assert [job.id for job in second.items] == ids[::-1][2:4] and second.has_more
    third = store.list_jobs("default", limit=2, after=second.last_id)
    assert [job.id for job in third.items] == ids[:1] and not third.has_more
    assert [job.id for job in store.list_jobs("default", limit=10).items] == ids[::-1]
    assert len(store.list_jobs("other").items) == 1
    with pytest.raises(InvalidCursor):
        store.list_jobs("other", after=ids[0])


def test_create_100k_inputs_in_one_transaction(store):
    inputs = [f"input number {i}, a short sentence to embed" for i in range(100_000)]
    started = time.perf_counter()
    job = store.create_job(NewJob("default", "mini", {}, {}, None, inputs, 256), T0)
    elapsed = time.perf_counter() - started
    print(f"\ncreate_job: 100,000 inputs in {elapsed * 1000:.0f} ms ({job.chunk_count} chunks)")
    assert elapsed < 20
    assert store.get_job("default", job.id).total_inputs == 100_000
    last = None
    while (chunk := store.claim_chunk("w1", T0, LEASE_S)) is not None:
        last = chunk
    assert last is not None and last.start == 99_840 and last.count == 160 and last.inputs[-1] == inputs[-1]


# --- claims and leases --------------------------------------------------------------------------------------------


def test_claims_lease_chunks_in_order_and_start_the_job(store):
    job = make_job(store, n=10, chunk_size=3)
    first = store.claim_chunk("w1", T0 + 5, LEASE_S)
    assert (first.job_id, first.idx, first.start, first.count, first.inputs) == (job.id, 0, 0, 3, texts(3))
    assert (first.status, first.lease_owner, first.lease_expires_at, first.attempts) == ("leased", "w1", T0 + 65, 1)
    assert (first.model, first.options, first.tenant) == ("mini", {"normalize": True}, "default")
    started = store.get_job("default", job.id)
    assert (started.status, started.started_at) == ("in_progress", T0 + 5)
    claimed = [store.claim_chunk("w1", T0 + 6, LEASE_S) for _ in range(3)]
    assert [chunk.idx for chunk in claimed] == [1, 2, 3] and claimed[-1].count == 1
    assert store.claim_chunk("w1", T0 + 6, LEASE_S) is None
    assert store.get_job("default", job.id).started_at == T0 + 5


def test_expired_lease_is_reclaimed_by_another_owner(store):
    make_job(store, n=3, chunk_size=3)
    chunk = store.claim_chunk("w1", T0, LEASE_S)
    assert store.claim_chunk("w2", T0 + LEASE_S - 1, LEASE_S) is None
    assert store.renew_lease(chunk.job_id, 0, "w1", T0 + 30, LEASE_S)  # now expires at T0 + 90
    assert store.claim_chunk("w2", T0 + 89, LEASE_S) is None
    again = store.claim_chunk("w2", T0 + 90, LEASE_S)
    assert (again.idx, again.lease_owner, again.attempts, again.inputs) == (0, "w2", 2, chunk.inputs)
    assert not store.renew_lease(chunk.job_id, 0, "w1", T0 + 91, LEASE_S)
    # The old owner's late result is ignored; the new owner's counts.
    assert complete(store, chunk, owner="w1").completed_inputs == 0
    assert complete(store, again, owner="w2").status == "completed"


def test_a_renewed_lease_is_never_taken_over(store):
    """A live worker renews its lease (the runner's heartbeat): however long it works, nobody else gets its chunk."""
    job = make_job(store, n=3, chunk_size=3)
    chunk = store.claim_chunk("w1", T0, LEASE_S)
    for now in range(T0 + 20, T0 + 10 * LEASE_S, 20):
        assert store.renew_lease(job.id, chunk.idx, "w1", now, LEASE_S)
        assert store.claim_chunk("w2", now + LEASE_S - 1, LEASE_S) is None
    assert complete(store, chunk, now=T0 + 10 * LEASE_S).status == "completed"
    assert store.claim_chunk("w2", T0 + 100 * LEASE_S, LEASE_S) is None


def test_takeovers_are_not_failures_and_released_chunks_are_claimed_at_once(store):
    job = make_job(store, n=3, chunk_size=3)
    first = store.claim_chunk("w1", T0, LEASE_S)
    assert (first.attempts, first.failures) == (1, 0)
    taken = store.claim_chunk("w2", T0 + LEASE_S, LEASE_S)  # w1 died: its lease ran out
    assert (taken.attempts, taken.failures) == (2, 0)  # claimed again, but nothing failed
    assert store.release_chunk(job.id, 0, "w1", failed=True) is None  # w1 no longer holds it: nothing recorded
    assert store.release_chunk(job.id, 0, "w2", failed=True) == 1  # a real failure, given back at once
    again = store.claim_chunk("w3", T0 + LEASE_S + 1, LEASE_S)
    assert (again.idx, again.attempts, again.failures, again.inputs) == (0, 3, 1, first.inputs)
    assert store.release_chunk(job.id, 0, "w3", failed=False) == 1  # given back without a failure (engine busy)
    last = store.claim_chunk("w1", T0 + LEASE_S + 2, LEASE_S)
    assert (last.attempts, last.failures) == (4, 1)
    assert complete(store, last, now=T0 + LEASE_S + 2).status == "completed"
    assert store.release_chunk(job.id, 0, "w1", failed=True) is None  # done: nothing to give back


def undo_compact_types(backend: Backend) -> list[str]:
    """Statements that take a store back to schema 6: chunks without the type of their vectors (7)."""
    return ["ALTER TABLE chunks DROP COLUMN dtype"]


def undo_billing(backend: Backend) -> list[str]:
    """Statements that take a store back to schema 5: the chunks' vector type (7), without per-user limits, the
    jobs' end user, and usage rows by end user and price (6). The usage table goes back to its first shape (SQLite's
    is made again by the migration, which first ensures the access tables)."""
    drops = [
        *undo_compact_types(backend),
        "ALTER TABLE jobs DROP COLUMN end_user",
        *(f"ALTER TABLE {table} DROP COLUMN {column}" for table in ("access_keys", "access_tenants")
          for column in ("user_rpm", "user_tpm")),
        "DROP TABLE access_usage",
    ]  # fmt: skip
    if backend.name == "sqlite":
        return drops
    return [*drops, *schema.statements((schema.ACCESS_TABLES[-1],), schema.POSTGRES)]


def undo_batch_api(backend: Backend) -> list[str]:
    """Statements that take a store back to schema 2: the billing columns (6), the jobs' key id column (5), on
    PostgreSQL the access flags (4; SQLite keeps them beside its access tables, which predate its versioning) and
    the Batch API's tables (3)."""
    drops = [
        f"DROP TABLE {table}" for table in ("batch_spans", "batch_requests", "batch_jobs", "batches", "file_parts")
    ]
    if backend.name == "sqlite":  # migration 3 rebuilds events with a nullable job_id; running it again is harmless
        return [*undo_billing(backend), "ALTER TABLE jobs DROP COLUMN key_id", *drops,
                "DELETE FROM events WHERE batch_id IS NOT NULL", "DROP TABLE files"]  # fmt: skip
    return [
        *undo_billing(backend),
        "ALTER TABLE jobs DROP COLUMN key_id",
        "DROP TABLE access_flags",
        "ALTER TABLE events DROP CONSTRAINT events_batch_type",
        "ALTER TABLE events DROP CONSTRAINT events_subject",
        "ALTER TABLE events DROP COLUMN batch_id",
        "ALTER TABLE events ALTER COLUMN job_id SET NOT NULL",
        *drops,
        "DROP TABLE files",
    ]


def test_a_store_of_schema_1_gains_failure_counts(backend):
    with backend.open() as store:
        job = make_job(store, n=6, chunk_size=3)
        store.claim_chunk("w1", T0, LEASE_S)
    table = "schema_version" if backend.name == "sqlite" else "schema_migrations"
    for statement in undo_batch_api(backend):  # back to schema 2, then 1: as a store written at schema 1
        backend.query(statement, ())
    backend.query("ALTER TABLE chunks DROP COLUMN failures", ())
    backend.query(f"DELETE FROM {table} WHERE version > 1", ())
    with backend.open() as store:
        chunk = store.claim_chunk("w2", T0, LEASE_S)
        assert (chunk.job_id, chunk.idx, chunk.failures) == (job.id, 1, 0)
        assert store.release_chunk(job.id, 0, "w1", failed=True) == 1
    assert schema_versions(backend) == every_version(backend)


def test_the_submitting_key_is_a_column_and_jobs_from_before_keep_theirs(backend):
    """Schema 5 gave the key id a column; earlier jobs kept it among their options. Upgrading copies it over, and a
    row still written the old way (a replica not upgraded yet) reads the same."""
    with backend.open() as store:
        new = make_job(store, n=2, chunk_size=1, key_id="key_new")
        assert (new.key_id, new.options) == ("key_new", {"normalize": True})
        old = store.create_job(
            NewJob("default", "mini", {"normalize": True, "key_id": "key_old"}, {}, None, ["a"], 1), T0
        )
        assert (old.key_id, old.options) == ("key_old", {"normalize": True})  # written the old way, read the new
        opened = store.create_job(NewJob("default", "mini", {}, {}, None, ["a"], 1), T0)
        assert opened.key_id is None  # submitted while the server ran open
    table = "schema_version" if backend.name == "sqlite" else "schema_migrations"
    for statement in undo_billing(backend):  # back to schema 5
        backend.query(statement, ())
    backend.query("ALTER TABLE jobs DROP COLUMN key_id", ())  # back to schema 4: the key id only in the options
    backend.query(f"DELETE FROM {table} WHERE version > 4", ())
    backend.query("UPDATE jobs SET options = ? WHERE id = ?", (json.dumps({"normalize": True, "key_id": "key_new"}),
                                                                new.id))  # fmt: skip
    with backend.open() as store:
        assert backend.query("SELECT id, key_id FROM jobs ORDER BY seq", ()) == [
            (new.id, "key_new"),
            (old.id, "key_old"),
            (opened.id, None),
        ]
        assert store.get_job("default", new.id) == new
        claimed = {c.job_id: c for c in iter(lambda: store.claim_chunk("w1", T0, LEASE_S), None)}
        assert {job_id: (c.key_id, c.options) for job_id, c in claimed.items()} == {
            new.id: ("key_new", {"normalize": True}),
            old.id: ("key_old", {"normalize": True}),
            opened.id: (None, {}),
        }
    assert schema_versions(backend) == every_version(backend)


def test_a_store_of_schema_6_keeps_reading_its_float_results(backend):
    """Schema 7 says what each chunk's vectors hold. Chunks stored before it hold float32 and read the same after
    the upgrade; a job left unfinished then completes as before."""
    with backend.open() as store:
        make_job(store, n=10, chunk_size=3)
        done = run_all(store, now=T0)  # every chunk stored
        before = store.results("default", done.id, 0, 100)
        waiting = make_job(store, n=4, chunk_size=2)
    table = "schema_version" if backend.name == "sqlite" else "schema_migrations"
    for statement in undo_compact_types(backend):  # back to schema 6: the same BLOBs, no type beside them
        backend.query(statement, ())
    backend.query(f"DELETE FROM {table} WHERE version > 6", ())
    with backend.open() as store:
        after = store.results("default", done.id, 0, 100)
        assert after.vectors.dtype == np.float32 and after.vectors.tobytes() == before.vectors.tobytes()
        assert after.token_counts == before.token_counts
        assert run_all(store, now=T0 + 1).id == waiting.id
        assert store.results("default", waiting.id, 0, 4).vectors.tobytes() == vectors_for_range(0, 4).tobytes()
    assert set(backend.query("SELECT dtype FROM chunks", ())) == {("float32",)}
    assert schema_versions(backend) == every_version(backend)


def vectors_for_range(start: int, stop: int, dims: int = DIMS) -> np.ndarray:
    rows = np.arange(start, stop, dtype=np.float32)[:, None]
    return rows + np.arange(dims, dtype=np.float32)[None, :] / 10


def test_concurrent_claims_from_two_stores_never_share_a_chunk(backend):
    stores = [backend.open(), backend.open()]  # two replicas on one database
    job = make_job(stores[0], n=200, chunk_size=2)
    claimed: list[tuple[str, int]] = []

    def worker(store: SqliteJobStore, owner: str) -> None:
        while (chunk := store.claim_chunk(owner, T0, LEASE_S)) is not None:
            claimed.append((chunk.job_id, chunk.idx))
            complete(store, chunk, owner=owner)

    threads = [threading.Thread(target=worker, args=(stores[i % 2], f"w{i}")) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed) == [(job.id, idx) for idx in range(100)]
    done = stores[1].get_job("default", job.id)
    assert (done.status, done.completed_inputs) == ("completed", 200)
    for store in stores:
        store.close()


def test_replicas_starting_together_migrate_once(backend):
    opened: list[SqliteJobStore] = []
    errors: list[BaseException] = []

    def start() -> None:
        try:
            opened.append(backend.open())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(opened) == 4
    assert schema_versions(backend) == every_version(backend)  # each migration applied once
    job = make_job(opened[0])
    assert all(store.get_job("default", job.id) == job for store in opened)
    for store in opened:
        store.close()


def test_concurrent_senders_never_lease_the_same_delivery(backend):
    stores = [backend.open(), backend.open()]  # two replicas' delivery loops
    hook = stores[0].create_webhook("default", "https://example.com/hook", "", "whsec_x", T0)
    for _ in range(40):
        stores[0].add_event(make_job(stores[0], n=1, webhook_id=hook.id), "batch.completed", "{}", T0)
    leased: list[str] = []

    def sender(store: SqliteJobStore, owner: str) -> None:
        while due := store.due_deliveries(T0, 3, owner, 30):
            leased.extend(d.id for d in due)
            for delivery in due:
                assert store.record_attempt(delivery.id, owner, NewAttempt(200, None, 1, final_state="succeeded"), T0)

    threads = [threading.Thread(target=sender, args=(stores[i % 2], f"s{i}")) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(leased) == 40 and len(set(leased)) == 40  # each delivery sent once, by one sender
    assert backend.query("SELECT COUNT(*) FROM delivery_attempts", ()) == [(40,)]
    for store in stores:
        store.close()


def test_reads_from_many_threads_run_beside_writes(store):
    job = make_job(store, n=400, chunk_size=2)
    seen: list[int] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        try:
            while not stop.is_set():
                seen.append(store.get_job("default", job.id).completed_inputs)
                store.list_jobs("default", limit=5)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for thread in threads:
        thread.start()
    done = run_all(store)
    stop.set()
    for thread in threads:
        thread.join()
    assert not errors and done.completed_inputs == 400 and seen and max(seen) <= 400


def test_claims_round_robin_across_jobs(store):
    big = make_job(store, n=10, chunk_size=1)
    make_job(store, n=2, chunk_size=1, now=T0 + 1)
    order = []
    while (chunk := store.claim_chunk("w1", T0 + 2, LEASE_S)) is not None:
        order.append("big" if chunk.job_id == big.id else "small")
        complete(store, chunk)
    assert order[:4] == ["big", "small", "big", "small"] and order[4:] == ["big"] * 8
    # With chunks in flight, the job with the fewest live leases goes first.
    third = make_job(store, n=4, chunk_size=1, now=T0 + 3)
    fourth = make_job(store, n=4, chunk_size=1, now=T0 + 4)
    held = [store.claim_chunk(f"w{i}", T0 + 5, LEASE_S).job_id for i in range(4)]
    assert held.count(third.id) == 2 and held.count(fourth.id) == 2


# --- completion ---------------------------------------------------------------------------------------------------


def test_complete_counts_once_and_finishes_the_job(store, backend):
    job = make_job(store, n=10, chunk_size=3)
    chunks = [store.claim_chunk("w1", T0, LEASE_S) for _ in range(4)]
    progress = complete(store, chunks[0], now=T0 + 10)
    assert (progress.status, progress.completed_inputs, progress.prompt_tokens) == ("in_progress", 3, 1 + 2 + 3)
    assert complete(store, chunks[0], now=T0 + 11).completed_inputs == 3  # again: no double count
    assert complete(store, chunks[1], owner="intruder").completed_inputs == 3  # not the owner: ignored
    with pytest.raises(ValueError):
        store.complete_chunk(job.id, 1, "w1", ChunkVectors(b"\0" * 8, DIMS, [1, 1, 1]), T0)
    with pytest.raises(NotFound):
        store.complete_chunk("job_missing", 0, "w1", ChunkVectors(b"", DIMS, []), T0)
    for chunk in chunks[1:3]:
        assert complete(store, chunk, now=T0 + 20).status == "in_progress"
    done = complete(store, chunks[3], now=T0 + 30)
    assert (done.status, done.completed_inputs, done.prompt_tokens) == ("completed", 10, sum(range(1, 11)))
    assert (done.completed_at, done.expires_at) == (T0 + 30, T0 + 30 + RETENTION_S)
    assert complete(store, chunks[3], now=T0 + 40) == done
    # A done chunk keeps its vectors, not its inputs.
    rows = backend.query(
        "SELECT CASE WHEN inputs IS NULL THEN 1 ELSE 0 END, length(vectors) FROM chunks WHERE job_id = ? ORDER BY idx",
        (job.id,),
    )
    assert rows == [(1, 3 * DIMS * 4), (1, 3 * DIMS * 4), (1, 3 * DIMS * 4), (1, DIMS * 4)]


def test_cancel_stops_claims_and_ignores_late_results(store):
    job = make_job(store, n=9, chunk_size=3)
    leased = store.claim_chunk("w1", T0, LEASE_S)
    assert store.cancel_job("other", job.id, T0 + 1) is None
    assert store.get_job("default", job.id).status == "in_progress"
    cancelled = store.cancel_job("default", job.id, T0 + 1)
    assert (cancelled.status, cancelled.cancelled_at, cancelled.expires_at) == (
        "cancelled",
        T0 + 1,
        T0 + 1 + RETENTION_S,
    )
    assert store.claim_chunk("w2", T0 + 2, LEASE_S) is None
    assert store.claim_chunk("w2", T0 + 1000, LEASE_S) is None  # not even after the lease expires
    assert not store.renew_lease(job.id, leased.idx, "w1", T0 + 2, LEASE_S)
    assert complete(store, leased, now=T0 + 3) == cancelled
    assert store.cancel_job("default", job.id, T0 + 4) == cancelled  # unchanged: the caller answers 409
    finished = make_job(store, n=1)
    finished = run_all(store)
    assert store.cancel_job("default", finished.id, T0 + 5) == finished


def test_fail_job(store):
    job = make_job(store, n=6, chunk_size=3)
    store.claim_chunk("w1", T0, LEASE_S)
    failed = store.fail_job(job.id, {"code": "inference_failed", "message": "boom"}, T0 + 1)
    assert (failed.status, failed.error, failed.failed_at) == (
        "failed",
        {"code": "inference_failed", "message": "boom"},
        T0 + 1,
    )
    assert failed.expires_at == T0 + 1 + RETENTION_S
    assert store.claim_chunk("w1", T0 + 1000, LEASE_S) is None
    assert store.fail_job(job.id, {"code": "x", "message": "y"}, T0 + 2) == failed
    assert store.fail_job("job_missing", {"code": "x", "message": "y"}, T0) is None


# --- results ------------------------------------------------------------------------------------------------------


def test_results_page_across_chunks_in_input_order(store):
    job = make_job(store, n=10, chunk_size=3)
    store.claim_chunk("w1", T0, LEASE_S)
    complete(store, store.claim_chunk("w1", T0, LEASE_S))  # chunk 1 only
    assert store.results("default", job.id, 3, 3).vectors.shape == (3, DIMS)
    with pytest.raises(ResultsNotReady):
        store.results("default", job.id, 0, 4)
    run_all(store, now=T0 + 100)
    expected = np.arange(10, dtype=np.float32)[:, None] + np.arange(DIMS, dtype=np.float32)[None, :] / 10
    pages = [store.results("default", job.id, offset, 4) for offset in range(0, 10, 4)]
    assert [page.has_more for page in pages] == [True, True, False]
    vectors = np.concatenate([page.vectors for page in pages])
    assert vectors.dtype == np.float32 and vectors.tobytes() == expected.tobytes()
    assert [count for page in pages for count in page.token_counts] == list(range(1, 11))
    middle = store.results("default", job.id, 2, 5)
    assert middle.vectors.tobytes() == expected[2:7].tobytes() and middle.token_counts == [3, 4, 5, 6, 7]
    assert store.results("default", job.id, 9, 100).vectors.shape == (1, DIMS)
    assert store.results("default", job.id, 10, 5).vectors.shape[0] == 0
    with pytest.raises(NotFound):
        store.results("other", job.id, 0, 4)


@pytest.mark.parametrize("dtype", ["int8", "uint8"])
def test_compact_vectors_are_stored_as_their_bytes(store, backend, dtype):
    """A compact type's vectors are kept as the bytes the engine gave (a quarter of float32's space; binary types
    an eighth of that again) and read back in their type; a job's chunks all hold the same type and width."""
    job = make_job(store, n=5, chunk_size=3)
    first, second = store.claim_chunk("w1", T0, LEASE_S), store.claim_chunk("w1", T0, LEASE_S)
    rng = np.random.default_rng(7)
    stored = rng.integers(np.iinfo(dtype).min, np.iinfo(dtype).max + 1, size=(5, 48), dtype=dtype)
    store.complete_chunk(job.id, 0, "w1", ChunkVectors(stored[:3].tobytes(), 48, [1, 2, 3], dtype), T0)
    with pytest.raises(ValueError, match="float32"):  # the other chunk as float32: not this job's type
        store.complete_chunk(job.id, 1, "w1", ChunkVectors(stored[3:].astype("<f4").tobytes(), 48, [4, 5]), T0)
    with pytest.raises(ValueError):  # bytes that are not count x dims values of the type
        store.complete_chunk(job.id, 1, "w1", ChunkVectors(stored[3:].tobytes()[:-1], 48, [4, 5], dtype), T0)
    with pytest.raises(ValueError, match="float16"):
        store.complete_chunk(job.id, 1, "w1", ChunkVectors(stored[3:].tobytes(), 24, [4, 5], "float16"), T0)
    assert (
        store.complete_chunk(job.id, 1, "w1", ChunkVectors(stored[3:].tobytes(), 48, [4, 5], dtype), T0).status
        == "completed"
    )
    page = store.results("default", job.id, 1, 4)
    assert page.vectors.dtype == np.dtype(dtype) and np.array_equal(page.vectors, stored[1:5])
    assert page.token_counts == [2, 3, 4, 5]
    sizes = backend.query("SELECT dtype, length(vectors) FROM chunks WHERE job_id = ? ORDER BY idx", (job.id,))
    assert sizes == [(dtype, 3 * 48), (dtype, 2 * 48)]
    assert first.idx == 0 and second.idx == 1


def test_a_page_of_1000_reads_only_its_chunks(store):
    job = store.create_job(NewJob("default", "mini", {}, {}, None, texts(20_000), 256), T0)
    rng = np.random.default_rng(0)
    stored = {}
    while (chunk := store.claim_chunk("w1", T0, LEASE_S)) is not None:
        stored[chunk.idx] = rng.standard_normal((chunk.count, 384), dtype=np.float32)
        store.complete_chunk(
            job.id, chunk.idx, "w1", ChunkVectors(stored[chunk.idx].tobytes(), 384, [1] * chunk.count), T0
        )
    expected = np.concatenate([stored[idx] for idx in sorted(stored)])
    started = time.perf_counter()
    page = store.results("default", job.id, 10_100, 1000)
    elapsed = time.perf_counter() - started
    print(f"\nresults: a page of 1,000 x 384 in {elapsed * 1000:.1f} ms")
    assert np.array_equal(page.vectors, expected[10_100:11_100]) and page.has_more


def test_expired_results_are_removed_but_the_job_stays(store, backend):
    job = make_job(store, n=10, chunk_size=3)
    done = run_all(store, now=T0 + 10)
    running = make_job(store, n=3)
    assert store.expire_results(done.expires_at - 1) == []
    assert store.results("default", job.id, 0, 10).vectors.shape == (10, DIMS)
    assert store.expire_results(done.expires_at) == [job.id]
    assert store.expire_results(done.expires_at + 1) == []
    removed = store.get_job("default", job.id)
    assert removed.results_removed and removed.status == "completed" and removed.completed_inputs == 10
    with pytest.raises(ResultsRemoved, match="expired"):
        store.results("default", job.id, 0, 10)
    assert backend.query("SELECT COUNT(*) FROM chunks WHERE job_id = ?", (job.id,)) == [(0,)]
    if backend.name == "sqlite":
        assert backend.query("PRAGMA freelist_count", ()) == [(0,)]  # freed pages went back to the file system
    assert store.claim_chunk("w1", T0 + 20, LEASE_S).job_id == running.id


# --- durability ---------------------------------------------------------------------------------------------------


def test_reopening_keeps_everything(backend):
    with backend.open() as store:
        hook = store.create_webhook("default", "https://example.com/hook", "d", "whsec_x", T0)
        job = make_job(store, n=10, chunk_size=3, webhook_id=hook.id)
        complete(store, store.claim_chunk("w1", T0, LEASE_S))
        leased = store.claim_chunk("w1", T0, LEASE_S)
        before = store.get_job("default", job.id)
    with backend.open() as store:
        assert store.get_job("default", job.id) == before
        assert store.get_webhook("default", hook.id) == hook
        assert store.results("default", job.id, 0, 3).vectors.shape == (3, DIMS)
        assert store.claim_chunk("w2", T0, LEASE_S).idx == 2
        assert store.renew_lease(job.id, leased.idx, "w1", T0 + 1, LEASE_S)
    assert schema_versions(backend) == every_version(backend)  # migrated once, not again on reopening


def test_sigkill_mid_job_loses_no_committed_work(db):
    script = textwrap.dedent(
        f"""
        import os, signal, numpy as np
        from service.jobs.records import ChunkVectors, NewJob
        from service.stores.sqlite import SqliteJobStore
        store = SqliteJobStore({str(db)!r})
        job = store.create_job(NewJob("default", "mini", {{}}, {{}}, None, [f"t {{i}}" for i in range(10)], 3), {T0})
        for _ in range(2):
            chunk = store.claim_chunk("doomed", {T0}, {LEASE_S})
            vectors = np.full((chunk.count, {DIMS}), chunk.idx + 1, dtype=np.float32)
            store.complete_chunk(job.id, chunk.idx, "doomed", ChunkVectors.of(vectors, [7] * chunk.count), {T0})
        store.claim_chunk("doomed", {T0}, {LEASE_S})
        print(job.id, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == -signal.SIGKILL, done.stderr
    job_id = done.stdout.strip()
    with SqliteJobStore(db) as store:
        job = store.get_job("default", job_id)
        assert (job.status, job.completed_inputs, job.prompt_tokens) == ("in_progress", 6, 42)
        page = store.results("default", job_id, 0, 6)
        assert page.vectors[:, 0].tolist() == [1, 1, 1, 2, 2, 2]
        assert store.claim_chunk("w2", T0, LEASE_S).idx == 3  # chunk 2 is still leased by the dead process
        assert store.claim_chunk("w2", T0 + LEASE_S - 1, LEASE_S) is None
        reclaimed = store.claim_chunk("w2", T0 + LEASE_S, LEASE_S)
        assert (reclaimed.idx, reclaimed.attempts, reclaimed.inputs) == (2, 2, ["t 6", "t 7", "t 8"])


# --- webhooks, events, deliveries ---------------------------------------------------------------------------------


def test_webhooks_are_per_tenant(store):
    hook = store.create_webhook("default", "https://example.com/a", "first", "whsec_a", T0)
    other = store.create_webhook("other", "https://example.com/b", "", "whsec_b", T0)
    assert hook.id.startswith("wh_") and len(hook.id) == 3 + 24
    assert store.list_webhooks("default") == [hook] and store.list_webhooks("other") == [other]
    assert store.get_webhook("default", hook.id) == hook and store.get_webhook("default", other.id) is None
    assert not store.delete_webhook("default", other.id, T0)
    with pytest.raises(NotFound):
        make_job(store, webhook_id=other.id)
    assert store.delete_webhook("default", hook.id, T0 + 1)
    assert store.get_webhook("default", hook.id) is None and store.list_webhooks("default") == []
    assert not store.delete_webhook("default", hook.id, T0 + 2)
    with pytest.raises(NotFound):
        make_job(store, webhook_id=hook.id)
    disabled = store.disable_webhook(other.id, "410 Gone", T0 + 3)
    assert (disabled.disabled_at, disabled.disabled_reason) == (T0 + 3, "410 Gone")


def test_webhooks_per_tenant_are_capped(store):
    hooks = [store.create_webhook("default", f"https://example.com/{i}", "", "whsec_x", T0, 3) for i in range(3)]
    with pytest.raises(TooManyWebhooks):
        store.create_webhook("default", "https://example.com/4", "", "whsec_x", T0, 3)
    store.create_webhook("other", "https://example.com/o", "", "whsec_x", T0, 3)  # per tenant
    assert store.delete_webhook("default", hooks[0].id, T0)
    store.create_webhook("default", "https://example.com/5", "", "whsec_x", T0, 3)  # deleted ones do not count
    assert len(store.list_webhooks("default")) == 3


def test_concurrent_webhook_creation_stays_under_the_cap(backend):
    stores = [backend.open(), backend.open()]
    created, refused = [], []

    def create(store, n: int) -> None:
        try:
            created.append(store.create_webhook("default", f"https://example.com/{n}", "", "whsec_x", T0, 5))
        except TooManyWebhooks:
            refused.append(n)

    threads = [threading.Thread(target=create, args=(stores[n % 2], n)) for n in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(created) == 5 and len(refused) == 7
    assert len(stores[0].list_webhooks("default")) == 5
    for store in stores:
        store.close()


def test_events_enqueue_one_delivery_exactly_once(store):
    hook = store.create_webhook("default", "https://example.com/hook", "", "whsec_x", T0)
    job = make_job(store, n=1, webhook_id=hook.id)
    first = store.add_event(job, "batch.completed", '{"id": "x"}', T0 + 1)
    again = store.add_event(job, "batch.completed", '{"id": "changed"}', T0 + 2)
    assert first == again and first.id.startswith("evt_") and first.payload == '{"id": "x"}'
    due = store.due_deliveries(T0 + 5, 10, "s1", 30)
    assert len(due) == 1
    delivery = due[0]
    assert delivery.id.startswith("dlv_")
    assert (delivery.event_id, delivery.event_type, delivery.url, delivery.secret, delivery.attempts) == (
        first.id,
        "batch.completed",
        hook.url,
        "whsec_x",
        0,
    )
    # No webhook: the event is recorded, nothing is sent.
    quiet = make_job(store, n=1)
    assert store.add_event(quiet, "batch.completed", "{}", T0).job_id == quiet.id
    assert store.due_deliveries(T0 + 34, 10, "s2", 30) == []  # the only delivery is leased until T0 + 35


def test_announce_records_the_final_event_with_the_transition(backend):
    def announce(job: Job, now: int) -> tuple[str, str]:
        return f"batch.{job.status}", json.dumps({"id": job.id, "status": job.status})

    with backend.open(announce=announce) as store:
        hook = store.create_webhook("default", "https://example.com/hook", "", "whsec_x", T0)
        make_job(store, n=4, webhook_id=hook.id)
        done = run_all(store)
        cancelled = store.cancel_job("default", make_job(store, n=1, webhook_id=hook.id).id, T0)
        failed = store.fail_job(make_job(store, n=1, webhook_id=hook.id).id, {"code": "c", "message": "m"}, T0)
        due = store.due_deliveries(T0, 10, "s1", 30)
        assert sorted((d.job_id, d.event_type) for d in due) == sorted(
            [(done.id, "batch.completed"), (cancelled.id, "batch.cancelled"), (failed.id, "batch.failed")]
        )
        assert json.loads(due[0].payload)["status"] == due[0].event_type.removeprefix("batch.")


def test_deliveries_are_leased_retried_and_recorded(store):
    hook = store.create_webhook("default", "https://example.com/hook", "", "whsec_x", T0)
    job = make_job(store, n=1, webhook_id=hook.id)
    store.add_event(job, "batch.completed", "{}", T0)
    (delivery,) = store.due_deliveries(T0, 10, "s1", 30)
    assert store.due_deliveries(T0 + 29, 10, "s2", 30) == []  # leased: s2 never sends the same attempt
    assert store.record_attempt(delivery.id, "s1", NewAttempt(500, "HTTP 500", 12, next_attempt_at=T0 + 100), T0 + 1)
    assert store.due_deliveries(T0 + 99, 10, "s2", 30) == []  # not due yet
    (retry,) = store.due_deliveries(T0 + 100, 10, "s2", 30)
    assert (retry.id, retry.attempts, retry.lease_owner) == (delivery.id, 1, "s2")
    # The lease runs out; s3 takes over; s2's late outcome is recorded but does not move the delivery.
    (taken,) = store.due_deliveries(T0 + 130, 10, "s3", 30)
    assert not store.record_attempt(
        delivery.id, "s2", NewAttempt(None, "timeout", 10_000, final_state="failed"), T0 + 131
    )
    assert store.record_attempt(delivery.id, "s3", NewAttempt(204, None, 8, final_state="succeeded"), T0 + 132)
    assert store.due_deliveries(T0 + 10_000, 10, "s4", 30) == []
    with pytest.raises(ValueError):
        store.record_attempt(
            delivery.id, "s3", NewAttempt(200, None, 1, next_attempt_at=T0, final_state="succeeded"), T0
        )
    attempts = store.list_attempts("default", hook.id)
    assert [(a.attempt, a.status_code, a.error, a.duration_ms, a.attempted_at) for a in attempts] == [
        (3, 204, None, 8, T0 + 132),
        (2, None, "timeout", 10_000, T0 + 131),
        (1, 500, "HTTP 500", 12, T0 + 1),
    ]
    assert {(a.event_id, a.job_id, a.delivery_state) for a in attempts} == {(taken.event_id, job.id, "succeeded")}
    assert store.list_attempts("other", hook.id) == []
    (newest,) = store.list_attempts("default", hook.id, limit=1)
    assert newest.attempt == 3  # numbered over all of the delivery's attempts, not only those listed


def test_disabling_a_webhook_stops_its_pending_deliveries(store, backend):
    hook = store.create_webhook("default", "https://example.com/hook", "", "whsec_x", T0)
    jobs = [make_job(store, n=1, webhook_id=hook.id) for _ in range(2)]
    store.add_event(jobs[0], "batch.completed", "{}", T0)
    store.disable_webhook(hook.id, "410 Gone", T0 + 1)
    store.add_event(jobs[1], "batch.completed", "{}", T0 + 2)
    assert store.due_deliveries(T0 + 10, 10, "s1", 30) == []
    assert backend.query("SELECT state FROM deliveries", ()) == [("disabled",), ("disabled",)]
