"""gzip-compressed gRPC responses for the callers that ask for them: metadata `x-response-compression: gzip`.

What "asks" means: every gRPC client lists gzip in `grpc-accept-encoding`, so that header says what a caller can
read, not what it wants, and compressing for all of them would cost every call CPU. A request sent gzip-compressed
(`grpc-encoding: gzip`) would be the natural sign, but gRPC's core consumes that header: grpc.aio shows the server
neither it nor whether a message came compressed. So a caller asks in so many words, on the server's port or through
the gateway's (which passes native gRPC through; it drops the header from REST calls, whose responses Envoy gzips
itself on `accept-encoding`). Requests are taken compressed or not, as gRPC always did.

grpc.aio sends a unary response's initial metadata without the compression set on the call, so when the handler has
not sent them by the time it returns, they are sent first, carrying it (one more send, for these calls only).
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from service.per_method import Continuation, PerMethodInterceptor, behavior_of, handler_like

# The metadata a call asks with; its value lists encodings, of which gzip is the one served.
RESPONSE_COMPRESSION = "x-response-compression"


def asks_for_gzip(metadata: Any) -> bool:
    """Whether the call's metadata asks for gzip responses (`x-response-compression: gzip`, case-insensitive, in a
    comma-separated list or alone)."""
    for key, value in metadata or ():
        if key == RESPONSE_COMPRESSION:
            text = value if isinstance(value, str) else value.decode(errors="replace")
            return "gzip" in (token.strip().lower() for token in text.split(","))
    return False


class _Compressing:
    """The call's context with gzip set on it, watching whether its initial metadata have gone out."""

    def __init__(self, context: grpc.aio.ServicerContext) -> None:
        self._context = context
        self._sent = False
        context.set_compression(grpc.Compression.Gzip)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)

    async def send_initial_metadata(self, metadata) -> None:
        self._sent = True
        await self._context.send_initial_metadata(metadata)

    async def write(self, message) -> None:
        self._sent = True  # the first message carries the initial metadata, compression included
        await self._context.write(message)

    async def before_unary_response(self) -> None:
        if not self._sent:
            await self.send_initial_metadata(())


def compressed(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """`handler`, answering with gzip-compressed messages. A handler that is not a coroutine or async generator
    function (none here) is returned as it is."""
    behavior = behavior_of(handler)
    if inspect.isasyncgenfunction(behavior):

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async for response in behavior(request, _Compressing(context)):
                yield response

        answer: Callable = stream
    elif inspect.iscoroutinefunction(behavior) and handler.response_streaming:

        async def written(request: Any, context: grpc.aio.ServicerContext) -> None:
            await behavior(request, _Compressing(context))  # the reader/writer API: its writes compress

        answer = written
    elif inspect.iscoroutinefunction(behavior):

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            compressing = _Compressing(context)
            response = await behavior(request, compressing)
            await compressing.before_unary_response()
            return response

        answer = unary
    else:
        return handler
    return handler_like(handler, answer)


class ResponseCompressionInterceptor(PerMethodInterceptor):
    """The outermost interceptor: a call that asks for gzip gets its method's compressing handler (made once per
    method; the ask is in each call's metadata); any other gets the handler as it is, at the cost of one look
    through its metadata."""

    def wrap(self, path: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        return compressed(handler)

    async def intercept_service(
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        if asks_for_gzip(details.invocation_metadata):
            return await super().intercept_service(continuation, details)
        return await continuation(details)
