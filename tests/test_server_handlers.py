"""How the server hands its services to grpc.aio: every RPC of the contract (and health and reflection) through
generic handlers, none as a registered method (service.server.GenericHandlersOnly says why: grpc.aio's per-call
cost grows with the number of registered methods)."""

from __future__ import annotations

from collections import namedtuple

import grpc
import grpc.aio._server as aio_server

from service import policy
from service.config import load_settings
from service.server import EmbeddingServer

Details = namedtuple("Details", "method invocation_metadata")
FOREIGN = ("/grpc.health.v1.Health/Check", "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo")


async def test_every_rpc_is_served_by_a_generic_handler_and_none_is_registered(monkeypatch, served_repo, tmp_path):
    registered: list[str] = []
    generic: list[grpc.GenericRpcHandler] = []
    add_generic = aio_server.Server.add_generic_rpc_handlers

    def record_generic(self, handlers):
        generic.extend(handlers)
        add_generic(self, handlers)

    def record_registered(self, name, handlers):
        registered.append(name)

    monkeypatch.setattr(aio_server.Server, "add_registered_method_handlers", record_registered)
    monkeypatch.setattr(aio_server.Server, "add_generic_rpc_handlers", record_generic)
    argv = ["--model-repo", str(served_repo), "--data-dir", str(tmp_path), "--port", "0"]
    server = EmbeddingServer(load_settings(argv, {}))
    try:
        assert registered == []
        paths = [*policy.contract_policies(), *FOREIGN]
        for path in paths:
            handlers = [h.service(Details(path, ())) for h in generic]
            assert any(handler is not None for handler in handlers), path
        unknown = Details("/embeddings.v1.EmbeddingService/Unknown", ())
        assert all(h.service(unknown) is None for h in generic)  # grpc answers UNIMPLEMENTED
    finally:  # the server never started: its stores and the registry's threads are all there is to release
        server.store.close()
        server.access.store.close()
        await server.registry.close()
