"""One gRPC server interceptor for everything per call: request id, metrics, tracing and a debug access line.

It wraps the handlers with a unary response (every API method, whose request the access interceptor turns into a
stream so it can refuse a caller before reading it; health watch and reflection streams pass untouched), and
caches the wrapped handler per method, so a call costs a contextvar, two clock reads and a few metric updates.
Since it owns the wrapper, it also answers a request that does not decode with INVALID_ARGUMENT instead of grpc's
INTERNAL: Envoy's transcoder emits corrupt protobuf for some malformed JSON (an object as a map value), and sees
each message's size, so a call that received a large one hands the freed heap back when it ends (heap.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable

import grpc
from google.protobuf.message import DecodeError

from service import errors
from service.api.wire import passthrough
from service.observability.context import CallInfo, close_call, open_call
from service.observability.heap import HeapTrimmer
from service.observability.metrics import Metrics
from service.observability.tracing import Tracing
from service.per_method import PerMethodInterceptor, behavior_of, handler_like

log = logging.getLogger("service.access")
REQUEST_ID = "x-request-id"
MAX_REQUEST_ID = 128


class _Undecodable:
    """Stands in for a request whose bytes did not decode."""

    def __init__(self, error: DecodeError) -> None:
        self.error = error


def _lenient(deserializer: Callable | None, heap: HeapTrimmer) -> Callable | None:
    if deserializer is None:
        return None

    def deserialize(raw: bytes):
        heap.note_received(len(raw))
        try:
            return deserializer(raw)
        except DecodeError as exc:
            return _Undecodable(exc)

    return deserialize


class _Decoded:
    """The messages of a request stream, read with `context.read()`, a message that did not decode answered with
    INVALID_ARGUMENT.

    A class rather than an async generator over grpc's request iterator (itself an async generator): a unary
    behavior reads one message and leaves the stream, and every async generator left unfinished costs a finalizer
    task on the event loop; grpc's own iterator, never started, costs nothing.
    """

    __slots__ = ("_context",)

    def __init__(self, context: grpc.aio.ServicerContext) -> None:
        self._context = context

    def __aiter__(self) -> _Decoded:
        return self

    async def __anext__(self):
        request = await self._context.read()
        if request is grpc.aio.EOF:
            raise StopAsyncIteration
        if isinstance(request, _Undecodable):
            await self._context.abort_with_status(undecodable(request).to_status())
        return request


def request_id_of(metadata) -> str:
    """The `x-request-id` Envoy forwards (the client's or Envoy's), else a new one."""
    for key, value in metadata or ():
        if key == REQUEST_ID and isinstance(value, str) and value:
            return value[:MAX_REQUEST_ID]
    return os.urandom(8).hex()


_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


def _code_name(context: grpc.aio.ServicerContext, error: BaseException | None) -> str:
    """The call's status: what the handler aborted with, CANCELLED, or OK when it returned."""
    if isinstance(error, asyncio.CancelledError):
        return "CANCELLED"
    code = context.code()
    if code is None:
        return "OK" if error is None else "UNKNOWN"
    if isinstance(code, grpc.StatusCode):
        return code.name
    return _CODE_NAMES.get(code, "UNKNOWN") if isinstance(code, int) else str(code)


def undecodable(request: _Undecodable) -> errors.ApiError:
    return errors.ApiError(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"The request could not be decoded: {request.error}. Check the types of its fields.",
        "invalid_request",
    )


class TelemetryInterceptor(PerMethodInterceptor):
    def __init__(self, metrics: Metrics, tracing: Tracing | None = None) -> None:
        super().__init__()
        self._metrics = metrics
        self._tracing = tracing
        self._heap = HeapTrimmer()

    def wrap(self, path: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        if handler.response_streaming:
            return handler
        streaming = handler.request_streaming
        return handler_like(
            handler,
            self._observed(path.lstrip("/"), behavior_of(handler), streaming),
            request_deserializer=_lenient(handler.request_deserializer, self._heap),
            # A servicer may answer with bytes already in wire format (service/api/wire.py): sent as they are.
            response_serializer=passthrough(handler.response_serializer),
        )

    def _observed(self, rpc: str, behavior: Callable, streaming: bool) -> Callable:
        metrics, tracing, heap = self._metrics, self._tracing, self._heap
        short = rpc.rsplit(".", 1)[-1]  # "RestService/CreateEmbedding"

        async def observed(request, context: grpc.aio.ServicerContext):
            metadata = context.invocation_metadata()
            info = CallInfo(short, request_id_of(metadata), time.perf_counter(), time.time_ns())
            token = open_call(info)
            if tracing is not None:
                tracing.start_call(info, metadata)
            error: BaseException | None = None
            try:
                if streaming:  # read by the behavior (after authentication): check each message as it comes
                    request = _Decoded(context)  # grpc's own request iterator is never started: nothing holds
                    # the last message after the call (its generator kept it in a reference cycle until a full GC)
                elif isinstance(request, _Undecodable):
                    await context.abort_with_status(undecodable(request).to_status())
                return await behavior(request, context)
            except BaseException as exc:
                error = exc
                raise
            finally:
                code = _code_name(context, error)
                seconds = time.perf_counter() - info.started
                metrics.record_call(info, code, seconds)
                metrics.record_grpc(rpc, code, seconds)
                if tracing is not None:
                    tracing.end_call(info, code, info.started_ns + int(seconds * 1e9))
                if log.isEnabledFor(logging.DEBUG):
                    log.debug("%s %s model=%s tokens=%d %.2f ms", short, code, info.model, info.tokens, seconds * 1e3)
                close_call(token)
                heap.after_call()

        return observed
