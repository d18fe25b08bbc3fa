"""The OpenAI-compatible REST surface (served through Envoy's transcoder): OpenAI shapes in, OpenAI JSON out.

Responses are `google.api.HttpBody` holding JSON written here with orjson: float32 in shortest form, `index: 0`
present, numbers as numbers - what the transcoder's own printing cannot give. Errors are `ApiError`s whose
`field` is renamed to OpenAI's `param` names; the gateway turns them into OpenAI's error envelope.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import time
from collections.abc import Callable

import grpc
import numpy as np
import orjson
from google.api import httpbody_pb2
from google.protobuf import struct_pb2

from service import errors
from service._gen.embeddings.v1 import embeddings_pb2
from service._gen.embeddings.v1 import rest_pb2 as pb
from service._gen.embeddings.v1 import rest_pb2_grpc as pb_grpc
from service.access.interceptor import acting_for, caller_of
from service.api.embeddings import deadline_of, model_message, rpc_errors
from service.api.engine_errors import as_api_error
from service.embedding import Embedder
from service.engine.errors import EngineError
from service.engine.model import EmbedOptions, EmbedResult, ServedModel
from service.engine.quantize import EMBEDDING_TYPES, FLOAT
from service.engine.tokenize import TokenIdDecoder, token_id_bound
from service.observability.context import note_model, timing_headers

ENCODING_FORMATS = ("float", "base64")
# encoding_format values that ask for a compact embedding type as JSON integers (an extension).
COMPACT_FORMATS = tuple(t for t in EMBEDDING_TYPES if t != FLOAT)
_INPUT_SHAPES = "a string, an array of strings, an array of token ids, or an array of arrays of token ids"
# Fields of CreateEmbeddingRequest that only async jobs take (JobService.AsyncEmbed shares the message): the
# synchronous routes refuse them (`refuse_async_only`), and the OpenAPI document leaves them out of their bodies.
ASYNC_ONLY_FIELDS = ("metadata",)


def _bad_input(message: str) -> errors.ApiError:
    return errors.invalid_input(message, field="input")


# One number of a ListValue as protobuf writes it: the element's tag and length (9), the Value's number_value tag
# (field 2, fixed64), the double. Any other element starts differently, so the token ids of an input are read from
# its wire form in bulk, without a Python object per id.
_NUMBER = np.dtype([("head", "V3"), ("value", "<f8")])
_NUMBER_HEAD = np.void(b"\x0a\x09\x11")
# The integers a JSON number (a double) holds exactly.
_MAX_EXACT_INTEGER = 2**53


def _wire_numbers(values: struct_pb2.ListValue, count: int) -> np.ndarray | None:
    """The first `count` elements of `values` as doubles, read from its wire form; None unless all are numbers
    written as protobuf writes them."""
    wire = values.SerializeToString()
    if len(wire) < count * _NUMBER.itemsize:
        return None  # shorter than `count` numbers: not all of them are
    elements = np.frombuffer(wire, dtype=_NUMBER, count=count)
    return elements["value"] if (elements["head"] == _NUMBER_HEAD).all() else None


def _token_ids(values: struct_pb2.ListValue, position: int, max_ids: int) -> np.ndarray:
    """The first `max_ids` token ids of one input (see `token_id_bound`), read in bulk from the list's wire form:
    ~15 ns an id where a Python loop over the Values took ~1.7 us (3M ids, what a 32 MiB message holds, held the
    event loop for 5 s)."""
    count = min(len(values.values), max_ids)
    if count == 0:
        raise _bad_input(f"Input {position} is an empty array of token ids.")
    numbers = _wire_numbers(values, count)
    if numbers is None:  # not all numbers, or numbers with unknown fields (a crafted message): drop those, once
        values.DiscardUnknownFields()
        numbers = _wire_numbers(values, count)
    if numbers is None:
        raise _bad_input(f"Input {position} must be an array of integer token ids.")
    with np.errstate(invalid="ignore"):
        integral = np.isfinite(numbers) & (numbers == np.trunc(numbers)) & (np.abs(numbers) <= _MAX_EXACT_INTEGER)
    if not integral.all():
        raise _bad_input(f"Input {position} must be an array of integer token ids.")
    return numbers.astype(np.int64)


def split_input(value: struct_pb2.Value, max_ids: int, max_inputs: int) -> tuple[list[str], list[np.ndarray]]:
    """The texts, or the token-id sequences, of an OpenAI `input` (exactly one of the two is non-empty). Only the
    first `max_ids` ids of a sequence are read (see `token_id_bound`); more than `max_inputs` inputs are refused
    before any of them is read."""
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return [value.string_value], []
    if kind != "list_value":
        missing = kind is None or kind == "null_value"
        raise _bad_input("'input' is required." if missing else f"'input' must be {_INPUT_SHAPES}.")
    items = value.list_value.values
    if not items:
        raise _bad_input("'input' must not be an empty array.")
    if items[0].WhichOneof("kind") == "number_value":
        return [], [_token_ids(value.list_value, 0, max_ids)]  # one input: its ids past the bound are never read
    if len(items) > max_inputs:
        raise errors.too_many_inputs(len(items), max_inputs)
    kinds = {item.WhichOneof("kind") for item in items}
    if kinds == {"string_value"}:
        return [item.string_value for item in items], []
    if kinds == {"list_value"}:
        return [], [_token_ids(item.list_value, n, max_ids) for n, item in enumerate(items)]
    raise _bad_input(f"'input' must be {_INPUT_SHAPES}; arrays may not mix these.")


@dataclasses.dataclass(frozen=True)
class ParsedRequest:
    """An OpenAI-style embeddings request, checked and turned into engine terms."""

    model: ServedModel
    texts: list[str]
    options: EmbedOptions
    encoding_format: str


async def parse_request(
    request,
    resolve: Callable[[str], ServedModel],
    decoder: TokenIdDecoder,
    max_inputs: int | None = None,
) -> ParsedRequest:
    """Check and convert a CreateEmbeddingRequest (of a live call, an async job or a batch line), with the model
    `resolve` finds for the caller (`Embedder.resolve`). `metadata` is the caller's concern (`refuse_async_only`).

    `max_inputs` raises the input cap (async jobs). Errors name OpenAI's parameters (`input`, not `inputs[3]`).
    """
    encoding_format, embedding_type = _vector_format(request)
    if request.HasField("dimensions") and request.dimensions < 1:
        raise errors.invalid_input(f"'dimensions' must be at least 1, got {request.dimensions}.", field="dimensions")
    if not request.model:
        raise errors.invalid_input("'model' is required.", field="model")
    try:
        model = resolve(request.model)
    except EngineError as err:
        raise as_api_error(err) from None
    note_model(model.id)
    try:
        texts, token_ids = split_input(
            request.input, token_id_bound(model.tokenizer.max_chars), model.input_cap(max_inputs)
        )
    except errors.ApiError as err:
        raise as_rest_error(err) from None
    options = EmbedOptions(
        dimensions=request.dimensions if request.HasField("dimensions") else None,
        normalize=request.normalize if request.HasField("normalize") else None,
        truncate=request.truncate if request.HasField("truncate") else None,
        input_type=request.input_type,
        embedding_type=embedding_type,
    )
    try:
        if token_ids:
            texts = await decoder.decode(token_ids)
        model.validate(texts, options, max_inputs)
    except EngineError as err:
        raise as_rest_error(err) from None
    return ParsedRequest(model, texts, options, encoding_format)


def refuse_async_only(request: pb.CreateEmbeddingRequest) -> None:
    """400 for a synchronous call that sets a field only async jobs take (`metadata`), in OpenAI's words for an
    argument it does not know: kept with nothing, it would be silently dropped."""
    for name in ASYNC_ONLY_FIELDS:
        if getattr(request, name):
            raise errors.invalid_input(
                f"Unrecognized request argument supplied: {name} (only async jobs take it: POST /v1/async/embeddings).",
                field=name,
                reason="invalid_request",
            )


def _vector_format(request) -> tuple[str, str]:
    """(encoding_format, embedding_type): "float" or "base64", and the number type. `encoding_format: "int8"` is
    `embedding_type: "int8"` as JSON integers."""
    encoding_format = request.encoding_format or "float"
    embedding_type = request.embedding_type or FLOAT
    allowed = ENCODING_FORMATS + COMPACT_FORMATS
    if encoding_format not in allowed:
        raise errors.invalid_input(
            f"'encoding_format' must be one of {', '.join(repr(f) for f in allowed)}, got {request.encoding_format!r}.",
            field="encoding_format",
        )
    if embedding_type not in EMBEDDING_TYPES:
        raise errors.invalid_input(
            f"'embedding_type' must be one of {', '.join(repr(t) for t in EMBEDDING_TYPES)}, got {embedding_type!r}.",
            field="embedding_type",
        )
    if encoding_format in COMPACT_FORMATS:
        if embedding_type not in (FLOAT, encoding_format):
            raise errors.invalid_input(
                f"'encoding_format' {encoding_format!r} asks for {encoding_format} vectors, but 'embedding_type' "
                f"says {embedding_type!r}.",
                field="embedding_type",
            )
        return "float", encoding_format
    return encoding_format, embedding_type


def as_rest_error(err: errors.ApiError | EngineError) -> errors.ApiError:
    """The API error, with engine fields (`inputs[3]`) renamed to OpenAI's parameter names (`input`)."""
    err = as_api_error(err)
    if err.field and err.field.startswith("inputs"):
        return dataclasses.replace(err, field="input")
    return err


def vector_items(vectors: np.ndarray, encoding_format: str, first_index: int = 0) -> list[dict]:
    """OpenAI's items: floats as JSON numbers or base64 of little-endian float32; compact types (int8/uint8 arrays)
    as JSON integers or base64 of their bytes. Any other `encoding_format` (a compact type's name) is JSON numbers.
    Async job results and batch output lines are written by this too, so they equal the live call's answer."""
    vectors = vectors if vectors.dtype.itemsize == 1 else vectors.astype("<f4", copy=False)
    if encoding_format == "base64":
        return [
            {"object": "embedding", "index": first_index + i, "embedding": base64.b64encode(row.tobytes()).decode()}
            for i, row in enumerate(vectors)
        ]
    return [{"object": "embedding", "index": first_index + i, "embedding": row} for i, row in enumerate(vectors)]


def usage_of(result: EmbedResult, cache_details: bool = True) -> dict:
    """OpenAI's usage, every input's tokens counted, with those served from the embedding cache beside them (in
    `prompt_tokens_details.cached_tokens`, as OpenAI's chat usage reports its cached tokens) when `cache_details`
    (a batch's output lines, assembled from stored chunks, do not know it and leave it out)."""
    tokens = result.prompt_tokens
    usage: dict = {"prompt_tokens": tokens, "total_tokens": tokens}
    if cache_details:
        usage["prompt_tokens_details"] = {"cached_tokens": result.cached_tokens}
    return usage


def openai_body(result: EmbedResult, encoding_format: str, cache_details: bool = True) -> bytes:
    usage = usage_of(result, cache_details)
    body = {
        "object": "list",
        "data": vector_items(result.vectors, encoding_format),
        "model": result.model,
        "usage": usage,
    }
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


def scaigrid_body(result: EmbedResult, encoding_format: str) -> bytes:
    usage = usage_of(result)
    items = [
        {"index": item["index"], "embedding": item["embedding"]}
        for item in vector_items(result.vectors, encoding_format)
    ]
    body = {"status": "ok", "data": {"model": result.model, "data": items, "usage": usage}}
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


def _timed(method: Callable) -> Callable:
    """Send `openai-processing-ms` (as response headers through the gateway) with every answer, errors included,
    and the engine's timing headers (x-queue-time, x-inference-time, ...) with every embedding."""

    @functools.wraps(method)
    async def wrapper(self, request, context: grpc.aio.ServicerContext):
        started = time.perf_counter()
        try:
            response = await method(self, request, context)
        except (errors.ApiError, EngineError) as exc:
            err = as_rest_error(exc)
            headers = {**err.headers, "openai-processing-ms": _elapsed_ms(started)}
            raise dataclasses.replace(err, headers=headers) from None
        await context.send_initial_metadata((("openai-processing-ms", _elapsed_ms(started)), *timing_headers()))
        return response

    return wrapper


def _elapsed_ms(started: float) -> str:
    return str(max(0, round((time.perf_counter() - started) * 1000)))


class RestServicer(pb_grpc.RestServiceServicer):
    def __init__(self, embedder: Embedder, decoder: TokenIdDecoder, is_serving: Callable[[], bool]) -> None:
        self._embedder = embedder
        self._decoder = decoder
        self._is_serving = is_serving

    async def _embed(self, request: pb.CreateEmbeddingRequest, context) -> tuple[EmbedResult, str]:
        caller = acting_for(context, request.user)
        refuse_async_only(request)
        parsed = await parse_request(request, functools.partial(self._embedder.resolve, caller), self._decoder)
        result = await self._embedder.embed(caller, parsed.model, parsed.texts, parsed.options, deadline_of(context))
        return result, parsed.encoding_format

    @rpc_errors
    @_timed
    async def CreateEmbedding(self, request: pb.CreateEmbeddingRequest, context) -> httpbody_pb2.HttpBody:
        result, encoding_format = await self._embed(request, context)
        return httpbody_pb2.HttpBody(content_type="application/json", data=openai_body(result, encoding_format))

    @rpc_errors
    @_timed
    async def InferenceEmbed(self, request: pb.CreateEmbeddingRequest, context) -> httpbody_pb2.HttpBody:
        result, encoding_format = await self._embed(request, context)
        return httpbody_pb2.HttpBody(content_type="application/json", data=scaigrid_body(result, encoding_format))

    @rpc_errors
    async def RetrieveModel(self, request: pb.RetrieveModelRequest, context) -> embeddings_pb2.Model:
        model = self._embedder.resolve(caller_of(context), request.model)
        return model_message(model, self._embedder.registry.aliases_of(model), self._embedder.prices)

    @rpc_errors
    async def CheckHealth(self, request: pb.CheckHealthRequest, context) -> pb.CheckHealthResponse:
        if not self._is_serving():
            raise errors.unavailable("The server is starting or shutting down.")
        return pb.CheckHealthResponse(status="SERVING")
