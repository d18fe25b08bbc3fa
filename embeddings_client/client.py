"""The gRPC client: `EmbeddingsClient` (blocking). `AsyncEmbeddingsClient` (asyncio) is in `aio.py`.

Vectors travel as raw little-endian float32 (`ENCODING_FORMAT_BYTES`), the cheapest form to decode.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import grpc
import numpy as np
from google.protobuf import json_format, struct_pb2

from embeddings_client._proto import embeddings_pb2 as pb
from embeddings_client._proto import embeddings_pb2_grpc as pb_grpc
from embeddings_client._proto import jobs_pb2, jobs_pb2_grpc
from embeddings_client.base import DEFAULT_TIMEOUT_S, EmbedParams, SyncClientBase
from embeddings_client.config import PemSource, TlsFiles, auth_metadata, grpc_channel, parse_target
from embeddings_client.errors import from_grpc_error
from embeddings_client.retry import RetryPolicy
from embeddings_client.types import DEFAULT_MAX_REQUEST_BYTES, EmbedBatch, Job, JobPage, ModelInfo

_INPUT_TYPES = {"": pb.INPUT_TYPE_UNSPECIFIED, "query": pb.INPUT_TYPE_QUERY, "document": pb.INPUT_TYPE_DOCUMENT}


def embed_request(texts: Sequence[str], params: EmbedParams) -> pb.EmbedRequest:
    request = pb.EmbedRequest(
        model=params.model,
        inputs=texts,
        encoding_format=pb.ENCODING_FORMAT_BYTES,
        input_type=_INPUT_TYPES[params.input_type],
        user=params.user,
    )
    if params.dimensions is not None:
        request.dimensions = params.dimensions
    if params.normalize is not None:
        request.normalize = params.normalize
    if params.truncate is not None:
        request.truncate = params.truncate
    return request


def embed_batch(response: pb.EmbedResponse) -> EmbedBatch:
    """The vectors of an EmbedResponse (bytes, or floats from a server that ignored the format)."""
    items = response.embeddings
    if items and not items[0].data:
        vectors = np.array([list(e.values) for e in items], dtype=np.float32)
    else:
        raw = b"".join(e.data for e in items)
        vectors = np.frombuffer(raw, dtype="<f4").reshape(len(items), -1).astype(np.float32)
    tokens = np.fromiter((e.tokens for e in items), dtype=np.int64, count=len(items))
    truncated = np.fromiter((e.truncated for e in items), dtype=bool, count=len(items))
    return EmbedBatch(0, vectors, tokens, truncated, response.model)


def model_info(message: pb.Model) -> ModelInfo:
    return ModelInfo.from_fields(json_format.MessageToDict(message, preserving_proto_field_name=True))


def job_info(message: jobs_pb2.Job) -> Job:
    return Job.from_fields(json_format.MessageToDict(message, preserving_proto_field_name=True))


def submit_request(
    texts: Sequence[str], params: EmbedParams, metadata: Mapping[str, str]
) -> jobs_pb2.AsyncEmbedRequest:
    values = [struct_pb2.Value(string_value=t) for t in texts]
    return jobs_pb2.AsyncEmbedRequest(
        input=struct_pb2.Value(list_value=struct_pb2.ListValue(values=values)),
        encoding_format="base64",  # results pages: base64 of float32, the compact form
        metadata=dict(metadata),
        **params.rest_fields(),
    )


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
        self.target = parse_target(target, tls)
        files = TlsFiles.load(root_certificates, client_certificate, client_key, server_name)
        self._channel = grpc_channel(self.target, files, channel_options)
        self._embeddings = pb_grpc.EmbeddingServiceStub(self._channel)
        self._jobs = jobs_pb2_grpc.JobServiceStub(self._channel)
        self._metadata = (*auth_metadata(api_key), *metadata)

    def close(self) -> None:
        self._channel.close()

    def _unary(self, method, request, timeout: float):
        try:
            return method(request, metadata=self._metadata, timeout=timeout)
        except grpc.RpcError as err:
            raise from_grpc_error(err) from None

    def _embed_call(self, texts: list[str], params: EmbedParams, timeout: float) -> EmbedBatch:
        return embed_batch(self._unary(self._embeddings.Embed, embed_request(texts, params), timeout))

    def _model_call(self, name: str, timeout: float) -> ModelInfo:
        return model_info(self._unary(self._embeddings.GetModel, pb.GetModelRequest(model=name), timeout).model)

    def _models_call(self, timeout: float) -> list[ModelInfo]:
        return [model_info(m) for m in self._unary(self._embeddings.ListModels, pb.ListModelsRequest(), timeout).data]

    def _submit_call(self, texts: list[str], params: EmbedParams, metadata: dict[str, str], timeout: float) -> Job:
        return job_info(self._unary(self._jobs.AsyncEmbed, submit_request(texts, params, metadata), timeout))

    def _job_call(self, action: str, job_id: str, timeout: float) -> Job:
        if action == "cancel":
            return job_info(self._unary(self._jobs.CancelJob, jobs_pb2.CancelJobRequest(id=job_id), timeout))
        return job_info(self._unary(self._jobs.GetJob, jobs_pb2.GetJobRequest(id=job_id), timeout))

    def _list_jobs_call(self, limit: int, after: str | None, timeout: float) -> JobPage:
        page = self._unary(self._jobs.ListJobs, jobs_pb2.ListJobsRequest(limit=limit, after=after or ""), timeout)
        return JobPage([job_info(j) for j in page.data], page.has_more, page.last_id)

    def _results_call(self, job_id: str, offset: int, limit: int, timeout: float) -> dict:
        request = jobs_pb2.GetJobResultsRequest(id=job_id, offset=offset, limit=limit)
        return json.loads(self._unary(self._jobs.GetJobResults, request, timeout).data)
