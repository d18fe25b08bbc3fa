"""The Batch API's servicers: OpenAI's /v1/files and /v1/batches, answering OpenAI's JSON (as google.api.HttpBody).

Uploads arrive as a stream of HttpBody pieces and are stored as they come (service/batches/files.py); downloads
stream the stored parts back. Batches are validated and run in the background (service/batches/runner.py); these
calls only create, read, list and cancel them. Everything is the caller's tenant's: another tenant's file or batch
reads as missing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.api import httpbody_pb2

from service import errors
from service._gen.embeddings.v1 import batches_pb2 as pb
from service._gen.embeddings.v1 import batches_pb2_grpc as pb_grpc
from service.access.interceptor import caller_of
from service.api.paging import page_limit
from service.api.rpc_errors import rpc_errors, rpc_stream_errors
from service.batches import objects
from service.batches.files import UploadLimits, UploadReceiver, expiry_seconds, stream_parts
from service.batches.records import NewBatch
from service.batches.settings import ENDPOINT, BatchSettings
from service.batches.store import BatchStore
from service.jobs.records import InvalidCursor, NotFound
from service.worker_loops import now_s

log = logging.getLogger(__name__)

DEFAULT_FILE_PAGE = MAX_FILE_PAGE = 10_000
DEFAULT_BATCH_PAGE, MAX_BATCH_PAGE = 20, 100
# OpenAI's metadata bounds: 16 pairs, keys up to 64 characters, values up to 512.
MAX_METADATA_PAIRS, MAX_METADATA_KEY, MAX_METADATA_VALUE = 16, 64, 512
COMPLETION_WINDOW = "24h"


def _json(value: Any) -> httpbody_pb2.HttpBody:
    return httpbody_pb2.HttpBody(content_type="application/json", data=objects.dumps(value))


def _not_found(kind: str, ident: str, field: str) -> errors.ApiError:
    return errors.ApiError(grpc.StatusCode.NOT_FOUND, f"No such {kind}: '{ident}'.", f"{kind}_not_found", field=field)


def _page(items: list[dict], has_more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": items,
        "first_id": items[0]["id"] if items else None,
        "last_id": items[-1]["id"] if items else None,
        "has_more": has_more,
    }


class FileServicer(pb_grpc.FileServiceServicer):
    def __init__(self, store: BatchStore, limits: UploadLimits) -> None:
        self._store = store
        self._limits = limits

    @rpc_errors
    async def CreateFile(self, request_iterator: AsyncIterator[httpbody_pb2.HttpBody], context) -> Any:
        receiver = UploadReceiver(self._store, caller_of(context).tenant, now_s(), self._limits)
        record = await receiver.receive(request_iterator)
        log.info("file %s uploaded: %d bytes, %d lines", record.id, record.bytes, record.lines)
        return _json(objects.file_object(record))

    @rpc_errors
    async def ListFiles(self, request: pb.ListFilesRequest, context) -> httpbody_pb2.HttpBody:
        limit = page_limit(request.limit, DEFAULT_FILE_PAGE, MAX_FILE_PAGE)
        if request.order not in ("", "asc", "desc"):
            raise errors.invalid_input("'order' must be 'asc' or 'desc'.", field="order")
        try:
            page = await asyncio.to_thread(
                self._store.list_files,
                caller_of(context).tenant,
                limit,
                request.after or None,
                request.order == "asc",
                request.purpose or None,
            )
        except InvalidCursor:
            raise errors.invalid_input(f"'after' names no file: '{request.after}'.", field="after") from None
        return _json(_page([objects.file_object(f) for f in page.items], page.has_more))

    @rpc_errors
    async def RetrieveFile(self, request: pb.RetrieveFileRequest, context) -> httpbody_pb2.HttpBody:
        record = await asyncio.to_thread(self._store.get_file, caller_of(context).tenant, request.file_id)
        if record is None:
            raise _not_found("file", request.file_id, "file_id")
        return _json(objects.file_object(record))

    @rpc_errors
    async def DeleteFile(self, request: pb.DeleteFileRequest, context) -> httpbody_pb2.HttpBody:
        if not await asyncio.to_thread(self._store.delete_file, caller_of(context).tenant, request.file_id, now_s()):
            raise _not_found("file", request.file_id, "file_id")
        return _json({"id": request.file_id, "object": "file", "deleted": True})

    @rpc_stream_errors
    async def GetFileContent(self, request: pb.GetFileContentRequest, context) -> AsyncIterator[Any]:
        record = await asyncio.to_thread(self._store.get_file, caller_of(context).tenant, request.file_id)
        if record is None:
            raise _not_found("file", request.file_id, "file_id")
        first = True
        async for data in stream_parts(self._store, record.id):
            yield httpbody_pb2.HttpBody(content_type="application/octet-stream" if first else "", data=data)
            first = False
        if first:  # an empty file still answers 200 with its (empty) body
            yield httpbody_pb2.HttpBody(content_type="application/octet-stream", data=b"")


def _check_metadata(metadata: dict[str, str]) -> None:
    if len(metadata) > MAX_METADATA_PAIRS:
        raise errors.invalid_input(f"'metadata' holds at most {MAX_METADATA_PAIRS} pairs.", field="metadata")
    for key, value in metadata.items():
        if len(key) > MAX_METADATA_KEY or len(value) > MAX_METADATA_VALUE:
            raise errors.invalid_input(
                f"'metadata' keys hold at most {MAX_METADATA_KEY} characters and values {MAX_METADATA_VALUE}.",
                field="metadata",
            )


def _missing(name: str) -> errors.ApiError:
    message = f"Missing required parameter: '{name}'."
    return errors.invalid_input(message, field=name, reason="missing_required_parameter")


class BatchServicer(pb_grpc.BatchServiceServicer):
    def __init__(self, store: BatchStore, settings: BatchSettings, on_change: Callable[[], None]) -> None:
        self._store = store
        self._settings = settings
        self._on_change = on_change

    async def _answer(self, batch) -> httpbody_pb2.HttpBody:
        completed = None
        if batch.status in ("in_progress", "finalizing", "cancelling"):
            completed = await asyncio.to_thread(self._store.completed_requests, batch.id)
        return _json(objects.batch_object(batch, completed))

    def _check(self, request: pb.CreateBatchRequest) -> int:
        """Everything the request says that can be checked now; the output files' lifetime."""
        for name in ("input_file_id", "endpoint", "completion_window"):
            if not getattr(request, name):
                raise _missing(name)
        if request.endpoint != ENDPOINT:
            raise errors.invalid_input(
                f"This service runs batches of '{ENDPOINT}' only, not '{request.endpoint}'.",
                field="endpoint",
                reason="invalid_value",
            )
        if request.completion_window != COMPLETION_WINDOW:
            raise errors.invalid_input(
                f"'completion_window' must be '{COMPLETION_WINDOW}'.", field="completion_window", reason="invalid_value"
            )
        _check_metadata(dict(request.metadata))
        expires = request.output_expires_after
        if request.HasField("output_expires_after"):
            return expiry_seconds(expires.anchor, expires.seconds, "output_expires_after")
        return expiry_seconds(None, None, "output_expires_after")

    @rpc_errors
    async def CreateBatch(self, request: pb.CreateBatchRequest, context) -> httpbody_pb2.HttpBody:
        output_expires_after = self._check(request)
        metadata = dict(request.metadata)
        webhook_id = metadata.get("webhook_id") or None
        caller = caller_of(context)
        tenant = caller.tenant
        record = await asyncio.to_thread(self._store.get_file, tenant, request.input_file_id)
        if record is None:
            raise _not_found("file", request.input_file_id, "input_file_id")
        if record.purpose != "batch":
            raise errors.invalid_input(
                f"File '{record.id}' has purpose '{record.purpose}': a batch's input file must have purpose 'batch'.",
                field="input_file_id",
                reason="invalid_value",
            )
        try:
            new = NewBatch(
                tenant,
                caller.key_id,
                caller.models,
                record.id,
                request.endpoint,
                request.completion_window,
                metadata,
                webhook_id,
                output_expires_after,
                self._settings.window_s,
            )
            batch = await asyncio.to_thread(self._store.create_batch, new, now_s())
        except NotFound as exc:
            if webhook_id is not None and "webhook" in str(exc):
                raise errors.invalid_input(
                    f"No webhook with id '{webhook_id}': create one with POST /v1/webhooks.",
                    field="metadata.webhook_id",
                ) from None
            raise _not_found("file", request.input_file_id, "input_file_id") from None
        log.info("batch %s created from %s", batch.id, record.id)
        self._on_change()
        return _json(objects.batch_object(batch))

    @rpc_errors
    async def RetrieveBatch(self, request: pb.RetrieveBatchRequest, context) -> httpbody_pb2.HttpBody:
        batch = await asyncio.to_thread(self._store.get_batch, caller_of(context).tenant, request.batch_id)
        if batch is None:
            raise _not_found("batch", request.batch_id, "batch_id")
        return await self._answer(batch)

    @rpc_errors
    async def CancelBatch(self, request: pb.CancelBatchRequest, context) -> httpbody_pb2.HttpBody:
        batch = await asyncio.to_thread(self._store.cancel_batch, caller_of(context).tenant, request.batch_id, now_s())
        if batch is None:
            raise _not_found("batch", request.batch_id, "batch_id")
        self._on_change()
        return await self._answer(batch)

    @rpc_errors
    async def ListBatches(self, request: pb.ListBatchesRequest, context) -> httpbody_pb2.HttpBody:
        limit = page_limit(request.limit, DEFAULT_BATCH_PAGE, MAX_BATCH_PAGE)
        tenant = caller_of(context).tenant
        try:
            page = await asyncio.to_thread(self._store.list_batches, tenant, limit, request.after or None)
        except InvalidCursor:
            raise errors.invalid_input(f"'after' names no batch: '{request.after}'.", field="after") from None
        return _json(_page([objects.batch_object(b) for b in page.items], page.has_more))
