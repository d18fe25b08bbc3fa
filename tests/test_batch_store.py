"""The Batch API's store methods, on SQLite and on PostgreSQL (shared mode): files in parts, tenants, batch leases,
validation results, progress, the transaction that ends a batch with its files and its webhook event."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from service.batches.records import NewBatch, OutputFiles, Tally, ValidatedBatch
from service.batches.store import BatchStore
from service.jobs.records import ChunkVectors, InvalidCursor, NewJob, NotFound
from service.stores.sqlite import SqliteStore
from tests.shared_stores import temp_schema

T0 = 1_700_000_000
DAY = 24 * 3600


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqliteStore]:
    if request.param == "sqlite":
        with SqliteStore(tmp_path / "jobs.db") as opened:
            yield opened
        return
    from service.stores.postgres import PostgresStore

    with temp_schema() as url:
        opened = PostgresStore(url)
        yield opened
        opened.close()


def add_file(store, tenant: str = "acme", parts: tuple[bytes, ...] = (b'{"a": 1}\n', b'{"b": 2}\n')) -> str:
    file_id = store.create_file(tenant, "batch", "in.jsonl", T0)
    for idx, data in enumerate(parts):
        store.append_file_part(file_id, idx, data)
    store.finish_file(file_id, sum(map(len, parts)), len(parts), T0 + DAY)
    return file_id


def test_store_implements_the_interface(store):
    assert {name for name in dir(BatchStore) if not name.startswith("_")} <= set(dir(store))


def test_files_are_written_in_parts_and_belong_to_their_tenant(store):
    uploading = store.create_file("acme", "batch", "half.jsonl", T0)
    assert store.get_file("acme", uploading) is None  # invisible until finished
    file_id = add_file(store)
    record = store.get_file("acme", file_id)
    assert (record.bytes, record.lines, record.expires_at) == (18, 2, T0 + DAY)
    assert store.file_parts(file_id, 0, 10) == [b'{"a": 1}\n', b'{"b": 2}\n']
    assert store.get_file("globex", file_id) is None and not store.delete_file("globex", file_id, T0)
    assert [f.id for f in store.list_files("acme", 10).items] == [file_id]
    with pytest.raises(InvalidCursor):
        store.list_files("globex", 10, after=file_id)
    assert store.delete_file("acme", file_id, T0) and store.get_file("acme", file_id) is None
    assert store.file_parts(file_id, 0, 10) == []
    assert store.expire_files(T0 + 10, stale_before=T0 + 1) == 1  # the abandoned upload
    assert store.file_parts(uploading, 0, 10) == []


def test_batch_lifecycle_with_leases_progress_and_event(store):
    events = []
    store.batch_announce = lambda batch, now: events.append(batch.status) or ("batch." + batch.status, "{}")
    file_id = add_file(store)
    with pytest.raises(NotFound):
        store.create_batch(NewBatch("globex", None, None, file_id, "/v1/embeddings", "24h", {}, None, DAY, DAY), T0)
    batch = store.create_batch(
        NewBatch("acme", "k1", ["m"], file_id, "/v1/embeddings", "24h", {"x": "y"}, None, DAY, DAY), T0
    )
    assert (batch.status, batch.models, batch.expires_at) == ("validating", ("m",), T0 + DAY)
    claimed = store.claim_batch("w1", T0, 60)
    assert claimed.id == batch.id and store.claim_batch("w2", T0, 60) is None  # leased
    job = store.create_job(NewJob("acme", "m", {}, {}, None, ["a", "b", "c"], 2, job_id="job_b_0"), T0)
    store.add_batch_job(batch.id, 0, job.id)
    store.add_batch_job(batch.id, 0, job.id)  # a retried step: once
    rows = [(1, "one", 0, 0, 2, 0, 0, "float", None), (2, "two", 0, 2, 1, 1, 1, "base64", None),
            (3, "bad", None, None, None, None, None, None, '{"status_code": 400}')]  # fmt: skip
    assert store.start_batch(batch.id, "w2", ValidatedBatch("m", rows, 3, 1), T0) is None  # not the lease holder
    started = store.start_batch(batch.id, "w1", ValidatedBatch("m", rows, 3, 1), T0 + 1)
    assert (started.status, started.total, started.failed, started.in_progress_at) == ("in_progress", 3, 1, T0 + 1)
    assert store.claim_batch("w1", T0 + 2, 60) is None  # its job is still running
    assert store.completed_requests(batch.id) == 0
    chunk = store.claim_chunk("w", T0, 60)
    store.complete_chunk(job.id, chunk.idx, "w", ChunkVectors(np.zeros((2, 4), "<f4").tobytes(), 4, [1, 1]), T0)
    assert store.completed_requests(batch.id) == 1
    chunk = store.claim_chunk("w", T0, 60)
    store.complete_chunk(job.id, chunk.idx, "w", ChunkVectors(np.zeros((1, 4), "<f4").tobytes(), 4, [1]), T0)
    assert [r.custom_id for r in store.accepted_requests(batch.id, None, 10)] == ["one", "two"]
    assert [r.custom_id for r in store.accepted_requests(batch.id, (0, 0), 10)] == ["two"]
    assert [r.custom_id for r in store.refused_requests(batch.id, 0, 10)] == ["bad"]
    ready = store.claim_batch("w1", T0 + 3, 60)
    assert ready.id == batch.id
    assert store.begin_finalizing(batch.id, "w1", T0 + 3).status == "finalizing"
    output = store.create_file("acme", "batch_output", "out.jsonl", T0 + 3, file_id="file-out")
    store.append_file_part(output, 0, b"{}\n")
    store.finish_file(output, 3, 1, T0 + DAY, publish=False)
    assert store.get_file("acme", output) is None  # visible with the batch's end only
    done = store.finish_batch(batch.id, "w1", "completed", OutputFiles(output, None, Tally(2, 1, 3)), T0 + 4)
    assert (done.status, done.completed_at, done.output_file_id, done.completed) == ("completed", T0 + 4, output, 2)
    assert store.get_file("acme", output).bytes == 3 and events == ["completed"]
    assert store.finish_batch(batch.id, "w1", "completed", OutputFiles(None, None), T0 + 5) is None
    assert store.cancel_batch("acme", batch.id, T0 + 6).status == "completed"  # finished: unchanged
    assert store.get_batch("globex", batch.id) is None and store.cancel_batch("globex", batch.id, T0) is None


def test_cancelling_takes_the_lease_and_failing_records_errors(store):
    store.batch_announce = lambda batch, now: ("batch." + batch.status, "{}")
    file_id = add_file(store)
    first = store.create_batch(NewBatch("acme", None, None, file_id, "/v1/embeddings", "24h", {}, None, DAY, DAY), T0)
    second = store.create_batch(NewBatch("acme", None, None, file_id, "/v1/embeddings", "24h", {}, None, DAY, DAY), T0)
    assert store.claim_batch("w1", T0, 60).id == first.id
    assert store.cancel_batch("acme", first.id, T0 + 1).status == "cancelling"
    assert store.renew_batch_lease(first.id, "w1", T0 + 1, 60) is None  # the validator stops
    assert store.claim_batch("w2", T0 + 1, 60).id == first.id  # a worker takes the cancellation
    assert store.claim_batch("w3", T0 + 1, 60).id == second.id
    failed = store.fail_batch(second.id, "w3", [{"code": "empty_file", "line": 1}], 0, T0 + 2)
    assert failed.status == "failed" and failed.errors == [{"code": "empty_file", "line": 1}]
    page = store.list_batches("acme", 1)
    assert [b.id for b in page.items] == [second.id] and page.has_more
    assert [b.id for b in store.list_batches("acme", 5, after=second.id).items] == [first.id]
