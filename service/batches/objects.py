"""OpenAI's JSON for the Batch API: the file and batch objects, and the lines of output and error files."""

from __future__ import annotations

import secrets
from typing import Any

import grpc
import orjson

from service import errors
from service.api.rest import as_rest_error
from service.batches.records import Batch, FileRecord

# gRPC code -> HTTP status, as Envoy's transcoder maps them, and HTTP status -> OpenAI error type, as the gateway's
# error mapper (gateway/openai_errors.lua) does: a refused batch line reads like the live call's answer.
_HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
}
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    409: "invalid_request_error",
    429: "rate_limit_error",
}


def file_object(record: FileRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "object": "file",
        "bytes": record.bytes,
        "created_at": record.created_at,
        "expires_at": record.expires_at,
        "filename": record.filename,
        "purpose": record.purpose,
        "status": "processed",
        "status_details": None,
    }


def batch_object(batch: Batch, completed: int | None = None) -> dict[str, Any]:
    """The batch as OpenAI shows it; `completed` overrides the stored count while it runs (live progress)."""
    tokens = batch.prompt_tokens
    return {
        "id": batch.id,
        "object": "batch",
        "endpoint": batch.endpoint,
        "model": batch.model,
        "errors": {"object": "list", "data": batch.errors} if batch.errors else None,
        "input_file_id": batch.input_file_id,
        "completion_window": batch.completion_window,
        "status": batch.status,
        "output_file_id": batch.output_file_id,
        "error_file_id": batch.error_file_id,
        "created_at": batch.created_at,
        "in_progress_at": batch.in_progress_at,
        "expires_at": batch.expires_at,
        "finalizing_at": batch.finalizing_at,
        "completed_at": batch.completed_at,
        "failed_at": batch.failed_at,
        "expired_at": batch.expired_at,
        "cancelling_at": batch.cancelling_at,
        "cancelled_at": batch.cancelled_at,
        "request_counts": {
            "total": batch.total,
            "completed": batch.completed if completed is None else completed,
            "failed": batch.failed,
        },
        "usage": {
            "input_tokens": tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": 0,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": tokens,
        },
        "metadata": batch.metadata or None,
    }


def dumps(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)


def http_error(err: errors.ApiError) -> tuple[int, dict[str, Any]]:
    """(HTTP status, OpenAI error body) of an error, as the live endpoint answers it through the gateway."""
    err = as_rest_error(err)
    status = _HTTP_STATUS.get(err.code, 500)
    return status, {
        "error": {
            "message": err.message,
            "type": _ERROR_TYPES.get(status, "server_error"),
            "param": err.field,
            "code": err.reason or None,
        }
    }


def request_ids() -> tuple[str, str]:
    """(line id, request id) of one output line."""
    return f"batch_req_{secrets.token_hex(12)}", f"req_{secrets.token_hex(12)}"


def response_line(custom_id: str, status_code: int, body: bytes) -> bytes:
    """An output or error line answered by the endpoint; `body` is its JSON, already serialized."""
    line_id, request_id = request_ids()
    response = {"status_code": status_code, "request_id": request_id, "body": orjson.Fragment(body)}
    return orjson.dumps({"id": line_id, "custom_id": custom_id, "response": response, "error": None}) + b"\n"


def failure_line(custom_id: str, code: str, message: str) -> bytes:
    """An error line for a request that was never answered (cancelled, expired, or its job failed)."""
    line_id, _ = request_ids()
    error = {"code": code, "message": message}
    return orjson.dumps({"id": line_id, "custom_id": custom_id, "response": None, "error": error}) + b"\n"
