"""Slow clients hold a connection, never the service: while one trickles its body, sends half its headers, or opens a
connection and sends nothing, every other caller is answered. Without a valid key a trickled body is refused once
the headers are in; half-sent headers time out (408 in OpenAI's envelope)."""

from __future__ import annotations

import json
import socket
import threading

import grpc

from service._gen.embeddings.v1 import embeddings_pb2 as pb
from tests.adversarial.probes import MODEL, Stack, assert_openai_error, assert_still_serving, bearer, grpc_error
from tests.adversarial.test_headers import raw_request


def request_head(path: str, length: int, key: str | None) -> bytes:
    auth = f"authorization: Bearer {key}\r\n" if key else ""
    head = f"POST {path} HTTP/1.1\r\nhost: probe\r\ncontent-type: application/json\r\ncontent-length: {length}\r\n"
    return f"{head}{auth}\r\n".encode()


def read_answer(sock: socket.socket) -> tuple[str, bytes]:
    sock.settimeout(60)
    answer = b""
    while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return head.split(b"\r\n")[0].decode(), body


def test_a_trickled_body_holds_only_its_own_request(stack: Stack):
    body = b'{"model": "all-minilm-l6-v2", "input": "slowly, slowly"}'
    with socket.create_connection(("127.0.0.1", stack.envoy.port)) as sock:
        sock.sendall(request_head("/v1/embeddings", len(body), stack.keys["acme"]) + body[:10])
        assert_still_serving(stack)  # while the body is held back
        sock.sendall(body[10:30])
        assert_still_serving(stack)
        sock.sendall(body[30:])
        status_line, _ = read_answer(sock)
    assert status_line == "HTTP/1.1 200 OK"


def test_a_trickled_body_without_a_key_is_refused_once_the_headers_are_in(stack: Stack):
    with socket.create_connection(("127.0.0.1", stack.envoy.port)) as sock:
        sock.sendall(request_head("/v1/async/embeddings", 100 * 1024 * 1024, None) + b'{"model": ')
        status_line, body = read_answer(sock)
    assert status_line == "HTTP/1.1 401 Unauthorized"
    assert b'"code":"invalid_api_key"' in body


def test_half_sent_headers_time_out_with_a_408(stack: Stack):
    with socket.create_connection(("127.0.0.1", stack.envoy.port)) as sock:
        sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nhost: probe\r\n")
        assert_still_serving(stack)
        status_line, body = read_answer(sock)  # Envoy's request_headers_timeout
    assert status_line.startswith("HTTP/1.1 408")
    assert_openai_error(408, json.loads(body), 408, "request_timeout", "invalid_request_error")


def test_connections_that_never_send_do_not_block_anyone(stack: Stack):
    idle = [
        socket.create_connection(("127.0.0.1", port))
        for port in (stack.envoy.port, stack.server.port)
        for _ in range(50)
    ]
    try:
        assert_still_serving(stack)
        status_line, _ = raw_request(stack.envoy.port, b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        assert status_line == "HTTP/1.1 200 OK"
    finally:
        for sock in idle:
            sock.close()


class HeldBack:
    """A request stream whose one message comes only when released; records whether it was asked for it."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.pulled = False

    def __iter__(self):
        self.release.wait(60)
        self.pulled = True
        yield pb.EmbedRequest(model=MODEL, inputs=["late"]).SerializeToString()


def test_a_grpc_message_that_never_comes(stack: Stack):
    """Without a key, a call whose message is held back is refused at once (the message is never asked for); with
    a key it holds only itself until the message comes."""
    for channel in (stack.channel, stack.gateway):
        stream = HeldBack()
        call = channel.stream_unary("/embeddings.v1.EmbeddingService/Embed", request_serializer=None)
        try:
            call(iter(stream), timeout=30)
            raise AssertionError("accepted without a key")
        except grpc.RpcError as err:
            error = grpc_error(err)
        finally:
            refused_before_the_message = not stream.pulled
            stream.release.set()
        assert (error.code, error.reason) == (grpc.StatusCode.UNAUTHENTICATED, "invalid_api_key")
        assert refused_before_the_message

    stream = HeldBack()
    future = stack.channel.stream_unary(
        "/embeddings.v1.EmbeddingService/Embed",
        request_serializer=None,
        response_deserializer=pb.EmbedResponse.FromString,
    ).future(iter(stream), metadata=bearer(stack.keys["acme"]), timeout=60)
    assert_still_serving(stack)  # while that call waits for its message
    stream.release.set()
    assert len(future.result().embeddings) == 1
