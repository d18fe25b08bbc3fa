"""The gRPC client: `EmbeddingsClient` (blocking). `AsyncEmbeddingsClient` (asyncio) is in `aio.py`; the calls both
send are in `grpc_calls.py`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypeVar

import grpc

from embeddings_client.base import DEFAULT_TIMEOUT_S, EmbedParams, SyncClientBase
from embeddings_client.config import PemSource
from embeddings_client.errors import from_grpc_error
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
from embeddings_client.types import DEFAULT_MAX_REQUEST_BYTES, EmbedBatch, Job, JobPage, ModelInfo

T = TypeVar("T")


class EmbeddingsClient(SyncClientBase):
    """A blocking client of the embeddings gRPC API.

    ```python
    with EmbeddingsClient("grpc://127.0.0.1:50051", api_key=..., model="all-minilm-l6-v2") as client:
        vectors = client.embed(["first text", "second text"])  # float32 array [2, 384]
    ```

    `target`: `grpc://host:port` or `host:port` (plaintext), `grpcs://host[:port]` (TLS; or `tls=True`).
    `api_key` (default: none) is sent as `authorization: Bearer`. TLS: `root_certificates` (PEM bytes or a file;
    default the system's roots), `client_certificate` + `client_key` for mutual TLS, `server_name` to check the
    certificate for another name. `timeout`: seconds each call may take, its retries included. `retry`: back-off
    on UNAVAILABLE and RESOURCE_EXHAUSTED (honouring the server's retry-after-ms). `channel_options`: extra gRPC
    channel arguments, over those shipped in grpc_config.json. `metadata`: sent with every call.
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
        channel_options: Mapping[str, object] | Sequence[tuple[str, object]] = (),
        metadata: Sequence[tuple[str, str]] = (),
    ) -> None:
        super().__init__(model=model, timeout=timeout, retry=retry, max_request_bytes=max_request_bytes)
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
            asynchronous=False,
        )
        self.target = self._connection.target

    def close(self) -> None:
        self._connection.channel.close()

    def _call(self, rpc: Rpc[T], timeout: float) -> T:
        try:
            response = self._connection.method(rpc)(rpc.request, metadata=self._connection.metadata, timeout=timeout)
        except grpc.RpcError as err:
            raise from_grpc_error(err) from None
        return rpc.read(response)

    def _embed_call(self, texts: list[str], params: EmbedParams, timeout: float) -> EmbedBatch:
        return self._call(embed_rpc(texts, params), timeout)

    def _model_call(self, name: str, timeout: float) -> ModelInfo:
        return self._call(model_rpc(name), timeout)

    def _models_call(self, timeout: float) -> list[ModelInfo]:
        return self._call(models_rpc(), timeout)

    def _submit_call(self, texts: list[str], params: EmbedParams, metadata: dict[str, str], timeout: float) -> Job:
        return self._call(submit_rpc(texts, params, metadata), timeout)

    def _job_call(self, action: str, job_id: str, timeout: float) -> Job:
        return self._call(job_rpc(action, job_id), timeout)

    def _list_jobs_call(self, limit: int, after: str | None, timeout: float) -> JobPage:
        return self._call(list_jobs_rpc(limit, after), timeout)

    def _results_call(self, job_id: str, offset: int, limit: int, timeout: float) -> dict:
        return self._call(results_rpc(job_id, offset, limit), timeout)
