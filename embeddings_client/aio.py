"""`AsyncEmbeddingsClient`: the gRPC client for asyncio (grpc.aio). Same options and behaviour as
`EmbeddingsClient`; the requests of one `embed` call run `concurrency` at a time."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TypeVar

import grpc
import numpy as np

from embeddings_client._proto import embeddings_pb2 as pb
from embeddings_client._proto import embeddings_pb2_grpc as pb_grpc
from embeddings_client._proto import jobs_pb2, jobs_pb2_grpc
from embeddings_client.base import (
    DEFAULT_PAGE_SIZE,
    DEFAULT_TIMEOUT_S,
    EmbedParams,
    concatenate,
    make_params,
    page_vectors,
)
from embeddings_client.client import embed_batch, embed_request, job_info, model_info, submit_request
from embeddings_client.config import PemSource, TlsFiles, auth_metadata, grpc_channel, parse_target
from embeddings_client.errors import DeadlineExceededError, EmbeddingsError, from_grpc_error
from embeddings_client.retry import RetryPolicy
from embeddings_client.types import (
    DEFAULT_MAX_REQUEST_BYTES,
    EmbedBatch,
    Job,
    JobPage,
    ModelInfo,
    as_texts,
    plan_batches,
)

T = TypeVar("T")


class AsyncEmbeddingsClient:
    """An asyncio client of the embeddings gRPC API (see `EmbeddingsClient` for the options).

    ```python
    async with AsyncEmbeddingsClient("grpc://127.0.0.1:50051", model="all-minilm-l6-v2") as client:
        vectors = await client.embed(texts)
    ```
    """

    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        *,
        api_key: str | None = None,
        model: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        retry: RetryPolicy | None = None,
        tls: bool | None = None,
        root_certificates: PemSource | None = None,
        client_certificate: PemSource | None = None,
        client_key: PemSource | None = None,
        server_name: str | None = None,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        concurrency: int = 4,
        channel_options: Mapping[str, object] | Sequence[tuple[str, object]] = (),
        metadata: Sequence[tuple[str, str]] = (),
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.default_model = model
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.max_request_bytes = max_request_bytes
        self.concurrency = concurrency
        self.target = parse_target(target, tls)
        files = TlsFiles.load(root_certificates, client_certificate, client_key, server_name)
        self._channel = grpc_channel(self.target, files, channel_options, asynchronous=True)
        self._embeddings = pb_grpc.EmbeddingServiceStub(self._channel)
        self._jobs = jobs_pb2_grpc.JobServiceStub(self._channel)
        self._metadata = (*auth_metadata(api_key), *metadata)
        self._models: dict[str, ModelInfo] = {}

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncEmbeddingsClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _unary(self, method, request, timeout: float):
        try:
            return await method(request, metadata=self._metadata, timeout=timeout)
        except grpc.aio.AioRpcError as err:
            raise from_grpc_error(err) from None

    async def _retrying(
        self, call: Callable[[float], Awaitable[T]], timeout: float | None, idempotent: bool = True
    ) -> T:
        budget = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + budget
        attempt = 0
        while True:
            attempt += 1
            left = deadline - time.monotonic()
            if left <= 0:
                raise DeadlineExceededError(f"no answer within {budget:g} s", code="DEADLINE_EXCEEDED")
            try:
                return await call(left)
            except EmbeddingsError as err:
                error = err
            wait = self.retry.delay(attempt, error, idempotent)
            if wait is None or time.monotonic() + wait >= deadline:
                raise error
            self.retry.notify(attempt, error, wait)
            await asyncio.sleep(wait)

    # --- models ------------------------------------------------------------------------------------------------

    async def models(self, timeout: float | None = None) -> list[ModelInfo]:
        async def call(left: float) -> list[ModelInfo]:
            return [
                model_info(m)
                for m in (await self._unary(self._embeddings.ListModels, pb.ListModelsRequest(), left)).data
            ]

        found = await self._retrying(call, timeout)
        self._models.update({m.id: m for m in found})
        return found

    async def model(self, name: str | None = None, timeout: float | None = None) -> ModelInfo:
        name = name or self.default_model
        if not name:
            raise ValueError("no model: pass a name or set the client's model")
        if name not in self._models:

            async def call(left: float) -> ModelInfo:
                response = await self._unary(self._embeddings.GetModel, pb.GetModelRequest(model=name), left)
                return model_info(response.model)

            self._models[name] = await self._retrying(call, timeout)
        return self._models[name]

    # --- embeddings --------------------------------------------------------------------------------------------

    async def embed(
        self,
        texts: str | Sequence[str],
        model: str | None = None,
        *,
        dimensions: int | None = None,
        normalize: bool | None = None,
        input_type: str | None = None,
        truncate: bool | None = None,
        user: str | None = None,
        batch_size: int | None = None,
        timeout: float | None = None,
    ) -> np.ndarray:
        """One float32 vector per text, in order: an array [len(texts), dimensions]. The texts are split to the
        server's limits and the requests run `concurrency` at a time; the first failure cancels the rest."""
        items = as_texts(texts)
        params = make_params(model, self.default_model, dimensions, normalize, input_type, truncate, user)
        info = await self.model(params.model, timeout)
        limit = min(info.max_inputs_per_request, batch_size or info.max_inputs_per_request)
        gate = asyncio.Semaphore(self.concurrency)

        async def one(start: int, stop: int) -> EmbedBatch:
            async with gate:
                try:
                    batch = await self._retrying(
                        lambda left: self._embed_call(items[start:stop], params, left), timeout
                    )
                except EmbeddingsError as err:
                    raise err.shifted(start) from None
            return EmbedBatch(start, batch.vectors, batch.tokens, batch.truncated, batch.model)

        tasks = [asyncio.ensure_future(one(a, b)) for a, b in plan_batches(items, limit, self.max_request_bytes)]
        try:
            batches = await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        return concatenate(batches, dimensions or info.dimensions)

    async def _embed_call(self, texts: list[str], params: EmbedParams, timeout: float) -> EmbedBatch:
        return embed_batch(await self._unary(self._embeddings.Embed, embed_request(texts, params), timeout))

    # --- async jobs --------------------------------------------------------------------------------------------

    async def submit_job(
        self,
        texts: Sequence[str],
        model: str | None = None,
        *,
        dimensions: int | None = None,
        normalize: bool | None = None,
        input_type: str | None = None,
        truncate: bool | None = None,
        user: str | None = None,
        metadata: Mapping[str, str] | None = None,
        webhook_id: str | None = None,
        timeout: float | None = None,
    ) -> Job:
        params = make_params(model, self.default_model, dimensions, normalize, input_type, truncate, user)
        fields = {**(metadata or {}), **({"webhook_id": webhook_id} if webhook_id else {})}
        request = submit_request(as_texts(texts), params, fields)

        async def call(left: float) -> Job:
            return job_info(await self._unary(self._jobs.AsyncEmbed, request, left))

        return await self._retrying(call, timeout, idempotent=False)

    async def get_job(self, job_id: str, timeout: float | None = None) -> Job:
        async def call(left: float) -> Job:
            return job_info(await self._unary(self._jobs.GetJob, jobs_pb2.GetJobRequest(id=job_id), left))

        return await self._retrying(call, timeout)

    async def cancel_job(self, job_id: str, timeout: float | None = None) -> Job:
        async def call(left: float) -> Job:
            return job_info(await self._unary(self._jobs.CancelJob, jobs_pb2.CancelJobRequest(id=job_id), left))

        return await self._retrying(call, timeout, idempotent=False)

    async def list_jobs(self, limit: int = 20, after: str | None = None, timeout: float | None = None) -> JobPage:
        async def call(left: float) -> JobPage:
            request = jobs_pb2.ListJobsRequest(limit=limit, after=after or "")
            page = await self._unary(self._jobs.ListJobs, request, left)
            return JobPage([job_info(j) for j in page.data], page.has_more, page.last_id)

        return await self._retrying(call, timeout)

    async def wait_job(
        self,
        job_id: str,
        *,
        poll_interval_s: float = 1.0,
        timeout: float | None = None,
        on_progress: Callable[[Job], None] | None = None,
    ) -> Job:
        """Poll until the job is completed, failed or cancelled; returns the finished job."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = await self.get_job(job_id)
            if on_progress is not None:
                on_progress(job)
            if job.finished:
                return job
            if deadline is not None and time.monotonic() + poll_interval_s > deadline:
                raise DeadlineExceededError(
                    f"job {job_id} is still {job.status} after {timeout:g} s", code="DEADLINE_EXCEEDED"
                )
            await asyncio.sleep(poll_interval_s)

    async def job_results(
        self, job_id: str, *, page_size: int = DEFAULT_PAGE_SIZE, timeout: float | None = None
    ) -> np.ndarray:
        """All of a completed job's vectors, in input order: an array [inputs, dimensions]."""
        pages, offset = [], 0
        while True:

            async def call(left: float, at: int = offset) -> dict:
                request = jobs_pb2.GetJobResultsRequest(id=job_id, offset=at, limit=page_size)
                return json.loads((await self._unary(self._jobs.GetJobResults, request, left)).data)

            page = await self._retrying(call, timeout)
            rows = page_vectors(page)
            if len(rows):
                pages.append(rows)
            offset += len(rows)
            if not page.get("has_more") or not len(rows):
                return np.concatenate(pages) if pages else np.zeros((0, 0), np.float32)
