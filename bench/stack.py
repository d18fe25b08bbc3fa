"""The service as the benchmarks time it: the gRPC server, Envoy in front of it, and one gRPC channel shared by
every client task (as an application would hold one: HTTP/2 multiplexes the calls)."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from bench.common import ENGINE_ONLY, QUIET_MAX_WAIT_S, Meter, Run, decode, run_grpc, run_rest, send_all, send_all_rest
from service._gen.embeddings.v1 import embeddings_pb2 as pb
from service._gen.embeddings.v1 import embeddings_pb2_grpc as pb_grpc
from tests.serving import EnvoyProcess, ServerProcess

# Client tasks of the untimed passes that check vectors.
CHECK_CONCURRENCY = 8


@dataclass
class ServedStack:
    server: ServerProcess
    gateway: EnvoyProcess
    stub: pb_grpc.EmbeddingServiceStub
    # Times runs against the server side: the gRPC server, then Envoy.
    meter: Meter

    @property
    def server_pid(self) -> int:
        assert self.server.proc is not None
        return self.server.proc.pid

    @property
    def gateway_pid(self) -> int:
        assert self.gateway.proc is not None
        return self.gateway.proc.pid

    @property
    def rest_url(self) -> str:
        return f"{self.gateway.base_url}/v1/embeddings"

    async def grpc_vectors(self, requests: Sequence[pb.EmbedRequest]) -> np.ndarray:
        """All vectors of the requests, in order (untimed)."""
        _, responses = await send_all(self.stub, requests, CHECK_CONCURRENCY)
        return decode(responses)

    async def rest_vectors(self, bodies: Sequence[bytes]) -> np.ndarray:
        _, vectors = await send_all_rest(self.rest_url, bodies, CHECK_CONCURRENCY)
        return np.vstack(vectors)

    async def run_grpc(
        self, requests: Sequence[pb.EmbedRequest], name: str, concurrency: int, repeat: int, tokens: int = 0
    ) -> Run:
        return await run_grpc(self.stub, requests, name, concurrency, repeat, self.meter, tokens)

    async def run_rest(self, bodies: Sequence[bytes], name: str, concurrency: int, repeat: int, tokens: int = 0) -> Run:
        return await run_rest(self.rest_url, bodies, name, concurrency, repeat, self.meter, tokens)


@asynccontextmanager
async def serve(
    model_repo: Path, *server_args: str, max_quiet_wait_s: float = QUIET_MAX_WAIT_S
) -> AsyncIterator[ServedStack]:
    """Start the server (`server_args` on its command line, every other setting default) and Envoy (the default
    envoy.yaml); stop both when the block ends."""
    with (
        ServerProcess(model_repo.resolve(), *ENGINE_ONLY, *server_args) as server,
        tempfile.TemporaryDirectory() as tmp,
        EnvoyProcess(server.port, Path(tmp)) as gateway,
    ):
        assert server.proc is not None and gateway.proc is not None
        meter = Meter([server.proc.pid, gateway.proc.pid], max_quiet_wait_s)
        async with grpc.aio.insecure_channel(server.address) as channel:
            yield ServedStack(server, gateway, pb_grpc.EmbeddingServiceStub(channel), meter)
