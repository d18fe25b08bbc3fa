"""The native gRPC API: translates between `embeddings.v1` messages and the engine."""

from __future__ import annotations

import json
import time

import grpc
from google.protobuf import struct_pb2

from service import errors
from service._gen.embeddings.v1 import embeddings_pb2 as pb
from service._gen.embeddings.v1 import embeddings_pb2_grpc as pb_grpc
from service.access.interceptor import acting_for, caller_of
from service.api.rpc_errors import rpc_errors
from service.api.wire import embed_response_bytes
from service.embedding import Embedder
from service.engine.model import EmbedOptions, EmbedResult, ServedModel
from service.fields import derive
from service.observability.context import note_model, timing_headers
from service.pricing import PriceList

_INPUT_TYPES = {pb.INPUT_TYPE_UNSPECIFIED: "", pb.INPUT_TYPE_QUERY: "query", pb.INPUT_TYPE_DOCUMENT: "document"}
_EMBEDDING_TYPES = {
    pb.EMBEDDING_TYPE_UNSPECIFIED: "float",
    pb.EMBEDDING_TYPE_FLOAT: "float",
    pb.EMBEDDING_TYPE_INT8: "int8",
    pb.EMBEDDING_TYPE_UINT8: "uint8",
    pb.EMBEDDING_TYPE_BINARY: "binary",
    pb.EMBEDDING_TYPE_UBINARY: "ubinary",
}


def deadline_of(context: grpc.aio.ServicerContext) -> float | None:
    """The call's deadline in the engine's clock (time.monotonic()), if the client set one."""
    remaining = context.time_remaining()
    if remaining is None:
        return None
    return time.monotonic() + remaining


def _as_text(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def model_message(model: ServedModel, aliases: list[str], prices: PriceList | None = None) -> pb.Model:
    """The manifest's fields the message shares, and what the server adds: aliases, limits, types, price."""
    manifest = model.manifest
    price = prices.of(model) if prices is not None else None
    return derive(
        pb.Model,
        manifest,
        object="model",
        aliases=aliases,
        query_prefix=manifest.query_prefix,
        document_prefix=manifest.document_prefix,
        modality="embedding",
        provenance=provenance_struct(manifest.provenance),
        max_inputs_per_request=model.max_inputs,
        embedding_types=model.embedding_types,
        currency=prices.currency if prices is not None else "",
        price_per_million_tokens=float(price.per_million_tokens) if price is not None else None,
    )


def provenance_struct(provenance: dict) -> struct_pb2.Struct:
    """The manifest's provenance as a JSON object (values round-trip through JSON: Struct holds only JSON types)."""
    value = struct_pb2.Struct()
    value.update(json.loads(json.dumps(provenance)))
    return value


def embed_response(result: EmbedResult, encoding: int) -> pb.EmbedResponse:
    compact = result.vectors.dtype.itemsize == 1  # int8/uint8 (and packed bits): always bytes
    as_bytes = compact or encoding == pb.ENCODING_FORMAT_BYTES
    vectors = result.vectors if compact else result.vectors.astype("<f4", copy=False)
    # Python floats fill a repeated float field ~5x faster than numpy scalars do.
    rows = [row.tobytes() for row in vectors] if as_bytes else vectors.tolist()
    field = "data" if as_bytes else "values"
    embeddings = [
        pb.Embedding(index=i, tokens=n, truncated=cut, **{field: row})
        for i, (row, n, cut) in enumerate(zip(rows, result.token_counts, result.truncated, strict=True))
    ]
    usage = pb.Usage(prompt_tokens=result.prompt_tokens, total_tokens=result.prompt_tokens)
    if result.cached_tokens:
        usage.prompt_tokens_details.cached_tokens = result.cached_tokens
    dimensions = result.dimensions or vectors.shape[1]
    return pb.EmbedResponse(model=result.model, embeddings=embeddings, usage=usage, dimensions=dimensions)


def embed_response_wire(result: EmbedResult, encoding: int) -> bytes:
    """The same response as `embed_response`, serialized without a message (service/api/wire.py): what Embed sends."""
    compact = result.vectors.dtype.itemsize == 1
    vectors = result.vectors if compact else result.vectors.astype("<f4", copy=False)
    return embed_response_bytes(
        result.model,
        vectors,
        compact or encoding == pb.ENCODING_FORMAT_BYTES,
        result.token_counts,
        result.truncated,
        result.prompt_tokens,
        result.dimensions or vectors.shape[1],
        result.cached_tokens,
    )


class EmbeddingServicer(pb_grpc.EmbeddingServiceServicer):
    def __init__(self, embedder: Embedder) -> None:
        self._embedder = embedder

    @rpc_errors
    async def Embed(self, request: pb.EmbedRequest, context: grpc.aio.ServicerContext) -> pb.EmbedResponse:
        if request.encoding_format not in pb.EncodingFormat.values():
            raise errors.invalid_input("Unknown encoding_format.", field="encoding_format")
        caller = acting_for(context, request.user)
        model = self._embedder.resolve(caller, request.model)
        note_model(model.id)
        options = EmbedOptions(
            dimensions=request.dimensions if request.HasField("dimensions") else None,
            normalize=request.normalize if request.HasField("normalize") else None,
            truncate=request.truncate if request.HasField("truncate") else None,
            input_type=_INPUT_TYPES.get(request.input_type, "?"),
            embedding_type=_EMBEDDING_TYPES.get(request.embedding_type, "?"),
        )
        result = await self._embedder.embed(caller, model, list(request.inputs), options, deadline_of(context))
        # Trailing, not initial, metadata: it leaves with the status, where initial metadata costs an extra
        # send (~0.1 ms a call, measured), which native clients calling this hot path should not pay for.
        context.set_trailing_metadata(timing_headers())
        # Bytes in wire format, sent as they are (the telemetry interceptor's serializer passes bytes through).
        return embed_response_wire(result, request.encoding_format)  # type: ignore[return-value]

    @rpc_errors
    async def ListModels(self, request: pb.ListModelsRequest, context) -> pb.ListModelsResponse:
        registry = self._embedder.registry
        if not registry.ready:
            raise errors.unavailable("The server is starting: models are still loading. Retry shortly.")
        models = []
        if request.modality in ("", "embedding"):
            prices, allowed = self._embedder.prices, self._embedder.models(caller_of(context))
            models = [model_message(m, registry.aliases_of(m), prices) for m in allowed]
        return pb.ListModelsResponse(object="list", data=models)

    @rpc_errors
    async def GetModel(self, request: pb.GetModelRequest, context) -> pb.GetModelResponse:
        model = self._embedder.resolve(caller_of(context), request.model)
        message = model_message(model, self._embedder.registry.aliases_of(model), self._embedder.prices)
        return pb.GetModelResponse(model=message)
