"""The interceptors' shared per-method handler cache (service/per_method.py), on a real grpc.aio server: a method's
handler is wrapped once whatever the number of calls, an unserved method stays UNIMPLEMENTED, and a served method
without a declared policy is refused by the access interceptor on every call, unary or streaming."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from service import policy
from service.access.control import AccessControl, Limits, OpenMode
from service.access.interceptor import AuthInterceptor
from service.per_method import PerMethodInterceptor
from service.stores.sqlite import SqliteAccessStore

SERVICE = "test.Unpoliced"


def _identity(raw: bytes) -> bytes:
    return raw


async def _echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return request


async def _echo_twice(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    yield request
    yield request


def _handlers() -> grpc.GenericRpcHandler:
    serializers = {"request_deserializer": _identity, "response_serializer": _identity}
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Echo": grpc.unary_unary_rpc_method_handler(_echo, **serializers),
            "EchoTwice": grpc.unary_stream_rpc_method_handler(_echo_twice, **serializers),
        },
    )


class _Counting(PerMethodInterceptor):
    """Leaves every handler as it is, counting how often it is asked to wrap one."""

    def __init__(self) -> None:
        super().__init__()
        self.wrapped: list[str] = []

    def wrap(self, path: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        self.wrapped.append(path)
        return handler


async def _serve(interceptors: list) -> tuple[grpc.aio.Server, grpc.aio.Channel]:
    server = grpc.aio.server(interceptors=interceptors)
    server.add_generic_rpc_handlers((_handlers(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, grpc.aio.insecure_channel(f"127.0.0.1:{port}")


async def test_a_method_is_wrapped_once_and_an_unserved_one_stays_unimplemented() -> None:
    counting = _Counting()
    server, channel = await _serve([counting])
    try:
        echo = channel.unary_unary(f"/{SERVICE}/Echo")
        for i in range(3):
            assert await echo(b"hi %d" % i) == b"hi %d" % i
        stream = channel.unary_stream(f"/{SERVICE}/EchoTwice")
        assert [m async for m in stream(b"x")] == [b"x", b"x"]
        missing = channel.unary_unary(f"/{SERVICE}/Missing")
        for _ in range(2):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await missing(b"")
            assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert counting.wrapped == [f"/{SERVICE}/Echo", f"/{SERVICE}/EchoTwice"]
    finally:
        await channel.close()
        await server.stop(None)


async def test_a_method_without_a_policy_is_refused_on_every_call(tmp_path) -> None:
    store = SqliteAccessStore.in_data_dir(tmp_path)
    control = AccessControl(store, Limits(), open_mode=OpenMode(("127.0.0.1",), False))
    server, channel = await _serve([AuthInterceptor(control, policy.contract_policies())])
    try:
        echo = channel.unary_unary(f"/{SERVICE}/Echo")
        stream = channel.unary_stream(f"/{SERVICE}/EchoTwice")
        for _ in range(2):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await echo(b"hi")
            assert caught.value.code() == grpc.StatusCode.INTERNAL
            assert "has no access policy" in caught.value.details()
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                [m async for m in stream(b"hi")]
            assert caught.value.code() == grpc.StatusCode.INTERNAL
    finally:
        await channel.close()
        await server.stop(None)
        store.close()
