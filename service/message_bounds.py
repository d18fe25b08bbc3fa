"""Bounds each request message by its method's declared cap (`max_message_bytes` in the contract's policy), measured
on its raw bytes before protobuf parses it.

gRPC takes any message up to the server's `max_message_bytes` (256 MiB, what async jobs need) before the method
sees it, and parsing is what costs: a 13 MiB REST body of token ids is ~72 MiB of protobuf `Value`s once Envoy has
transcoded it, whose parse took seconds and ~300 MiB. Here a message over its method's cap is never parsed: the
deserializer measures it and hands on a marker instead, and the call is refused with `request_too_large` (HTTP 413
through the gateway) when the method would read it, i.e. after the access interceptor has admitted the caller,
which it does before any message is read. The gateway refuses most such REST bodies before transcoding them
(gateway/body_checks.lua); this is the check that holds for every way in.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc

from service import errors
from service.policy import MethodPolicy


@dataclass(frozen=True, slots=True)
class _Oversized:
    """Stands in for a request message over its method's cap (never parsed)."""

    size: int


def _measured(deserializer: Callable[[bytes], Any] | None, cap: int) -> Callable[[bytes], Any]:
    def deserialize(raw: bytes) -> Any:
        if len(raw) > cap:
            return _Oversized(len(raw))
        return deserializer(raw) if deserializer is not None else raw

    return deserialize


async def _refuse(context: grpc.aio.ServicerContext, request: _Oversized, cap: int) -> None:
    await context.abort_with_status(errors.request_too_large(request.size, cap).to_status())


def bounded(handler: grpc.RpcMethodHandler, cap: int) -> grpc.RpcMethodHandler:
    """`handler` with its request messages capped at `cap` bytes: a larger one is refused unparsed."""

    async def checked(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async for request in requests:
            if isinstance(request, _Oversized):
                await _refuse(context, request, cap)
            yield request

    async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, _Oversized):
            await _refuse(context, request, cap)
        return await handler.unary_unary(request, context)

    async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        if isinstance(request, _Oversized):
            await _refuse(context, request, cap)
        async for response in handler.unary_stream(request, context):
            yield response

    async def stream_unary(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
        return await handler.stream_unary(checked(requests, context), context)

    async def stream_stream(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async for response in handler.stream_stream(checked(requests, context), context):
            yield response

    serializers = {
        "request_deserializer": _measured(handler.request_deserializer, cap),
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(unary_unary, **serializers)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(unary_stream, **serializers)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(stream_unary, **serializers)
    return grpc.stream_stream_rpc_method_handler(stream_stream, **serializers)


class MessageBoundsInterceptor(grpc.aio.ServerInterceptor):
    """Caps the request messages of the methods whose policy declares a cap below the server's own (`server_cap`,
    which gRPC enforces itself); the innermost interceptor, so the access interceptor reads (and so measures) a
    message only once the caller is admitted. The bounded handler is made once per method."""

    def __init__(self, policies: Mapping[str, MethodPolicy], server_cap: int) -> None:
        caps = {path: method.message_cap(server_cap) for path, method in policies.items()}
        self._caps = {path: cap for path, cap in caps.items() if cap < server_cap}
        self._bounded: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        path = handler_call_details.method
        cap = self._caps.get(path)
        if handler is None or cap is None:
            return handler
        wrapped = self._bounded.get(path)
        if wrapped is None:
            wrapped = self._bounded[path] = bounded(handler, cap)
        return wrapped
