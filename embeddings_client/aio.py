"""`AsyncEmbeddingsClient`: the gRPC client for asyncio (grpc.aio). Same options and behaviour as
`EmbeddingsClient` (the same calls, from `grpc_calls.py`, and the same retry and paging bookkeeping, from `base.py`);
the requests of one `embed` call run `concurrency` at a time."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from typing import TypeVar

import grpc
import numpy as np

from embeddings_client.base import (
    DEFAULT_PAGE_SIZE,
    DEFAULT_TIMEOUT_S,
    ClientCore,
    JobWait,
    ResultPages,
    concatenate,
    job_fields,
    make_params,
    request_limit,
    stack_pages,
)
from embeddings_client.config import PemSource
from embeddings_client.errors import EmbeddingsError, from_grpc_error
from embeddings_client.grpc_calls import (
    Connection,
    Rpc,
    embed_rpc,
    job_rpc,
    list_jobs_rpc,
    model_rpc,
    models_rpc,
    results_rpc,
    submit_rpc,
)
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


class AsyncEmbeddingsClient(ClientCore):
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
        super().__init__(model=model, timeout=timeout, retry=retry, max_request_bytes=max_request_bytes)
        self.concurrency = concurrency
        self._connection = Connection(
            target,
            api_key=api_key,
            tls=tls,
            root_certificates=root_certificates,
            client_certificate=client_certificate,
            client_key=client_key,
            server_name=server_name,
            channel_options=channel_options,
            metadata=metadata,
            asynchronous=True,
        )
        self.target = self._connection.target

    async def close(self) -> None:
        await self._connection.channel.close()

    async def __aenter__(self) -> AsyncEmbeddingsClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _call(self, rpc: Rpc[T], timeout: float) -> T:
        try:
            response = await self._connection.method(rpc)(
                rpc.request, metadata=self._connection.metadata, timeout=timeout
            )
        except grpc.aio.AioRpcError as err:
            raise from_grpc_error(err) from None
        return rpc.read(response)

    async def _retrying(
        self, call: Callable[[float], Awaitable[T]], timeout: float | None, idempotent: bool = True
    ) -> T:
        attempts = self._attempts(timeout, idempotent)
        while True:
            left = attempts.next()
            try:
                return await call(left)
            except EmbeddingsError as err:
                error = err
            await asyncio.sleep(attempts.wait_after(error))

    def _retrying_rpc(self, rpc: Rpc[T], timeout: float | None, idempotent: bool = True) -> Awaitable[T]:
        return self._retrying(lambda left: self._call(rpc, left), timeout, idempotent)

    # --- models ------------------------------------------------------------------------------------------------

    async def models(self, timeout: float | None = None) -> list[ModelInfo]:
        return self._remember(await self._retrying_rpc(models_rpc(), timeout))

    async def model(self, name: str | None = None, timeout: float | None = None) -> ModelInfo:
        name = self._model_name(name)
        if name not in self._models:
            self._models[name] = await self._retrying_rpc(model_rpc(name), timeout)
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
        limit = request_limit(info, batch_size)
        gate = asyncio.Semaphore(self.concurrency)

        async def one(start: int, stop: int) -> EmbedBatch:
            async with gate:
                try:
                    batch = await self._retrying_rpc(embed_rpc(items[start:stop], params), timeout)
                except EmbeddingsError as err:
                    raise err.shifted(start) from None
            return replace(batch, start=start)

        tasks = [asyncio.ensure_future(one(a, b)) for a, b in plan_batches(items, limit, self.max_request_bytes)]
        try:
            batches = await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        return concatenate(batches, dimensions or info.dimensions)

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
        fields = job_fields(metadata, webhook_id)
        return await self._retrying_rpc(submit_rpc(as_texts(texts), params, fields), timeout, idempotent=False)

    async def get_job(self, job_id: str, timeout: float | None = None) -> Job:
        return await self._retrying_rpc(job_rpc("get", job_id), timeout)

    async def cancel_job(self, job_id: str, timeout: float | None = None) -> Job:
        return await self._retrying_rpc(job_rpc("cancel", job_id), timeout, idempotent=False)

    async def list_jobs(self, limit: int = 20, after: str | None = None, timeout: float | None = None) -> JobPage:
        return await self._retrying_rpc(list_jobs_rpc(limit, after), timeout)

    async def wait_job(
        self,
        job_id: str,
        *,
        poll_interval_s: float = 1.0,
        timeout: float | None = None,
        on_progress: Callable[[Job], None] | None = None,
    ) -> Job:
        """Poll until the job is completed, failed or cancelled; returns the finished job."""
        waiting = JobWait(job_id, poll_interval_s, timeout, on_progress)
        while not waiting.ended(job := await self.get_job(job_id)):
            await asyncio.sleep(poll_interval_s)
        return job

    async def job_results(
        self, job_id: str, *, page_size: int = DEFAULT_PAGE_SIZE, timeout: float | None = None
    ) -> np.ndarray:
        """All of a completed job's vectors, in input order: an array [inputs, dimensions]."""
        pages, kept = ResultPages(), []
        while not pages.done:
            rows = pages.take(await self._retrying_rpc(results_rpc(job_id, pages.offset, page_size), timeout))
            if len(rows):
                kept.append(rows)
        return stack_pages(kept)
