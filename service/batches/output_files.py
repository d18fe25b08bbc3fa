"""A batch's output and error files, written when it ends (completed, cancelled or expired).

The vectors of the batch's jobs are read back chunk by chunk and written as OpenAI's output lines a part at a time;
requests refused at validation, and accepted ones whose inputs were not embedded, go to the error file. A file left
empty is discarded. The files stay invisible until the transaction that ends the batch (the runner's).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
import orjson

from service.api.rest import openai_body
from service.batches import objects
from service.batches.files import PartWriter
from service.batches.lease import BatchLease
from service.batches.records import Batch, BatchRequest, OutputFiles, Tally
from service.batches.store import BatchStore
from service.engine.model import EmbedResult
from service.jobs.records import Job, ResultsNotReady, ResultsRemoved
from service.worker_loops import now_s

# Requests read back per page when writing the output file.
PAGE_REQUESTS = 512
NOT_RUN = {
    "cancelled": ("batch_cancelled", "This request was not executed because the batch was cancelled."),
    "expired": ("batch_expired", "This request could not be executed before the completion window expired."),
}


def output_file_ids(batch_id: str) -> tuple[str, str]:
    suffix = batch_id.removeprefix("batch_")
    return f"file-{suffix}-out", f"file-{suffix}-err"


async def write_output_files(store: BatchStore, batch: Batch, status: str, lease: BatchLease) -> OutputFiles:
    """Write (again, after an attempt cut short) the batch's output and error files, finished but not yet visible."""
    now = now_s()
    writers = {}
    for file_id, kind in zip(output_file_ids(batch.id), ("output", "error"), strict=True):
        await asyncio.to_thread(store.discard_file, file_id)  # left by an attempt cut short
        name = f"{batch.id}_{kind}.jsonl"
        await asyncio.to_thread(store.create_file, batch.tenant, "batch_output", name, now, file_id)
        writers[kind] = _LineWriter(PartWriter(store, file_id))
    tally = Tally()
    await _write_accepted(store, batch, status, writers, tally, lease)
    await _write_refused(store, batch, writers["error"], tally, lease)
    expires_at = now_s() + batch.output_expires_after
    kept = {kind: await writer.finish(store, expires_at) for kind, writer in writers.items()}
    return OutputFiles(kept["output"], kept["error"], tally)


async def _requests(
    lease: BatchLease, read_page: Callable[[Any], list[BatchRequest]], cursor: Callable[[BatchRequest], Any]
) -> AsyncIterator[BatchRequest]:
    """Every request a paged read of the store returns (`read_page(after)`, first None), keeping the lease between
    pages; `cursor` is where the next page starts after a request."""
    after = None
    while True:
        await lease.keep()
        page = await asyncio.to_thread(read_page, after)
        if not page:
            return
        for request in page:
            yield request
        after = cursor(page[-1])


async def _write_accepted(
    store: BatchStore, batch: Batch, status: str, writers: dict[str, _LineWriter], tally: Tally, lease: BatchLease
) -> None:
    jobs = await asyncio.to_thread(store.batch_jobs, batch.id)
    readers: dict[int, _JobReader] = {}
    pages = _requests(
        lease,
        lambda after: store.accepted_requests(batch.id, after, PAGE_REQUESTS),
        lambda last: (last.part, last.start),
    )
    async for request in pages:
        assert request.part is not None and request.start is not None
        reader = readers.get(request.part)
        if reader is None:
            readers.clear()  # parts come in order: the previous one is done
            reader = await _JobReader.open(store, batch.tenant, jobs[request.part])
            readers[request.part] = reader
        vectors = await reader.vectors(request)
        if vectors is None:
            code, message = reader.failure(status)
            await writers["error"].write(objects.failure_line(request.custom_id, code, message))
            tally.failed += 1
            continue
        rows, counts = vectors
        result = EmbedResult(reader.job.model, rows, counts, [False] * len(counts))
        body = openai_body(result, request.encoding_format or "float", cache_details=False)
        await writers["output"].write(objects.response_line(request.custom_id, 200, body))
        tally.completed += 1
        tally.tokens += result.prompt_tokens


async def _write_refused(store: BatchStore, batch: Batch, writer: _LineWriter, tally: Tally, lease: BatchLease) -> None:
    pages = _requests(
        lease, lambda after: store.refused_requests(batch.id, after or 0, PAGE_REQUESTS), lambda last: last.line
    )
    async for request in pages:
        error = orjson.loads(request.error or "{}")
        body = orjson.dumps(error.get("body"))
        await writer.write(objects.response_line(request.custom_id, error.get("status_code", 400), body))
        tally.failed += 1


class _LineWriter:
    def __init__(self, part_writer: PartWriter) -> None:
        self.part_writer = part_writer
        self.lines = 0

    async def write(self, line: bytes) -> None:
        self.lines += 1
        await self.part_writer.write(line)

    async def finish(self, store: BatchStore, expires_at: int) -> str | None:
        """Close the file: keep it (its id) if a line was written, else discard it (None)."""
        await self.part_writer.close()
        file_id = self.part_writer.file_id
        if not self.lines:
            await asyncio.to_thread(store.discard_file, file_id)
            return None
        await asyncio.to_thread(store.finish_file, file_id, self.part_writer.size, self.lines, expires_at, False)
        return file_id


class _JobReader:
    """A batch job's vectors, read back one chunk at a time (the chunk in use is kept)."""

    def __init__(self, store: BatchStore, tenant: str, job: Job) -> None:
        self._store = store
        self._tenant = tenant
        self.job = job
        self._chunk: tuple[int, Any] | None = None

    @classmethod
    async def open(cls, store: BatchStore, tenant: str, job_id: str) -> _JobReader:
        job = await asyncio.to_thread(store.get_job, tenant, job_id)
        if job is None:
            raise RuntimeError(f"job {job_id} of a batch is missing")
        return cls(store, tenant, job)

    async def _read_chunk(self, idx: int) -> Any:
        if self._chunk is not None and self._chunk[0] == idx:
            return self._chunk[1]
        size = self.job.chunk_size
        try:
            results = await asyncio.to_thread(self._store.results, self._tenant, self.job.id, idx * size, size)
        except (ResultsNotReady, ResultsRemoved):
            results = None
        self._chunk = (idx, results)
        return results

    async def vectors(self, request: BatchRequest) -> tuple[Any, list[int]] | None:
        """The request's vectors and token counts, or None when some of its inputs were not embedded."""
        assert request.start is not None and request.count is not None
        assert request.first_chunk is not None and request.last_chunk is not None
        end = request.start + request.count
        size = self.job.chunk_size
        blocks, counts = [], []
        for idx in range(request.first_chunk, request.last_chunk + 1):
            results = await self._read_chunk(idx)
            if results is None:
                return None
            lo = max(request.start, idx * size) - idx * size
            hi = min(end, (idx + 1) * size) - idx * size
            blocks.append(results.vectors[lo:hi])
            counts += results.token_counts[lo:hi]
        return np.concatenate(blocks), counts

    def failure(self, batch_status: str) -> tuple[str, str]:
        """Why a request of this job has no answer."""
        if self.job.status == "failed" and self.job.error:
            return self.job.error.get("code", "job_failed"), self.job.error.get("message", "The request failed.")
        return NOT_RUN.get(batch_status, ("batch_failed", "The request was not executed."))
