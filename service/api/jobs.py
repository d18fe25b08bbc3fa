"""Async jobs and webhooks API: validates and stores jobs, pages results, manages webhook endpoints.

Everything a job needs is checked before it is accepted (model, inputs, dimensions, sizes, token limits), so an
accepted job fails only for reasons outside the caller's request. Work itself is done by service/jobs/runner.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections.abc import Callable, Mapping

import grpc
import numpy as np
import orjson
from google.api import httpbody_pb2

from service import errors
from service._gen.embeddings.v1 import jobs_pb2 as pb
from service._gen.embeddings.v1 import jobs_pb2_grpc as pb_grpc
from service._gen.embeddings.v1 import rest_pb2
from service.access.control import Principal
from service.access.interceptor import acting_for, caller_of
from service.api.paging import page_limit
from service.api.rest import as_rest_error, parse_request, vector_items
from service.api.rpc_errors import rpc_errors
from service.embedding import Embedder
from service.engine.errors import EngineError
from service.engine.quantize import FLOAT
from service.engine.tokenize import TokenIdDecoder
from service.fields import derive
from service.jobs import webhooks
from service.jobs.records import InvalidCursor, Job, NewJob, NotFound, ResultsNotReady, ResultsRemoved, TooManyWebhooks
from service.jobs.runner import JobSettings
from service.jobs.store import JobStore
from service.worker_loops import now_s

DEFAULT_PAGE, MAX_PAGE = 1000, 10000
# OpenAI's limits on `metadata`: 16 pairs, keys up to 64 characters, values up to 512.
MAX_METADATA_PAIRS, MAX_METADATA_KEY, MAX_METADATA_VALUE = 16, 64, 512
MAX_DESCRIPTION = 512


def _too_long(param: str, what: str, length: int, limit: int) -> errors.ApiError:
    """OpenAI's wording and code for a string over its maximum length."""
    return errors.invalid_input(
        f"Invalid '{what}': string too long. Expected a string with maximum length {limit}, but got a string with "
        f"length {length} instead.",
        field=param,
        reason="string_above_max_length",
    )


def checked_metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    """A job's metadata within OpenAI's limits, else 400 (checked before any work on the inputs)."""
    if len(metadata) > MAX_METADATA_PAIRS:
        raise errors.invalid_input(
            f"Invalid 'metadata': too many properties. Expected an object with at most {MAX_METADATA_PAIRS} "
            f"properties, but got an object with {len(metadata)} properties instead.",
            field="metadata",
            reason="object_above_max_properties",
        )
    for key, value in metadata.items():
        if len(key) > MAX_METADATA_KEY:
            raise _too_long("metadata", "metadata key", len(key), MAX_METADATA_KEY)
        if len(value) > MAX_METADATA_VALUE:
            raise _too_long("metadata", f"metadata.{key}", len(value), MAX_METADATA_VALUE)
    return dict(metadata)


def _not_found(kind: str, ident: str) -> errors.ApiError:
    return errors.ApiError(grpc.StatusCode.NOT_FOUND, f"No {kind} with id '{ident}'.", f"{kind}_not_found", field="id")


def job_message(job: Job) -> pb.Job:
    """The record's fields the message shares (absent where None), and those it words its own way."""
    options = job.options
    error = job.error
    return derive(
        pb.Job,
        job,
        object="embedding.job",
        completed_at=job.completed_at or job.failed_at,
        input_count=job.total_inputs,
        progress=pb.JobProgress(completed=job.completed_inputs, total=job.total_inputs),
        usage=pb.JobUsage(prompt_tokens=job.prompt_tokens, total_tokens=job.prompt_tokens),
        error=pb.JobError(code=error.get("code", ""), message=error.get("message", "")) if error else None,
        results_url=f"/v1/async/jobs/{job.id}/results",
        encoding_format=options.get("encoding_format", "float"),
        dimensions=options.get("dimensions"),
        embedding_type=options.get("embedding_type", FLOAT),
    )


def results_body(job: Job, vectors: np.ndarray, token_counts: list[int], offset: int, has_more: bool) -> bytes:
    """One page of results as a /v1/embeddings response (plus paging fields), in the job's encoding_format: the
    items the live call writes (`vector_items`), from the vectors as stored (float32, or a compact type's bytes)."""
    data = vector_items(vectors, job.options.get("encoding_format", "float"), offset)
    tokens = sum(token_counts)
    body = {
        "object": "list",
        "data": data,
        "model": job.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        "has_more": has_more,
        "next_offset": offset + len(data) if has_more else None,
    }
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


class JobServicer(pb_grpc.JobServiceServicer):
    def __init__(
        self,
        store: JobStore,
        embedder: Embedder,
        decoder: TokenIdDecoder,
        settings: JobSettings,
        *,
        on_new_job: Callable[[], None],
    ) -> None:
        self._store = store
        self._embedder = embedder
        self._decoder = decoder
        self._settings = settings
        self._on_new_job = on_new_job

    async def _validated_inputs(
        self, caller: Principal, request: rest_pb2.CreateEmbeddingRequest
    ) -> tuple[str, list[str], dict]:
        resolve = functools.partial(self._embedder.resolve, caller)
        parsed = await parse_request(request, resolve, self._decoder, self._settings.max_inputs_per_job)
        truncate = parsed.model.truncates(parsed.options)  # decided now: the job runs as it was validated
        if not truncate:
            try:
                await parsed.model.check_lengths(parsed.texts)  # context_length_exceeded before the job exists
            except EngineError as err:
                raise as_rest_error(err) from None
        # encoding_format as the caller spelled it ("int8" reads back as it was asked: JSON integers).
        asked = request.encoding_format or parsed.encoding_format
        stored = {"encoding_format": asked, **dataclasses.asdict(parsed.options), "truncate": truncate}
        return parsed.model.id, parsed.texts, stored

    @rpc_errors
    async def AsyncEmbed(self, request: rest_pb2.CreateEmbeddingRequest, context) -> pb.Job:
        caller = acting_for(context, request.user)
        metadata = checked_metadata(request.metadata)
        model_id, texts, options = await self._validated_inputs(caller, request)
        webhook_id = metadata.get("webhook_id") or None
        try:
            # key_id, user: its chunks are metered, and rate-limited, as this key's and this end user's.
            new = NewJob(
                caller.tenant,
                model_id,
                options,
                metadata,
                webhook_id,
                texts,
                self._settings.chunk_size,
                key_id=caller.key_id,
                user=caller.user,
            )
            job = await asyncio.to_thread(self._store.create_job, new, now_s())
        except NotFound:
            raise errors.invalid_input(
                f"No webhook with id '{webhook_id}': create one with POST /v1/webhooks.", field="metadata.webhook_id"
            ) from None
        self._embedder.job_accepted(caller, model_id)
        self._on_new_job()
        return job_message(job)

    @rpc_errors
    async def GetJob(self, request: pb.GetJobRequest, context) -> pb.Job:
        job = await asyncio.to_thread(self._store.get_job, caller_of(context).tenant, request.id)
        if job is None:
            raise _not_found("job", request.id)
        return job_message(job)

    @rpc_errors
    async def ListJobs(self, request: pb.ListJobsRequest, context) -> pb.ListJobsResponse:
        limit = page_limit(request.limit, 20, 100)
        tenant = caller_of(context).tenant
        try:
            page = await asyncio.to_thread(self._store.list_jobs, tenant, limit, request.after or None)
        except InvalidCursor:
            raise errors.invalid_input(f"'after' names no job: '{request.after}'.", field="after") from None
        return pb.ListJobsResponse(
            object="list",
            data=[job_message(j) for j in page.items],
            has_more=page.has_more,
            first_id=page.first_id or "",
            last_id=page.last_id or "",
        )

    @rpc_errors
    async def CancelJob(self, request: pb.CancelJobRequest, context) -> pb.Job:
        job = await asyncio.to_thread(self._store.cancel_job, caller_of(context).tenant, request.id, now_s())
        if job is None:
            raise _not_found("job", request.id)
        self._on_new_job()  # deliver the cancellation event promptly
        return job_message(job)

    @rpc_errors
    async def GetJobResults(self, request: pb.GetJobResultsRequest, context) -> httpbody_pb2.HttpBody:
        limit = request.limit or DEFAULT_PAGE
        if not 1 <= limit <= MAX_PAGE or request.offset < 0:
            raise errors.invalid_input(f"'limit' must be 1..{MAX_PAGE} and 'offset' at least 0.", field="limit")
        tenant = caller_of(context).tenant
        job = await asyncio.to_thread(self._store.get_job, tenant, request.id)
        if job is None:
            raise _not_found("job", request.id)
        try:
            vectors, counts, has_more = await asyncio.to_thread(
                self._store.results, tenant, request.id, request.offset, limit
            )
        except ResultsRemoved:
            raise errors.ApiError(
                grpc.StatusCode.NOT_FOUND,
                f"The results of job '{job.id}' expired and were removed at {job.expires_at} (unix time).",
                "results_expired",
                field="id",
            ) from None
        except ResultsNotReady:
            raise errors.ApiError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"Job '{job.id}' is {job.status}: {job.completed_inputs} of {job.total_inputs} inputs are done.",
                "results_not_ready",
                field="id",
            ) from None
        return httpbody_pb2.HttpBody(
            content_type="application/json", data=results_body(job, vectors, counts, request.offset, has_more)
        )

    @rpc_errors
    async def CreateWebhook(self, request: pb.CreateWebhookRequest, context) -> pb.Webhook:
        if len(request.url) > webhooks.MAX_URL_LENGTH:
            raise _too_long("url", "url", len(request.url), webhooks.MAX_URL_LENGTH)
        if len(request.description) > MAX_DESCRIPTION:
            raise _too_long("description", "description", len(request.description), MAX_DESCRIPTION)
        try:
            url = webhooks.validate_url(request.url, self._settings.webhook_allow_private)
        except ValueError as exc:
            raise errors.invalid_input(str(exc), field="url") from None
        secret = webhooks.generate_secret()
        cap = self._settings.max_webhooks_per_tenant
        try:
            hook = await asyncio.to_thread(
                self._store.create_webhook, caller_of(context).tenant, url, request.description, secret, now_s(), cap
            )
        except TooManyWebhooks:
            raise errors.invalid_input(
                f"This tenant already has {cap} webhook endpoints, the most allowed: delete one "
                "first (DELETE /v1/webhooks/{id}).",
                reason="webhook_limit_reached",
            ) from None
        message = _webhook_message(hook)
        message.secret = secret
        return message

    @rpc_errors
    async def ListWebhooks(self, request: pb.ListWebhooksRequest, context) -> pb.ListWebhooksResponse:
        hooks = await asyncio.to_thread(self._store.list_webhooks, caller_of(context).tenant)
        return pb.ListWebhooksResponse(object="list", data=[_webhook_message(h) for h in hooks])

    @rpc_errors
    async def DeleteWebhook(self, request: pb.DeleteWebhookRequest, context) -> pb.DeleteWebhookResponse:
        if not await asyncio.to_thread(self._store.delete_webhook, caller_of(context).tenant, request.id, now_s()):
            raise _not_found("webhook", request.id)
        return pb.DeleteWebhookResponse(id=request.id, object="webhook", deleted=True)

    @rpc_errors
    async def ListWebhookDeliveries(
        self, request: pb.ListWebhookDeliveriesRequest, context
    ) -> pb.ListWebhookDeliveriesResponse:
        limit = page_limit(request.limit, 50, 500)
        tenant = caller_of(context).tenant
        attempts = await asyncio.to_thread(self._store.list_attempts, tenant, request.id, limit)
        if not attempts and await asyncio.to_thread(self._store.get_webhook, tenant, request.id) is None:
            raise _not_found("webhook", request.id)
        data = [
            derive(
                pb.WebhookDelivery,
                a,
                id=a.delivery_id,
                object="webhook.delivery",
                error=a.error or None,
                outcome="succeeded" if a.status_code is not None and 200 <= a.status_code < 300 else "failed",
            )
            for a in attempts
        ]
        return pb.ListWebhookDeliveriesResponse(object="list", data=data)


def _webhook_message(hook) -> pb.Webhook:
    message = pb.Webhook(
        id=hook.id,
        object="webhook",
        url=hook.url,
        description=hook.description,
        created_at=hook.created_at,
    )
    if hook.disabled_at is not None:
        message.disabled_at = hook.disabled_at
        message.disabled_reason = hook.disabled_reason or ""
    return message
