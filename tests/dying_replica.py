"""A replica that dies between a call's headers and its body: `python -m tests.dying_replica PORT MARKER [MODE]`.

It reports SERVING to health checks (so Envoy balances calls to it) and answers every API call the way the real
server begins one: its headers (gRPC initial metadata, as service/api/rest.py sends `openai-processing-ms`) go out
on their own, ahead of the message. Then it creates MARKER and SIGKILLs itself before the message, exactly where a
replica killed under load can die: after Envoy has the response's headers. The gateway's pre-body key checks
(ext_authz, which Envoy asks for native gRPC calls) are allowed, in one piece as the real server answers them (it
sends no headers ahead): they are not what this replica is for. Prints "ready" once it listens.

MODE `unavailable` (or `invalid`): instead of dying, it ends each call the way the real server ends an error after
its headers (service/api/rpc_errors.py, the API-key interceptor): UNAVAILABLE "starting" (or INVALID_ARGUMENT) as a
rich status in the trailers, the headers sent ahead; it creates MARKER (once) and keeps serving.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from service import errors
from service._gen.envoy_ext_authz import external_auth_pb2_grpc
from service.access.ext_authz import ALLOWED

# What a replica answers in each mode after its headers (None: it dies).
ERRORS = {
    "die": None,
    "unavailable": errors.unavailable("The server is starting; retry shortly."),
    "invalid": errors.invalid_input("Rejected by the stand-in replica.", field="input"),
}


class _AllowAll(external_auth_pb2_grpc.AuthorizationServicer):
    async def Check(self, request, context: grpc.aio.ServicerContext):
        return ALLOWED


class _DieAfterHeaders(grpc.GenericRpcHandler):
    def __init__(self, marker: Path, error: errors.ApiError | None) -> None:
        self._marker = marker
        self._error = error

    def service(self, handler_call_details):
        async def answer(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            await context.send_initial_metadata((("openai-processing-ms", "1"),))
            self._marker.touch()
            if self._error is not None:
                await context.abort_with_status(self._error.to_status())
            os.kill(os.getpid(), signal.SIGKILL)
            return b""

        return grpc.unary_unary_rpc_method_handler(answer)


async def main(port: int, marker: Path, mode: str) -> None:
    server = grpc.aio.server()
    checks = health.aio.HealthServicer()
    await checks.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(checks, server)
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(_AllowAll(), server)
    server.add_generic_rpc_handlers((_DieAfterHeaders(marker, ERRORS[mode]),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else "die"))
