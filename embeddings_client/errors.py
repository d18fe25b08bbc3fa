"""Typed errors that carry the server's reason.

Over gRPC the reason is the `google.rpc.ErrorInfo` in the status details (and `BadRequest` names the field); over
REST it is OpenAI's `error.code`. Both become the same exception classes, keyed by gRPC status code (REST statuses
are mapped to the code the server answered with), so callers catch `NotFoundError` or `RateLimitError` whatever the
transport.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from dataclasses import field as dataclass_field

from google.rpc import error_details_pb2, status_pb2

STATUS_DETAILS_KEY = "grpc-status-details-bin"
# Reasons worth retrying after a wait: the server is overloaded or the caller is over a rate limit.
RETRYABLE_REASONS = frozenset({"queue_full", "rate_limit_exceeded", "unavailable", "service_unavailable"})
_INPUT_FIELD = re.compile(r"^inputs?\[(\d+)\]$")
_INPUT_IN_MESSAGE = re.compile(r"\b([Ii]nput) (\d+)\b")


@dataclass(eq=False)  # compared and hashed by identity, as exceptions are
class EmbeddingsError(Exception):
    """A call the server (or the connection to it) answered with an error.

    `index` is the position, in the texts given to the call, of the input the error is about (and `message` says
    that same position), even when the client split the texts into several requests.
    """

    message: str
    code: str = "UNKNOWN"  # the gRPC status code name: NOT_FOUND, INVALID_ARGUMENT, RESOURCE_EXHAUSTED, ...
    reason: str | None = None  # the server's stable reason: model_not_found, context_length_exceeded, ...
    field: str | None = None  # the request field at fault: "model", "inputs[3]", "dimensions", ...
    metadata: Mapping[str, str] = dataclass_field(default_factory=dict)  # ErrorInfo metadata (e.g. tokens and limit)
    index: int | None = None
    retry_after_s: float | None = None  # the wait the server asked for (retry-after-ms)
    http_status: int | None = None  # REST only
    request_id: str | None = None

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def __str__(self) -> str:
        return f"{self.code} ({self.reason}): {self.message}" if self.reason else f"{self.code}: {self.message}"

    @property
    def retryable(self) -> bool:
        """Worth trying again after a wait: the server is unavailable, overloaded or rate-limiting the caller."""
        if self.code == "UNAVAILABLE":
            return True
        return self.code == "RESOURCE_EXHAUSTED" and (
            self.reason in RETRYABLE_REASONS or self.retry_after_s is not None
        )

    def shifted(self, offset: int) -> EmbeddingsError:
        """The same error for a request that started at input `offset` of the caller's texts."""
        if self.index is None or offset == 0:
            return self
        index = self.index + offset
        message = _INPUT_IN_MESSAGE.sub(
            lambda m: f"{m.group(1)} {index}" if int(m.group(2)) == self.index else m.group(0), self.message
        )
        field_name = f"inputs[{index}]" if _INPUT_FIELD.match(self.field or "") else self.field
        metadata = {**self.metadata, "index": str(index)} if "index" in self.metadata else self.metadata
        return dataclasses.replace(self, index=index, message=message, field=field_name, metadata=metadata)


class AuthenticationError(EmbeddingsError):
    """Missing, unknown or revoked API key (UNAUTHENTICATED, HTTP 401)."""


class PermissionDeniedError(EmbeddingsError):
    """The key may not do this (PERMISSION_DENIED, HTTP 403)."""


class NotFoundError(EmbeddingsError):
    """Unknown model (or one the key may not use), job or webhook (NOT_FOUND, HTTP 404)."""


class InvalidRequestError(EmbeddingsError):
    """The request itself is wrong: bad input, too long, unsupported dimensions (INVALID_ARGUMENT, HTTP 400)."""


class RateLimitError(EmbeddingsError):
    """Over a rate limit or the server's queue is full (RESOURCE_EXHAUSTED, HTTP 429); `retry_after_s` says when."""


class UnavailableError(EmbeddingsError):
    """The server is starting, draining, down or unreachable (UNAVAILABLE, HTTP 503)."""


class DeadlineExceededError(EmbeddingsError):
    """The call's deadline passed (DEADLINE_EXCEEDED, HTTP 504)."""


class ServerError(EmbeddingsError):
    """Anything else the server failed with (INTERNAL, UNKNOWN, ...)."""


_BY_CODE: dict[str, type[EmbeddingsError]] = {
    "UNAUTHENTICATED": AuthenticationError,
    "PERMISSION_DENIED": PermissionDeniedError,
    "NOT_FOUND": NotFoundError,
    "INVALID_ARGUMENT": InvalidRequestError,
    "FAILED_PRECONDITION": InvalidRequestError,
    "OUT_OF_RANGE": InvalidRequestError,
    "RESOURCE_EXHAUSTED": RateLimitError,
    "UNAVAILABLE": UnavailableError,
    "DEADLINE_EXCEEDED": DeadlineExceededError,
}
# HTTP statuses of the REST gateway, as the gRPC codes they come from.
_HTTP_CODES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED",
    409: "FAILED_PRECONDITION",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def make_error(code: str, message: str, **fields: object) -> EmbeddingsError:
    """The exception class for `code`, built with the given fields."""
    cls = _BY_CODE.get(code, ServerError)
    error = cls(message, code=code, **fields)  # type: ignore[arg-type]
    if error.index is None:
        error.index = input_index(error.field, error.metadata, message)
    return error


def input_index(field_name: str | None, metadata: Mapping[str, str], message: str) -> int | None:
    """Which input an error is about: ErrorInfo's `index`, a `inputs[3]` field, or the server's "Input 3 ..."."""
    if metadata.get("index", "").isdigit():
        return int(metadata["index"])
    match = _INPUT_FIELD.match(field_name or "")
    if match:
        return int(match.group(1))
    if field_name in (None, "input", "inputs"):
        found = _INPUT_IN_MESSAGE.search(message)
        if found and message.startswith(found.group(0)):
            return int(found.group(2))
    return None


def from_grpc(
    code: str,
    details: str | None,
    trailing: Iterable[tuple[str, str | bytes]] | None,
    initial: Iterable[tuple[str, str | bytes]] | None,
) -> EmbeddingsError:
    """An error from a failed gRPC call's code, details and metadata (sync and asyncio calls alike)."""
    message = details or code
    reason, field_name, metadata = None, None, {}
    status = _status_details(trailing or ())
    if status is not None:
        message = status.message or message
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason, metadata = info.reason, dict(info.metadata)
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                if bad.field_violations:
                    field_name = bad.field_violations[0].field
    headers = {key: value for key, value in (*(initial or ()), *(trailing or ())) if isinstance(value, str)}
    return make_error(
        code,
        message,
        reason=reason,
        field=field_name,
        metadata=metadata,
        retry_after_s=retry_after(headers),
        request_id=headers.get("x-request-id"),
    )


def _status_details(metadata: Iterable[tuple[str, str | bytes]]) -> status_pb2.Status | None:
    for key, value in metadata:
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            status = status_pb2.Status()
            try:
                status.ParseFromString(value)
            except Exception:  # a malformed detail must not hide the error itself
                return None
            return status
    return None


def from_grpc_error(err: object) -> EmbeddingsError:
    """From a `grpc.RpcError` (a sync call) or `grpc.aio.AioRpcError`."""
    code = err.code()  # type: ignore[attr-defined]
    return from_grpc(
        code.name if code is not None else "UNKNOWN",
        err.details(),  # type: ignore[attr-defined]
        _safe(err, "trailing_metadata"),
        _safe(err, "initial_metadata"),
    )


def _safe(err: object, name: str) -> tuple:
    method = getattr(err, name, None)
    try:
        return tuple(method() or ()) if method else ()
    except Exception:  # a call that never reached the server has no metadata
        return ()


def from_http(status: int, body: object, headers: Mapping[str, str]) -> EmbeddingsError:
    """From a REST answer: OpenAI's `{"error": {"message", "type", "param", "code"}}`, or whatever Envoy sent."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        error = {"message": str(body)[:500] if body else f"HTTP {status}"}
    return make_error(
        _HTTP_CODES.get(status, "INTERNAL" if status >= 500 else "UNKNOWN"),
        str(error.get("message") or f"HTTP {status}"),
        reason=error.get("code") or None,
        field=error.get("param") or None,
        retry_after_s=retry_after(headers),
        http_status=status,
        request_id=headers.get("x-request-id"),
    )


def retry_after(headers: Mapping[str, str]) -> float | None:
    """The wait the server asked for: `retry-after-ms`, else `retry-after` in seconds."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is not None:
            try:
                return max(0.0, float(value) * scale)
            except ValueError:
                continue
    return None
