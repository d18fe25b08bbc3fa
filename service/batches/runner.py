"""The worker behind batches: validates a batch's file into jobs, then writes its output and error files.

A batch runs on the job engine. Validation reads the input file twice, a line at a time: first its structure
(JSON, custom_id, method, url, one model, limits: a problem fails the batch, as OpenAI does), then each request as
the live `/v1/embeddings` parses it (`service.api.rest.parse_request`, token limits included): a refused request
goes to the error file with the error the live call would answer. Accepted inputs are cut into jobs ("parts", one
set per distinct option group, at most `part_inputs` inputs each), named after the batch, so a validation that
restarts after a crash finds the jobs it already made. Their chunks run in the engine's background lane under the
submitting key's limits like any job's. When every job has ended (or the batch is cancelled or its 24 h window
passes), finalization reads the vectors back chunk by chunk and writes the output and error files a part at a
time; the files become visible in the transaction that ends the batch and records its webhook event.

Every step holds a lease on the batch in the store (renewed as it goes), so one replica works on a batch at a time
and a step cut short by a crash is run again from the start by whichever replica claims the batch next.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import itertools
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from google.protobuf import json_format

from service import errors
from service._gen.embeddings.v1 import rest_pb2
from service.access.control import Principal
from service.api.rest import as_rest_error, openai_body, parse_request
from service.batches import objects
from service.batches.files import PartWriter, iter_lines
from service.batches.records import Batch, BatchRequest
from service.batches.store import BatchStore
from service.embedding import Embedder
from service.engine.errors import ContextLengthExceeded, EngineError
from service.engine.model import EmbedResult, ServedModel
from service.engine.tokenize import TokenIdDecoder
from service.jobs.records import Job, ResultsNotReady, ResultsRemoved
from service.jobs.runner import now_s

log = logging.getLogger(__name__)

MiB = 1024 * 1024
ENDPOINT = "/v1/embeddings"
EVENT_TYPES = {
    "completed": "batch.completed",
    "failed": "batch.failed",
    "cancelled": "batch.cancelled",
    "expired": "batch.expired",
}
# Lines validated per tokenizer call (token limits are checked for a block at once).
BLOCK_LINES = 256
# Requests read back per page when writing the output file.
PAGE_REQUESTS = 512
CUSTOM_ID_MAX = 512
NOT_RUN = {
    "cancelled": ("batch_cancelled", "This request was not executed because the batch was cancelled."),
    "expired": ("batch_expired", "This request could not be executed before the completion window expired."),
}


@dataclass(frozen=True)
class BatchSettings:
    max_requests: int = 50_000
    # Embedding inputs across all requests of a batch (OpenAI's /v1/embeddings batch limit).
    max_inputs: int = 50_000
    window_s: int = 24 * 3600
    lease_s: int = 60
    poll_s: float = 0.5
    # Inputs per chunk of the batch's jobs (the job engine's job_chunk_size).
    chunk_size: int = 256
    # A part (one job) holds at most this many inputs, or this much text.
    part_inputs: int = 8192
    part_text_bytes: int = 8 * MiB
    # Validation errors listed in a failed batch's `errors` (validation stops there).
    max_errors: int = 100
    # How often expired files are removed, and after how long an upload that never finished is.
    sweep_s: float = 60.0
    stale_upload_s: int = 6 * 3600


def announce_batch(batch: Batch, now: int) -> tuple[str, str] | None:
    """The event recorded in the transaction that ends a batch: its type and data (the batch object)."""
    event_type = EVENT_TYPES.get(batch.status)
    if event_type is None:
        return None
    return event_type, orjson.dumps(objects.batch_object(batch)).decode()


def batch_job_id(batch_id: str, part: int) -> str:
    return f"job_{batch_id.removeprefix('batch_')}_{part}"


def output_file_ids(batch_id: str) -> tuple[str, str]:
    suffix = batch_id.removeprefix("batch_")
    return f"file-{suffix}-out", f"file-{suffix}-err"


class LeaseLost(Exception):
    """The batch was cancelled or taken over by another worker: stop this step."""


class _Lease:
    """The worker's hold on one batch, renewed at most every third of its length."""

    def __init__(self, store: BatchStore, batch_id: str, owner: str, lease_s: int) -> None:
        self._store, self._batch_id, self._owner, self._lease_s = store, batch_id, owner, lease_s
        self._renewed = time.monotonic()

    def keep_sync(self, force: bool = False) -> None:
        if force or time.monotonic() - self._renewed > self._lease_s / 3:
            if self._store.renew_batch_lease(self._batch_id, self._owner, now_s(), self._lease_s) is None:
                raise LeaseLost(self._batch_id)
            self._renewed = time.monotonic()

    async def keep(self, force: bool = False) -> None:
        if force or time.monotonic() - self._renewed > self._lease_s / 3:
            await asyncio.to_thread(self.keep_sync, True)


# The models as the batch's key sees them (Embedder.resolve for its caller): others do not exist, as for its live
# calls.
KeyModels = Callable[[str], ServedModel]


def _line_error(line: int, code: str, message: str, param: str | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "param": param, "line": line}


def _input_count(body: dict) -> int:
    """How many embedding inputs a request body holds (a string or token-id list is one)."""
    value = body.get("input")
    if isinstance(value, list) and value and not all(isinstance(v, int) for v in value):
        return len(value)
    return 1


@dataclass
class _Structure:
    """What the first pass learns: the batch's model, and its problems."""

    model: str | None = None
    requests: int = 0
    inputs: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _Part:
    """The inputs of one job being assembled, and the requests they come from."""

    number: int
    options: dict[str, Any]
    texts: list[str] = field(default_factory=list)
    text_bytes: int = 0
    # (line, custom_id, encoding_format, start, count)
    members: list[tuple[int, str, str, int, int]] = field(default_factory=list)


@dataclass
class _Parsed:
    line: int
    custom_id: str
    parsed: Any = None
    error: errors.ApiError | None = None


class BatchWorkers:
    """One loop that claims batches needing work (validate, finalize, cancel, expire), and a file sweeper."""

    def __init__(
        self,
        store: BatchStore,
        embedder: Embedder,
        decoder: TokenIdDecoder,
        settings: BatchSettings,
        on_new_job: Callable[[], None],
    ) -> None:
        self._store = store
        self._embedder = embedder
        self._decoder = decoder
        self._settings = settings
        self._on_new_job = on_new_job
        self._owner = f"batcher-{secrets.token_hex(6)}"
        self._wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._batch_loop(), name="batch-worker"),
            loop.create_task(self._sweep_loop(), name="batch-file-sweeper"),
        ]

    def notify(self) -> None:
        """A batch was created or cancelled, or a job ended: look for work now."""
        self._wakeup.set()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _idle(self) -> None:
        self._wakeup.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), self._settings.poll_s)

    async def _batch_loop(self) -> None:
        while True:
            batch = None
            try:
                batch = await asyncio.to_thread(self._store.claim_batch, self._owner, now_s(), self._settings.lease_s)
                if batch is not None:
                    await self._run(batch)
            except LeaseLost:
                log.info("batch %s: lease lost (cancelled or taken over); leaving it", batch.id if batch else "?")
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("batch step failed (it is retried when its lease expires)")
            if batch is None:
                await self._idle()

    async def _sweep_loop(self) -> None:
        while True:
            try:
                now = now_s()
                removed = await asyncio.to_thread(self._store.expire_files, now, now - self._settings.stale_upload_s)
                if removed:
                    log.info("removed %d expired or abandoned file(s)", removed)
            except Exception:
                log.exception("removing expired files failed")
            await asyncio.sleep(self._settings.sweep_s)

    async def _run(self, batch: Batch) -> None:
        if batch.status == "validating":
            await self._validate(batch)
        elif batch.status == "cancelling":
            await self._stop_jobs(batch)
            await self._finalize(batch, "cancelled")
        elif batch.status == "in_progress" and batch.expires_at <= now_s():
            await self._stop_jobs(batch)
            await self._finalize(batch, "expired")
        elif batch.status == "in_progress":
            finalizing = await asyncio.to_thread(self._store.begin_finalizing, batch.id, self._owner, now_s())
            if finalizing is None:
                raise LeaseLost(batch.id)
            await self._finalize(finalizing, "cancelled" if finalizing.status == "cancelling" else "completed")
        elif batch.status == "finalizing":
            await self._finalize(batch, "completed")

    async def _stop_jobs(self, batch: Batch) -> None:
        for job_id in (await asyncio.to_thread(self._store.batch_jobs, batch.id)).values():
            await asyncio.to_thread(self._store.cancel_job, batch.tenant, job_id, now_s())

    # --- validation -----------------------------------------------------------------------------------------------

    async def _validate(self, batch: Batch) -> None:
        lease = _Lease(self._store, batch.id, self._owner, self._settings.lease_s)
        caller = Principal(batch.tenant, batch.key_id, False, batch.models, ())
        models: KeyModels = functools.partial(self._embedder.resolve, caller)
        structure = await asyncio.to_thread(self._check_structure, batch, models, lease)
        if structure.errors:
            log.info("batch %s failed validation: %s", batch.id, structure.errors[0]["message"])
            await asyncio.to_thread(
                self._store.fail_batch, batch.id, self._owner, structure.errors, structure.requests, now_s()
            )
            return
        rows, refused = await self._build_jobs(batch, models, structure.model, lease)
        started = await asyncio.to_thread(
            self._store.start_batch, batch.id, self._owner, structure.model, rows, structure.requests, refused, now_s()
        )
        if started is None:
            raise LeaseLost(batch.id)
        log.info("batch %s: %d requests (%d refused) running as jobs", batch.id, structure.requests, refused)
        self.notify()

    def _check_structure(self, batch: Batch, models: KeyModels, lease: _Lease) -> _Structure:
        """The first pass (blocking): every problem OpenAI reports by failing a batch, up to `max_errors`."""
        settings = self._settings
        found = _Structure()
        seen: set[str] = set()
        for line, raw in iter_lines(self._store, batch.input_file_id):
            lease.keep_sync()
            found.requests += 1
            problem = self._line_problem(line, raw, batch.endpoint, seen, models, found)
            if problem is not None:
                found.errors.append(problem)
                if len(found.errors) >= settings.max_errors:
                    return found
            if found.inputs > settings.max_inputs:
                found.errors.append(
                    _line_error(
                        line,
                        "too_many_inputs",
                        f"The batch holds more than {settings.max_inputs:,} embedding inputs, the most one "
                        "/v1/embeddings batch may hold.",
                    )
                )
                return found
        if found.requests == 0:
            found.errors.append(_line_error(1, "empty_file", "The input file holds no requests."))
        elif found.requests > settings.max_requests:
            found.errors.append(
                _line_error(
                    settings.max_requests + 1,
                    "too_many_tasks",
                    f"The batch holds {found.requests:,} requests; the limit is {settings.max_requests:,}.",
                )
            )
        return found

    @staticmethod
    def _line_problem(
        line: int, raw: bytes, endpoint: str, seen: set[str], models: KeyModels, found: _Structure
    ) -> dict[str, Any] | None:
        try:
            request = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return _line_error(line, "invalid_json_line", "This line is not parseable as valid JSON.")
        if not isinstance(request, dict):
            return _line_error(line, "invalid_json_line", "This line is not a JSON object.")
        for name in ("custom_id", "method", "url", "body"):
            if request.get(name) is None:
                return _line_error(
                    line, "missing_required_parameter", f"Missing required parameter: '{name}'.", param=name
                )
        custom_id, body = request["custom_id"], request["body"]
        if not isinstance(custom_id, str) or not custom_id or len(custom_id) > CUSTOM_ID_MAX:
            return _line_error(
                line, "invalid_custom_id", f"'custom_id' must be a string of 1 to {CUSTOM_ID_MAX} characters.",
                param="custom_id",
            )  # fmt: skip
        if custom_id in seen:
            return _line_error(
                line,
                "duplicate_custom_id",
                "The custom_id for this request is a duplicate of another request. The custom_id parameter must be "
                "unique for each request in a batch.",
                param="custom_id",
            )
        seen.add(custom_id)
        if request["method"] != "POST":
            return _line_error(line, "invalid_method", "The method must be 'POST'.", param="method")
        if request["url"] != endpoint:
            return _line_error(
                line, "url_mismatch", f"The url of this request does not match the batch's endpoint '{endpoint}'.",
                param="url",
            )  # fmt: skip
        if not isinstance(body, dict):
            return _line_error(line, "invalid_request", "'body' must be a JSON object.", param="body")
        found.inputs += _input_count(body)
        name = body.get("model")
        if isinstance(name, str) and name:
            try:
                model_id = models(name).id
            except (errors.ApiError, EngineError):
                return None  # an unknown model is the request's error (the error file), as the live call's
            if found.model is None:
                found.model = model_id
            elif model_id != found.model:
                return _line_error(
                    line,
                    "model_mismatch",
                    f"All requests of a batch must use one model: this one uses '{model_id}', earlier ones "
                    f"'{found.model}'.",
                    param="body.model",
                )
        return None

    async def _build_jobs(
        self, batch: Batch, models: KeyModels, model_id: str | None, lease: _Lease
    ) -> tuple[list[tuple], int]:
        """The second pass: each request parsed like a live call; accepted inputs become jobs, a part at a time.
        Returns the request rows (see `BatchStore.start_batch`) and how many were refused."""
        rows: list[tuple] = []
        parts: dict[tuple, _Part] = {}
        numbers = iter(range(1_000_000))
        refused = 0
        lines = iter_lines(self._store, batch.input_file_id)
        while block := await asyncio.to_thread(lambda: list(itertools.islice(lines, BLOCK_LINES))):
            await lease.keep()
            for entry in await self._parse_block(block, models):
                if entry.error is not None:
                    refused += 1
                    status, body = objects.http_error(entry.error)
                    error = orjson.dumps({"status_code": status, "body": body}).decode()
                    rows.append((entry.line, entry.custom_id, None, None, None, None, None, None, error))
                    continue
                part = self._part_for(parts, entry.parsed, numbers)
                self._add(part, entry)
                if len(part.texts) >= self._settings.part_inputs or part.text_bytes >= self._settings.part_text_bytes:
                    rows += await self._flush(batch, model_id, parts.pop(self._key(entry.parsed)), lease)
        for part in parts.values():
            rows += await self._flush(batch, model_id, part, lease)
        return rows, refused

    async def _parse_block(self, block: list[tuple[int, bytes]], models: KeyModels) -> list[_Parsed]:
        entries = []
        for line, raw in block:
            request = orjson.loads(raw)  # the first pass checked the structure
            entry = _Parsed(line, request["custom_id"])
            try:
                message = json_format.ParseDict(
                    request["body"], rest_pb2.CreateEmbeddingRequest(), ignore_unknown_fields=True
                )
            except (json_format.ParseError, TypeError, ValueError) as exc:
                entry.error = errors.invalid_input(f"Invalid request body: {exc}", reason="invalid_request")
                entries.append(entry)
                continue
            try:
                entry.parsed = await parse_request(message, models, self._decoder, compact_types=False)
            except errors.ApiError as err:
                entry.error = err
            entries.append(entry)
        refusing = [e for e in entries if e.error is None and not e.parsed.model.truncates(e.parsed.options)]
        await self._check_lengths(refusing)
        return entries

    async def _check_lengths(self, entries: list[_Parsed]) -> None:
        """context_length_exceeded for requests with an input over the model's limit, one tokenizer call a block
        (only counts are kept, and each input is read up to the model's bound, as a live call reads it)."""
        if not entries:
            return
        model = entries[0].parsed.model
        texts = [text for entry in entries for text in entry.parsed.texts]
        loop = asyncio.get_running_loop()
        measured = await loop.run_in_executor(self._embedder.registry.tokenize_executor, model.tokenizer.measure, texts)
        offset = 0
        for entry in entries:
            count = len(entry.parsed.texts)
            try:
                model.refuse_over_limit(measured[offset : offset + count])
            except ContextLengthExceeded as err:
                entry.error = as_rest_error(err)
            offset += count

    @staticmethod
    def _key(parsed: Any) -> tuple:
        return (parsed.model.id, *dataclasses.astuple(parsed.options))

    def _part_for(self, parts: dict[tuple, _Part], parsed: Any, numbers: Any) -> _Part:
        key = self._key(parsed)
        if key not in parts:
            options = {"encoding_format": "float", **dataclasses.asdict(parsed.options)}
            parts[key] = _Part(next(numbers), options)
        return parts[key]

    @staticmethod
    def _add(part: _Part, entry: _Parsed) -> None:
        texts = entry.parsed.texts
        part.members.append((entry.line, entry.custom_id, entry.parsed.encoding_format, len(part.texts), len(texts)))
        part.texts.extend(texts)
        part.text_bytes += sum(len(t) for t in texts)

    async def _flush(self, batch: Batch, model_id: str | None, part: _Part, lease: _Lease) -> list[tuple]:
        """Make (or find, after a restart) the job of one part; its requests' rows."""
        await lease.keep(force=True)
        job_id = batch_job_id(batch.id, part.number)
        job = await asyncio.to_thread(self._store.get_job, batch.tenant, job_id)
        if job is None:
            job = await asyncio.to_thread(
                self._store.create_job,
                batch.tenant,
                model_id,
                part.options,
                {"batch_id": batch.id},
                None,
                part.texts,
                self._settings.chunk_size,
                now_s(),
                job_id,
                batch.key_id,
            )
        elif job.total_inputs != len(part.texts):
            raise RuntimeError(f"batch {batch.id}: job {job_id} holds {job.total_inputs} inputs, not {len(part.texts)}")
        await asyncio.to_thread(self._store.add_batch_job, batch.id, part.number, job_id)
        self._on_new_job()
        try:
            await lease.keep(force=True)
        except LeaseLost:
            await asyncio.to_thread(self._store.cancel_job, batch.tenant, job_id, now_s())  # cancelled meanwhile
            raise
        size = job.chunk_size
        return [
            (line, custom_id, part.number, start, count, start // size, (start + count - 1) // size, encoding, None)
            for line, custom_id, encoding, start, count in part.members
        ]

    # --- finalization ---------------------------------------------------------------------------------------------

    async def _finalize(self, batch: Batch, status: str) -> None:
        lease = _Lease(self._store, batch.id, self._owner, self._settings.lease_s)
        output_id, error_id = output_file_ids(batch.id)
        now = now_s()
        writers = {}
        for file_id, kind in ((output_id, "output"), (error_id, "error")):
            await asyncio.to_thread(self._store.discard_file, file_id)  # left by an attempt cut short
            await asyncio.to_thread(
                self._store.create_file, batch.tenant, "batch_output", f"{batch.id}_{kind}.jsonl", now, file_id
            )
            writers[kind] = _LineWriter(PartWriter(self._store, file_id))
        tally = _Tally()
        await self._write_accepted(batch, status, writers, tally, lease)
        await self._write_refused(batch, writers["error"], tally, lease)
        expires_at = now_s() + batch.output_expires_after
        kept = {}
        for kind, writer in writers.items():
            await writer.close()
            file_id = writer.part_writer.file_id
            if writer.lines:
                await asyncio.to_thread(
                    self._store.finish_file, file_id, writer.part_writer.size, writer.lines, expires_at, False
                )
                kept[kind] = file_id
            else:
                await asyncio.to_thread(self._store.discard_file, file_id)
        finished = await asyncio.to_thread(
            self._store.finish_batch,
            batch.id,
            self._owner,
            status,
            kept.get("output"),
            kept.get("error"),
            tally.completed,
            tally.failed,
            tally.tokens,
            now_s(),
        )
        if finished is None:
            raise LeaseLost(batch.id)
        log.info("batch %s %s: %d completed, %d failed", batch.id, status, tally.completed, tally.failed)

    async def _write_accepted(
        self, batch: Batch, status: str, writers: dict[str, _LineWriter], tally: _Tally, lease: _Lease
    ) -> None:
        jobs = await asyncio.to_thread(self._store.batch_jobs, batch.id)
        readers: dict[int, _JobReader] = {}
        after = None
        while True:
            await lease.keep()
            page = await asyncio.to_thread(self._store.accepted_requests, batch.id, after, PAGE_REQUESTS)
            if not page:
                return
            for request in page:
                assert request.part is not None and request.start is not None
                reader = readers.get(request.part)
                if reader is None:
                    readers.clear()  # parts come in order: the previous one is done
                    reader = await _JobReader.open(self._store, batch.tenant, jobs[request.part])
                    readers[request.part] = reader
                vectors = await reader.vectors(request)
                if vectors is None:
                    code, message = reader.failure(status)
                    await writers["error"].write(objects.failure_line(request.custom_id, code, message))
                    tally.failed += 1
                    continue
                rows, counts = vectors
                result = EmbedResult(reader.job.model, rows, counts, [False] * len(counts))
                body = openai_body(result, request.encoding_format or "float")
                await writers["output"].write(objects.response_line(request.custom_id, 200, body))
                tally.completed += 1
                tally.tokens += result.prompt_tokens
            last = page[-1]
            after = (last.part, last.start)

    async def _write_refused(self, batch: Batch, writer: _LineWriter, tally: _Tally, lease: _Lease) -> None:
        after = 0
        while True:
            await lease.keep()
            page = await asyncio.to_thread(self._store.refused_requests, batch.id, after, PAGE_REQUESTS)
            if not page:
                return
            for request in page:
                error = orjson.loads(request.error or "{}")
                body = orjson.dumps(error.get("body"))
                await writer.write(objects.response_line(request.custom_id, error.get("status_code", 400), body))
                tally.failed += 1
            after = page[-1].line


@dataclass
class _Tally:
    completed: int = 0
    failed: int = 0
    tokens: int = 0


class _LineWriter:
    def __init__(self, part_writer: PartWriter) -> None:
        self.part_writer = part_writer
        self.lines = 0

    async def write(self, line: bytes) -> None:
        self.lines += 1
        await self.part_writer.write(line)

    async def close(self) -> None:
        await self.part_writer.close()


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
