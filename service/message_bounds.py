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

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc

from service import errors
from service.per_method import PerMethodInterceptor, handler_like
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

    if handler.request_streaming:
        behavior = stream_stream if handler.response_streaming else stream_unary
    else:
        behavior = unary_stream if handler.response_streaming else unary_unary
    return handler_like(handler, behavior, request_deserializer=_measured(handler.request_deserializer, cap))


class MessageBoundsInterceptor(PerMethodInterceptor):
    """Caps the request messages of the methods whose policy declares a cap below the server's own (`server_cap`,
    which gRPC enforces itself); the innermost interceptor, so the access interceptor reads (and so measures) a
    message only once the caller is admitted. The bounded handler is made once per method."""

    def __init__(self, policies: Mapping[str, MethodPolicy], server_cap: int) -> None:
        super().__init__()
        caps = {path: method.message_cap(server_cap) for path, method in policies.items()}
        self._caps = {path: cap for path, cap in caps.items() if cap < server_cap}

    def wrap(self, path: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        cap = self._caps.get(path)
        return handler if cap is None else bounded(handler, cap)
