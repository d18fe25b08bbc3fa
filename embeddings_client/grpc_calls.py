"""The gRPC calls of both gRPC clients (blocking `client.py`, asyncio `aio.py`), transport-free: which method, the
request, and how its response reads. The clients differ only in how they send one (and wait for it).

Vectors travel as raw little-endian float32 (`ENCODING_FORMAT_BYTES`), the cheapest form to decode.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import grpc
import numpy as np
from google.protobuf import json_format, struct_pb2
from google.protobuf.message import Message

from embeddings_client._proto import embeddings_pb2 as pb
from embeddings_client._proto import embeddings_pb2_grpc as pb_grpc
from embeddings_client._proto import jobs_pb2, jobs_pb2_grpc, rest_pb2
from embeddings_client.base import EmbedParams
from embeddings_client.config import PemSource, Target, TlsFiles, auth_metadata, grpc_channel, parse_target
from embeddings_client.types import EmbedBatch, Job, JobPage, ModelInfo

T = TypeVar("T")
_INPUT_TYPES = {"": pb.INPUT_TYPE_UNSPECIFIED, "query": pb.INPUT_TYPE_QUERY, "document": pb.INPUT_TYPE_DOCUMENT}


@dataclass(frozen=True)
class Rpc(Generic[T]):
    """One unary call: the service and method (as the generated stubs name them), the request, the reading."""

    service: str  # "embeddings" or "jobs"
    method: str
    request: Message
    read: Callable[[Any], T]


class Connection:
    """A channel to the server and what goes with every call on it: the stubs and the metadata (API key first)."""

    def __init__(
        self,
        target: str,
        *,
        api_key: str | None,
        tls: bool | None,
        root_certificates: PemSource | None,
        client_certificate: PemSource | None,
        client_key: PemSource | None,
        server_name: str | None,
        channel_options: Mapping[str, object] | Sequence[tuple[str, object]],
        metadata: Sequence[tuple[str, str]],
        asynchronous: bool,
    ) -> None:
        self.target: Target = parse_target(target, tls)
        files = TlsFiles.load(root_certificates, client_certificate, client_key, server_name)
        self.channel = grpc_channel(self.target, files, channel_options, asynchronous=asynchronous)
        self._stubs = {
            "embeddings": pb_grpc.EmbeddingServiceStub(self.channel),
            "jobs": jobs_pb2_grpc.JobServiceStub(self.channel),
        }
        self.metadata = (*auth_metadata(api_key), *metadata)

    def method(self, rpc: Rpc) -> grpc.UnaryUnaryMultiCallable:
        return getattr(self._stubs[rpc.service], rpc.method)


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
    cached = response.usage.prompt_tokens_details.cached_tokens
    return EmbedBatch(0, vectors, tokens, truncated, response.model, cached)


def model_info(message: pb.Model) -> ModelInfo:
    return ModelInfo.from_fields(json_format.MessageToDict(message, preserving_proto_field_name=True))


def job_info(message: jobs_pb2.Job) -> Job:
    return Job.from_fields(json_format.MessageToDict(message, preserving_proto_field_name=True))


def job_page(response: jobs_pb2.ListJobsResponse) -> JobPage:
    return JobPage([job_info(j) for j in response.data], response.has_more, response.last_id)


def submit_request(
    texts: Sequence[str], params: EmbedParams, metadata: Mapping[str, str]
) -> rest_pb2.CreateEmbeddingRequest:
    """JobService.AsyncEmbed's request: /v1/embeddings' own message, with the job's metadata."""
    values = [struct_pb2.Value(string_value=t) for t in texts]
    return rest_pb2.CreateEmbeddingRequest(
        input=struct_pb2.Value(list_value=struct_pb2.ListValue(values=values)),
        encoding_format="base64",  # results pages: base64 of float32, the compact form
        metadata=dict(metadata),
        **params.rest_fields(),
    )


def embed_rpc(texts: Sequence[str], params: EmbedParams) -> Rpc[EmbedBatch]:
    return Rpc("embeddings", "Embed", embed_request(texts, params), embed_batch)


def models_rpc() -> Rpc[list[ModelInfo]]:
    return Rpc("embeddings", "ListModels", pb.ListModelsRequest(), lambda r: [model_info(m) for m in r.data])


def model_rpc(name: str) -> Rpc[ModelInfo]:
    return Rpc("embeddings", "GetModel", pb.GetModelRequest(model=name), lambda r: model_info(r.model))


def submit_rpc(texts: Sequence[str], params: EmbedParams, metadata: Mapping[str, str]) -> Rpc[Job]:
    return Rpc("jobs", "AsyncEmbed", submit_request(texts, params, metadata), job_info)


def job_rpc(action: str, job_id: str) -> Rpc[Job]:
    """`get` or `cancel` one job."""
    if action == "cancel":
        return Rpc("jobs", "CancelJob", jobs_pb2.CancelJobRequest(id=job_id), job_info)
    return Rpc("jobs", "GetJob", jobs_pb2.GetJobRequest(id=job_id), job_info)


def list_jobs_rpc(limit: int, after: str | None) -> Rpc[JobPage]:
    return Rpc("jobs", "ListJobs", jobs_pb2.ListJobsRequest(limit=limit, after=after or ""), job_page)


def results_rpc(job_id: str, offset: int, limit: int) -> Rpc[dict]:
    """One page of a job's results: the /v1/embeddings-shaped JSON document the server sends as is."""
    request = jobs_pb2.GetJobResultsRequest(id=job_id, offset=offset, limit=limit)
    return Rpc("jobs", "GetJobResults", request, lambda r: json.loads(r.data))
