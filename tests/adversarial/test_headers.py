"""Malformed and hostile headers: 4xx in OpenAI's envelope from Envoy itself, never a 5xx from a replica.

REST requests may not carry the headers gRPC reserves (grpc-*, *-bin): 400 `invalid_header` before anything else,
on every route, /health included. Native gRPC through the same listener keeps its deadlines and binary metadata.
HTTP/1.0 gets 426 and an oversized header block 431, each with its own code. In a cluster such requests never reach a
replica, and no answer a caller provokes ejects one (outlier detection counts only failures to answer).
"""

from __future__ import annotations

import json
import socket
import urllib.request

import grpc
import pytest

from service._gen.embeddings.v1 import embeddings_pb2 as pb
from service._gen.embeddings.v1 import embeddings_pb2_grpc as pb_grpc
from tests.adversarial.probes import MODEL, Stack, assert_openai_error, assert_still_serving, bearer, wait_for
from tests.serving import EnvoyProcess, free_port, http

RESERVED = [
    {"x-foo-bin": "!!!"},
    {"x-foo-bin": "AAAA"},
    {"grpc-timeout": "1n"},
    {"grpc-timeout": "1x"},
    {"GRPC-Encoding": "br"},
    {"grpc-status": "13"},
]
ROUTES = [
    ("GET", "/health", None),
    ("GET", "/openapi.json", None),
    ("GET", "/v1/models", None),
    ("POST", "/v1/embeddings", {"model": MODEL, "input": "x"}),
    ("POST", "/v1/async/embeddings", {"model": MODEL, "input": "x"}),
    ("GET", "/no/such/route", None),
]


@pytest.mark.parametrize("header", RESERVED, ids=lambda h: next(iter(h)))
def test_grpc_reserved_headers_on_rest_calls_are_a_400(stack: Stack, header: dict):
    for verb, path, body in ROUTES:
        for key in (None, stack.keys["acme"]):
            status, headers, answer = stack.rest(verb, path, key, body, header)
            assert_openai_error(status, answer, 400, "invalid_header", "invalid_request_error")
            assert next(iter(header)).lower() in answer["error"]["message"]
            assert not any(name.startswith("grpc-") for name in headers)
    assert_still_serving(stack)


def test_native_grpc_through_the_gateway_keeps_its_deadline_and_binary_metadata(stack: Stack):
    stub = pb_grpc.EmbeddingServiceStub(stack.gateway)
    metadata = (*bearer(stack.keys["acme"]), ("x-trace-bin", b"\x00\xff\x10"), ("x-note", "fine"))
    reply = stub.Embed(pb.EmbedRequest(model=MODEL, inputs=["x"]), metadata=metadata, timeout=30)
    assert len(reply.embeddings) == 1
    with pytest.raises(grpc.RpcError) as caught:
        inputs = [f"deadline {i}" for i in range(64)]  # distinct: not answered by the embedding cache in time
        stub.Embed(pb.EmbedRequest(model=MODEL, inputs=inputs), metadata=metadata, timeout=0.001)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert_still_serving(stack)


def raw_request(port: int, request: bytes) -> tuple[str, dict]:
    """Status line and JSON body of one raw HTTP request."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
            head, _, body = answer.partition(b"\r\n\r\n")
            lengths = [
                int(line.split(b":")[1]) for line in head.lower().split(b"\r\n") if line.startswith(b"content-length")
            ]
            if lengths and len(body) >= lengths[0]:
                break
    head, _, body = answer.partition(b"\r\n\r\n")
    return head.split(b"\r\n")[0].decode(), json.loads(body)


def test_http_1_0_is_a_426_with_its_own_code(stack: Stack):
    status_line, body = raw_request(stack.envoy.port, b"GET /health HTTP/1.0\r\n\r\n")
    assert status_line.startswith("HTTP/1.1 426")
    assert_openai_error(426, body, 426, "http_version_not_supported", "invalid_request_error")


def test_an_oversized_header_block_is_a_431_with_its_own_code(stack: Stack):
    status, _, answer = stack.rest("GET", "/health", None, None, {"x-big": "a" * 70_000})
    assert_openai_error(status, answer, 431, "request_header_fields_too_large", "invalid_request_error")
    assert_still_serving(stack)


def test_a_header_with_a_control_character_is_a_400(stack: Stack):
    status_line, body = raw_request(stack.envoy.port, b"GET /health HTTP/1.1\r\nhost: x\r\nx-bad: a\x01b\r\n\r\n")
    assert status_line.startswith("HTTP/1.1 400")
    assert_openai_error(400, body, 400, "invalid_request", "invalid_request_error")


def admin_stats(port: int) -> dict[str, int]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats?format=json", timeout=10) as response:
        stats = json.loads(response.read())["stats"]
    return {s["name"]: s["value"] for s in stats if "value" in s}


def test_no_answer_a_caller_provokes_ejects_a_replica(stack: Stack, tmp_path):
    """Two replicas (the same server twice) behind a cluster-mode Envoy: what used to be 5xx never reaches one, and
    answers (a client's expired deadline included) never eject one."""
    upstreams = [("127.0.0.1", stack.server.port), ("127.0.0.1", stack.server.port)]
    admin_port = free_port()
    with EnvoyProcess(stack.server.port, tmp_path, admin_port=admin_port, upstreams=upstreams) as envoy:
        wait_for(lambda: admin_stats(admin_port).get("cluster.embeddings_grpc.membership_healthy") == 2)
        upstream_before = admin_stats(admin_port)["cluster.embeddings_grpc.upstream_rq_total"]
        for _ in range(6):
            for header in RESERVED:
                status, _, raw = http(envoy, "GET", "/health", None, header)
                assert status == 400, raw
        assert admin_stats(admin_port)["cluster.embeddings_grpc.upstream_rq_total"] == upstream_before  # none sent
        with grpc.insecure_channel(f"127.0.0.1:{envoy.port}") as channel:
            stub = pb_grpc.EmbeddingServiceStub(channel)
            for call in range(8):
                with pytest.raises(grpc.RpcError):  # distinct inputs: none answered by the embedding cache in time
                    stub.Embed(
                        pb.EmbedRequest(model=MODEL, inputs=[f"x {call}.{i}" for i in range(64)]),
                        metadata=bearer(stack.keys["acme"]),
                        timeout=0.005,
                    )
        stats = admin_stats(admin_port)
        assert stats["cluster.embeddings_grpc.outlier_detection.ejections_enforced_total"] == 0
        assert stats["cluster.embeddings_grpc.membership_healthy"] == 2
        status, _, _ = http(envoy, "GET", "/health")
        assert status == 200
