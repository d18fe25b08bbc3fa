"""The floor under the serving path: a bare grpc.aio server that answers every call with a prepared response.

No interceptors, no servicer, no engine: one generic handler, bytes in and bytes out, on the server's event loop
(uvloop where installed). Embed gets an `EmbedResponse` and the REST route an `HttpBody`, each byte for byte what
the service sends for one short text (one 384-dimension vector: float values over gRPC, base64 over REST), so the
transport, protobuf framing and Envoy's transcoder carry the same bytes as they do for the service. What a call
costs here is what grpc.aio (and, in front of it, Envoy) costs on this machine with nothing of the service's own:
bench/serving_path.py measures it in the same run as the service, beside issue 15's targets.

    python -m bench.bare_server [--port 0]    # prints the port it listens on
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
from google.api import httpbody_pb2

from service._gen.embeddings.v1 import embeddings_pb2 as pb
from service.api.embeddings import embed_response_wire
from service.api.rest import openai_body
from service.engine.model import EmbedResult
from service.event_loop import loop_factory
from tests.serving import stop_process

EMBED = "/embeddings.v1.EmbeddingService/Embed"
REST_EMBED = "/embeddings.v1.RestService/CreateEmbedding"
DIMENSIONS = 384


def one_text_result(model: str) -> EmbedResult:
    """What the engine returns for one short text (a unit vector of the model's size, 12 tokens)."""
    vector = np.random.default_rng(0).standard_normal((1, DIMENSIONS)).astype(np.float32)
    return EmbedResult(model, vector / np.linalg.norm(vector), token_counts=[12], truncated=[False])


def prepared_answers(model: str) -> dict[str, bytes]:
    """Each method's answer, serialized once: Embed's (floats) and the REST route's (base64, as the openai SDK asks)."""
    result = one_text_result(model)
    body = httpbody_pb2.HttpBody(content_type="application/json", data=openai_body(result, "base64"))
    return {EMBED: embed_response_wire(result, pb.ENCODING_FORMAT_FLOAT), REST_EMBED: body.SerializeToString()}


class Prepared(grpc.GenericRpcHandler):
    """Every method answered with its prepared bytes (an empty message for methods without one)."""

    def __init__(self, answers: dict[str, bytes]) -> None:
        self._handlers = {
            method: grpc.unary_unary_rpc_method_handler(self._answer(answer)) for method, answer in answers.items()
        }
        self._empty = grpc.unary_unary_rpc_method_handler(self._answer(b""))

    @staticmethod
    def _answer(answer: bytes):
        async def handle(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return answer

        return handle

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        return self._handlers.get(handler_call_details.method, self._empty)


async def serve(port: int, model: str) -> None:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((Prepared(prepared_answers(model)),))
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(bound, flush=True)
    await server.wait_for_termination()


class BareServerProcess:
    """`python -m bench.bare_server` in a subprocess, as tests.serving.ServerProcess runs the service: `proc` and
    `port` once started, stopped on leaving."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.proc: subprocess.Popen | None = None
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> BareServerProcess:
        command = [sys.executable, "-m", "bench.bare_server", "--model", self.model]
        root = Path(__file__).resolve().parent.parent
        self.proc = subprocess.Popen(command, cwd=root, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.strip().isdigit():
            self.__exit__()
            raise RuntimeError(f"the bare server did not start (it printed {line!r})")
        self.port = int(line)
        return self

    def __exit__(self, *exc: object) -> None:
        stop_process(self.proc)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bare_server", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--model", default="all-minilm-l6-v2", help="the model name in the answers")
    args = parser.parse_args(argv)
    with asyncio.Runner(loop_factory=loop_factory("auto")) as runner:
        runner.run(serve(args.port, args.model))


if __name__ == "__main__":
    main()
