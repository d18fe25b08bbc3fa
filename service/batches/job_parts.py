"""The second pass over a batch's input file: each request parsed as the live `/v1/embeddings` parses it, and the
accepted inputs cut into jobs.

A refused request (its body, its model, an input over the model's token limit) becomes a row carrying the error the
live call would answer, for the error file. Accepted inputs are grouped by option set into "parts" of at most
`part_inputs` inputs (or `part_text_bytes` of text); each part is one job, named after the batch and the part's
number, so a validation that restarts after a crash finds the jobs it already made.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import orjson
from google.protobuf import json_format

from service import errors
from service._gen.embeddings.v1 import rest_pb2
from service.api.rest import ASYNC_ONLY_FIELDS, as_rest_error, parse_request
from service.batches import objects
from service.batches.files import iter_lines
from service.batches.input_checks import KeyModels
from service.batches.lease import BatchLease, LeaseLost
from service.batches.records import Batch
from service.batches.settings import BatchSettings
from service.batches.store import BatchStore
from service.engine.errors import ContextLengthExceeded
from service.engine.tokenize import TokenIdDecoder
from service.jobs.records import NewJob
from service.worker_loops import now_s

# Lines validated per tokenizer call (token limits are checked for a block at once).
BLOCK_LINES = 256


def batch_job_id(batch_id: str, part: int) -> str:
    return f"job_{batch_id.removeprefix('batch_')}_{part}"


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


class JobParts:
    """Builds one batch's jobs from its input file (the second pass of its validation)."""

    def __init__(
        self,
        store: BatchStore,
        settings: BatchSettings,
        decoder: TokenIdDecoder,
        tokenize_executor: Executor,
        on_new_job: Callable[[], None],
    ) -> None:
        self._store = store
        self._settings = settings
        self._decoder = decoder
        self._tokenize_executor = tokenize_executor
        self._on_new_job = on_new_job

    async def build(
        self, batch: Batch, models: KeyModels, model_id: str | None, lease: BatchLease
    ) -> tuple[list[tuple], int]:
        """The request rows (see `BatchStore.start_batch`), the accepted ones' jobs made, and how many were
        refused."""
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
                    rows.append(_refused_row(entry))
                    continue
                part = _part_for(parts, entry.parsed, numbers)
                _add(part, entry)
                if len(part.texts) >= self._settings.part_inputs or part.text_bytes >= self._settings.part_text_bytes:
                    rows += await self._flush(batch, model_id, parts.pop(_key(entry.parsed)), lease)
        for part in parts.values():
            rows += await self._flush(batch, model_id, part, lease)
        return rows, refused

    async def _parse_block(self, block: list[tuple[int, bytes]], models: KeyModels) -> list[_Parsed]:
        entries = []
        for line, raw in block:
            request = orjson.loads(raw)  # the first pass checked the structure
            entry = _Parsed(line, request["custom_id"])
            # Fields the body does not use are ignored, as they were before CreateEmbeddingRequest gained the async
            # jobs' `metadata` (which a batch line's request keeps nowhere: ignored too, whatever its type).
            body = {name: value for name, value in request["body"].items() if name not in ASYNC_ONLY_FIELDS}
            try:
                message = json_format.ParseDict(body, rest_pb2.CreateEmbeddingRequest(), ignore_unknown_fields=True)
            except (json_format.ParseError, TypeError, ValueError) as exc:
                entry.error = errors.invalid_input(f"Invalid request body: {exc}", reason="invalid_request")
                entries.append(entry)
                continue
            try:
                entry.parsed = await parse_request(message, models, self._decoder)
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
        measured = await loop.run_in_executor(self._tokenize_executor, model.tokenizer.measure, texts)
        offset = 0
        for entry in entries:
            count = len(entry.parsed.texts)
            try:
                model.refuse_over_limit(measured[offset : offset + count])
            except ContextLengthExceeded as err:
                entry.error = as_rest_error(err)
            offset += count

    async def _flush(self, batch: Batch, model_id: str | None, part: _Part, lease: BatchLease) -> list[tuple]:
        """Make (or find, after a restart) the job of one part; its requests' rows."""
        await lease.keep(force=True)
        job_id = batch_job_id(batch.id, part.number)
        job = await asyncio.to_thread(self._store.get_job, batch.tenant, job_id)
        if job is None:
            new = NewJob(
                batch.tenant,
                model_id,
                part.options,
                {"batch_id": batch.id},
                None,
                part.texts,
                self._settings.chunk_size,
                job_id,
                batch.key_id,
            )
            job = await asyncio.to_thread(self._store.create_job, new, now_s())
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


def _refused_row(entry: _Parsed) -> tuple:
    """A refused request's row: no part, and the error the live call would answer (status and OpenAI body)."""
    assert entry.error is not None
    status, body = objects.http_error(entry.error)
    error = orjson.dumps({"status_code": status, "body": body}).decode()
    return (entry.line, entry.custom_id, None, None, None, None, None, None, error)


def _key(parsed: Any) -> tuple:
    return (parsed.model.id, *dataclasses.astuple(parsed.options))


def _part_for(parts: dict[tuple, _Part], parsed: Any, numbers: Iterator[int]) -> _Part:
    key = _key(parsed)
    if key not in parts:
        options = {"encoding_format": "float", **dataclasses.asdict(parsed.options)}
        parts[key] = _Part(next(numbers), options)
    return parts[key]


def _add(part: _Part, entry: _Parsed) -> None:
    texts = entry.parsed.texts
    part.members.append((entry.line, entry.custom_id, entry.parsed.encoding_format, len(part.texts), len(texts)))
    part.texts.extend(texts)
    part.text_bytes += sum(len(t) for t in texts)
