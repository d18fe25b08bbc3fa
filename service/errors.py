"""API errors: one exception type that carries a gRPC code, a clear message and google.rpc details.

Servicers raise `ApiError`; `abort_with` turns it into a rich gRPC status (ErrorInfo + BadRequest) that
grpcurl shows, native clients decode with grpc_status, and the gateway maps to OpenAI's error shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field as dataclass_field

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

ERROR_DOMAIN = "embeddings.v1"
# What an error may echo of the request (a model name, an id) is bounded: the message and details travel in gRPC
# trailers, which Envoy and clients cap (an oversized one is a protocol error, a 502 that ejects a replica).
MAX_MESSAGE_CHARS = 1024
MAX_METADATA_CHARS = 256


def _bounded(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    suffix = f"... ({len(text)} characters)"
    return text[: limit - len(suffix)] + suffix


@dataclass
class ApiError(Exception):
    """A failure to report to the caller as-is (never a bug: those become INTERNAL)."""

    code: grpc.StatusCode
    message: str
    reason: str
    # The offending request field (e.g. "inputs[3]", "dimensions", "model"), when there is one.
    field: str | None = None
    metadata: dict[str, str] = dataclass_field(default_factory=dict)
    # Sent as initial metadata before the status (HTTP response headers through the gateway), e.g. retry-after.
    headers: dict[str, str] = dataclass_field(default_factory=dict)

    def __post_init__(self) -> None:
        self.message = _bounded(self.message, MAX_MESSAGE_CHARS)
        self.metadata = {key: _bounded(value, MAX_METADATA_CHARS) for key, value in self.metadata.items()}
        super().__init__(self.message)

    def to_status(self) -> grpc.Status:
        details = []
        info = error_details_pb2.ErrorInfo(reason=self.reason, domain=ERROR_DOMAIN, metadata=self.metadata)
        details.append(_pack(info))
        if self.field is not None:
            violation = error_details_pb2.BadRequest.FieldViolation(field=self.field, description=self.message)
            details.append(_pack(error_details_pb2.BadRequest(field_violations=[violation])))
        proto = status_pb2.Status(code=_rpc_code(self.code), message=self.message, details=details)
        return rpc_status.to_status(proto)


def _pack(message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def _rpc_code(code: grpc.StatusCode) -> int:
    return code_pb2.Code.Value(code.name)


def model_not_found(name: str) -> ApiError:
    return ApiError(
        grpc.StatusCode.NOT_FOUND,
        f"The model '{name}' does not exist or you do not have access to it.",
        "model_not_found",
        field="model",
        metadata={"model": name},
    )


def invalid_input(message: str, field: str | None = None, reason: str = "invalid_input") -> ApiError:
    return ApiError(grpc.StatusCode.INVALID_ARGUMENT, message, reason, field=field)


def too_many_inputs(count: int, cap: int) -> ApiError:
    return invalid_input(
        f"Too many inputs: {count} in one request, the limit is {cap}. Split the request, or use an async job.",
        field="inputs",
        reason="too_many_inputs",
    )


def context_length_exceeded(
    index: int, tokens: int, limit: int, model: str, at_least: bool = False, chars: int = 0, max_chars: int = 0
) -> ApiError:
    """An input over the model's limit. `at_least`: only a prefix of it was read, so `tokens` is a lower bound; when
    even that is within the limit, the input is over the limit by its length in characters (`chars`)."""
    if at_least and tokens <= limit:
        found = f"has {chars} characters, more than the {max_chars} this model reads"
    else:
        found = f"has {'at least ' if at_least else ''}{tokens} tokens"
    metadata = {"index": str(index), "tokens": str(tokens), "limit": str(limit), "model": model}
    if at_least:
        metadata.update(tokens_at_least="true", characters=str(chars))
    return ApiError(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"Input {index} is too long: this model's maximum context length is {limit} tokens, however input {index} "
        f"{found}. Shorten it, or set truncate to true to cut inputs to the limit.",
        "context_length_exceeded",
        field=f"inputs[{index}]",
        metadata=metadata,
    )


def dimensions_not_supported(model: str, dimensions: int, allowed: tuple[int, ...], full: int) -> ApiError:
    if allowed:
        sizes = ", ".join(str(d) for d in sorted({*allowed, full}))
        message = f"Model '{model}' cannot return {dimensions} dimensions; it supports: {sizes}."
    else:
        message = f"This model does not support specifying dimensions. Model '{model}' only returns {full} dimensions."
    return ApiError(
        grpc.StatusCode.INVALID_ARGUMENT,
        message,
        "dimensions_not_supported",
        field="dimensions",
        metadata={"model": model, "dimensions": str(dimensions)},
    )


def queue_full(model: str) -> ApiError:
    return ApiError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        f"The server is overloaded: the queue for model '{model}' is full. Retry after a short wait.",
        "queue_full",
        metadata={"model": model},
        headers={"retry-after": "1", "retry-after-ms": "1000"},
    )


def deadline_exceeded() -> ApiError:
    return ApiError(
        grpc.StatusCode.DEADLINE_EXCEEDED,
        "The request's deadline passed before its embeddings were computed.",
        "deadline_exceeded",
    )


def request_too_large(size: int, limit: int) -> ApiError:
    """A request message over its method's cap (the contract's `max_message_bytes`), refused before it is parsed.
    INVALID_ARGUMENT, not gRPC's RESOURCE_EXHAUSTED: sending it again cannot help (clients retry RESOURCE_EXHAUSTED as
    a rate limit, and the gateway would answer 429); the gateway answers 413 for the reason (openai_errors.lua)."""
    return ApiError(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"The request is too large: {size} bytes as a protobuf message, over the {_mib(limit)} this method takes. "
        "Send fewer or shorter inputs per request (a token id takes 11 bytes of it), or use an async job.",
        "request_too_large",
        metadata={"bytes": str(size), "limit": str(limit)},
    )


def _mib(size: int) -> str:
    return f"{size / (1 << 20):g} MiB"


def unavailable(message: str) -> ApiError:
    return ApiError(grpc.StatusCode.UNAVAILABLE, message, "unavailable")


def internal(message: str) -> ApiError:
    return ApiError(grpc.StatusCode.INTERNAL, message, "internal_error")
