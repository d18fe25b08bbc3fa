"""What the adversarial probes share: the stack under test, raw clients, and the checks every probe ends with."""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from service._gen.embeddings.v1 import embeddings_pb2 as pb
from service._gen.embeddings.v1 import embeddings_pb2_grpc as pb_grpc
from tests.serving import EnvoyProcess, ServerProcess, http

MODEL = "all-minilm-l6-v2"
MIB = 1024 * 1024
WRONG_KEY = "sk-000000000000-" + "x" * 43


@dataclass(frozen=True)
class Stack:
    server: ServerProcess
    envoy: EnvoyProcess
    # gRPC straight to the server, and native gRPC through Envoy's listener.
    channel: grpc.Channel
    gateway: grpc.Channel
    keys: dict[str, str]
    data_dir: Path

    def rest(self, method: str, path: str, key: str | None = None, body=None, headers: dict | None = None):
        """(status, headers, parsed JSON or None) of one HTTP/1.1 call through Envoy."""
        sent = {**({"authorization": f"Bearer {key}"} if key else {}), **(headers or {})}
        status, response_headers, raw = http(self.envoy, method, path, body, sent)
        return status, response_headers, json.loads(raw) if raw else None


def bearer(key: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),) if key else ()


@dataclass(frozen=True)
class GrpcError:
    code: grpc.StatusCode
    reason: str | None
    message: str


def grpc_error(err: grpc.RpcError) -> GrpcError:
    """The code, ErrorInfo reason and message of a failed call."""
    reason = None
    status = rpc_status.from_call(err)
    for detail in status.details if status is not None else ():
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            reason = info.reason
    return GrpcError(err.code(), reason, err.details() or "")


def raw_call(channel: grpc.Channel, method: str, request: bytes = b"", key: str | None = None, **kwargs):
    """A unary call by full method name with raw request bytes (an empty message decodes as any request type)."""
    stub = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
    return stub(request, metadata=bearer(key), timeout=kwargs.pop("timeout", 30), **kwargs)


def refused(channel: grpc.Channel, method: str, request: bytes = b"", key: str | None = None, **kwargs) -> GrpcError:
    """The error of a call that must fail."""
    try:
        raw_call(channel, method, request, key, **kwargs)
    except grpc.RpcError as err:
        return grpc_error(err)
    raise AssertionError(f"{method} succeeded")


def assert_openai_error(status: int, body: dict | None, expected_status: int, code: str, kind: str) -> None:
    """OpenAI's envelope, exactly: four keys, the status, code and type expected, a message."""
    assert status == expected_status, (status, body)
    assert body is not None and set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert (error["code"], error["type"]) == (code, kind), error
    assert isinstance(error["message"], str) and error["message"], error


def embed_rest(stack: Stack, key: str | None, text: str = "still here"):
    return stack.rest("POST", "/v1/embeddings", key, {"model": MODEL, "input": text})


def embed_grpc(channel: grpc.Channel, key: str | None, text: str = "still here") -> pb.EmbedResponse:
    stub = pb_grpc.EmbeddingServiceStub(channel)
    return stub.Embed(pb.EmbedRequest(model=MODEL, inputs=[text]), metadata=bearer(key), timeout=60)


def assert_still_serving(stack: Stack) -> None:
    """After a probe: health says SERVING and a keyed call succeeds on both ports."""
    health = health_pb2_grpc.HealthStub(stack.channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert embed_rest(stack, stack.keys["acme"])[0] == 200
    assert len(embed_grpc(stack.channel, stack.keys["acme"]).embeddings) == 1
    assert len(embed_grpc(stack.gateway, stack.keys["acme"]).embeddings) == 1


def warm_up(stack: Stack) -> None:
    """The first calls of each kind (connections, arenas, caches) before memory is recorded."""
    for _ in range(3):
        assert_still_serving(stack)
    for key in (None, WRONG_KEY):
        embed_rest(stack, key)
        refused(stack.channel, "/embeddings.v1.EmbeddingService/Embed", key=key)


def rss_mib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024
    raise RuntimeError(f"no VmRSS for {pid}")


@dataclass(frozen=True)
class StreamedPost:
    status_line: str
    body: dict | None
    sent_bytes: int


def stream_post(port: int, path: str, total: int, headers: dict[str, str], chunk: int = MIB) -> StreamedPost:
    """POST a `total`-byte body from a generator (never built whole), reading the answer as soon as one comes.

    A server that answers before the body is read stops reading: the send side then blocks or is reset, and what
    was sent by then says how much of the body was taken in (the kernel's socket buffers hold a few MiB)."""
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    request = f"POST {path} HTTP/1.1\r\nhost: probe\r\ncontent-length: {total}\r\n{head}\r\n".encode()
    piece = b"[" + b"1," * (chunk // 2 - 1) + b"1"  # JSON-ish filler, `chunk` bytes
    sent, answer = 0, b""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request)
        sock.setblocking(False)
        while b"\r\n\r\n" not in answer or not _complete(answer):
            readable, writable, _ = select.select([sock], [sock] if sent < total else [], [], 30)
            if not readable and not writable:
                raise AssertionError(f"no answer after {sent} bytes sent")
            if readable:
                data = _recv(sock)
                if not data:
                    break
                answer += data
            elif writable:
                try:
                    sent += sock.send(piece[: total - sent])
                except (BrokenPipeError, ConnectionResetError):
                    sent = total  # stop sending; read what came back
    head_text, _, body = answer.partition(b"\r\n\r\n")
    status_line = head_text.split(b"\r\n", 1)[0].decode()
    return StreamedPost(status_line, json.loads(body) if body.strip() else None, sent)


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except ConnectionResetError:
        return b""


def _complete(answer: bytes) -> bool:
    """Whether an HTTP/1.1 answer holds all of its content-length."""
    head, _, body = answer.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return True


def chunks(total: int, size: int = MIB) -> Iterator[bytes]:
    """`total` bytes in `size` pieces, made as they are sent."""
    piece = b"x" * size
    for start in range(0, total, size):
        yield piece[: min(size, total - start)]


def wait_for(predicate, timeout: float = 60.0):
    """The predicate's first truthy value, polled (a state to reach, not a time to wait)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if value := predicate():
            return value
        time.sleep(0.1)
    raise AssertionError("condition not met in time")
