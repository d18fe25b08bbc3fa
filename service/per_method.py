"""What the server's interceptors share: each wraps a method's handler once, on the method's first call, and serves
every later call of that method with the same wrapped handler; and `handler_like`, which builds a wrapped handler
of the right kind (unary or streaming request and response) with the original's serializers unless told otherwise.

Caching per method is sound because what each interceptor decides depends on the method alone (its policy, its
message cap), a wrapped handler keeps no per-call state, and the interceptors further in are of the same kind: the
handler they hand on for a method never changes, so a later call need not ask them again (one await fewer per
interceptor per call).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc

Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]

_MAKERS = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}
_SAME: Any = object()


def handler_like(
    handler: grpc.RpcMethodHandler,
    behavior: Callable,
    *,
    request_streaming: bool | None = None,
    request_deserializer: Any = _SAME,
    response_serializer: Any = _SAME,
) -> grpc.RpcMethodHandler:
    """A handler running `behavior`, with `handler`'s streaming kinds and serializers except those given."""
    kind = (handler.request_streaming if request_streaming is None else request_streaming, handler.response_streaming)
    return _MAKERS[kind](
        behavior,
        request_deserializer=handler.request_deserializer if request_deserializer is _SAME else request_deserializer,
        response_serializer=handler.response_serializer if response_serializer is _SAME else response_serializer,
    )


def behavior_of(handler: grpc.RpcMethodHandler) -> Callable:
    """The function a handler runs, whichever of its four kinds it is."""
    return handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream


class PerMethodInterceptor(grpc.aio.ServerInterceptor):
    """An interceptor that hands each method the handler `wrap(path, handler)` made of it on its first call (which
    may be `handler` itself: a method the interceptor leaves alone is remembered as such too)."""

    def __init__(self) -> None:
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}

    def wrap(self, path: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        raise NotImplementedError

    async def intercept_service(
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = self._handlers.get(details.method)
        if handler is None:
            handler = await continuation(details)
            if handler is None:  # not served: grpc answers UNIMPLEMENTED
                return None
            handler = self._handlers[details.method] = self.wrap(details.method, handler)
        return handler
