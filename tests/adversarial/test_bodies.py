"""Oversized and malformed bodies: refused with a clear 4xx, at a cost bounded by the service, not by the body.

The 200 MiB probes: without a valid key the answer is 401 / UNAUTHENTICATED before the body is read, on the REST
port (Envoy's pre-body check) and the gRPC port (the server's interceptor refuses before reading the message), and
neither process grows by 50 MiB. A REST body is streamed from a generator; the one 200 MiB gRPC message is built
once for the module.
"""

from __future__ import annotations

import grpc
import pytest

from tests.adversarial.probes import (
    MIB,
    MODEL,
    WRONG_KEY,
    Stack,
    assert_openai_error,
    assert_still_serving,
    refused,
    rss_mib,
    stream_post,
)

BIG = 200 * MIB
MAX_GROWTH_MIB = 50
# What a refused sender may have pushed before the refusal reached it: kernel socket buffers, a flow-control window.
MAX_SENT_BEFORE_REFUSAL = 32 * MIB


@pytest.fixture(scope="module")
def big_message() -> bytes:
    """One 200 MiB gRPC request (a length-delimited field 1 of any request type): never read when refused."""
    return b"\x0a\x80\x80\x80\x64" + b"x" * (BIG - 5)


def memory(stack: Stack) -> tuple[int, int]:
    return rss_mib(stack.server.proc.pid), rss_mib(stack.envoy.proc.pid)


def assert_bounded(stack: Stack, before: tuple[int, int]) -> None:
    server, envoy = memory(stack)
    assert server - before[0] < MAX_GROWTH_MIB and envoy - before[1] < MAX_GROWTH_MIB, (before, (server, envoy))


@pytest.mark.parametrize("path", ["/v1/async/embeddings", "/v1/embeddings", "/v1/webhooks", "/v1/admin/keys"])
def test_a_200_mib_rest_body_without_a_valid_key_is_refused_before_it_is_read(stack: Stack, path: str):
    for key in (None, WRONG_KEY, stack.keys["revoked"]):
        before = memory(stack)
        headers = {"content-type": "application/json", **({"authorization": f"Bearer {key}"} if key else {})}
        answer = stream_post(stack.envoy.port, path, BIG, headers)
        assert answer.status_line == "HTTP/1.1 401 Unauthorized", answer
        assert_openai_error(401, answer.body, 401, "invalid_api_key", "authentication_error")
        assert answer.sent_bytes < MAX_SENT_BEFORE_REFUSAL
        assert_bounded(stack, before)
    assert_still_serving(stack)


@pytest.mark.parametrize(
    "method", ["/embeddings.v1.JobService/AsyncEmbed", "/embeddings.v1.EmbeddingService/Embed"], ids=["job", "embed"]
)
def test_a_200_mib_grpc_message_without_a_valid_key_is_refused_before_it_is_read(
    stack: Stack, big_message: bytes, method: str
):
    for channel in (stack.channel, stack.gateway):
        for key in (None, WRONG_KEY):
            before = memory(stack)
            error = refused(channel, method, big_message, key=key, timeout=60)
            assert (error.code, error.reason) == (grpc.StatusCode.UNAUTHENTICATED, "invalid_api_key")
            assert_bounded(stack, before)
    assert_still_serving(stack)


def test_a_body_over_the_cap_with_a_valid_key_is_a_413(stack: Stack):
    before = memory(stack)
    headers = {"content-type": "application/json", "authorization": f"Bearer {stack.keys['acme']}"}
    answer = stream_post(stack.envoy.port, "/v1/embeddings", BIG, headers)
    assert_openai_error(413, answer.body, 413, "request_too_large", "invalid_request_error")
    assert answer.status_line.startswith("HTTP/1.1 413") and answer.sent_bytes < 64 * MIB
    assert_bounded(stack, before)
    assert_still_serving(stack)


MALFORMED = [
    (b'{"model": "all-minilm-l6-v2", "input":', "invalid_request"),
    (b"[1, 2]", "invalid_request"),
    (b"\xff\xfe", "invalid_request"),
    (b"hello", "invalid_request"),
    (b"[" * 100_000 + b"]" * 100_000, "invalid_request"),
    (b'{"model": "all-minilm-l6-v2", "input": "x", "dimensions": "abc"}', "invalid_request"),
    (b'{"model": "all-minilm-l6-v2", "input": {"a": 1}}', "invalid_input"),
    (b'{"model": "all-minilm-l6-v2", "input": ""}', "invalid_input"),
    (b'{"model": "all-minilm-l6-v2", "input": [[-1]]}', "invalid_input"),
    (b"", "invalid_input"),
]


@pytest.mark.parametrize(("body", "code"), MALFORMED, ids=range(len(MALFORMED)))
def test_a_malformed_body_is_a_400_in_openais_envelope(stack: Stack, body: bytes, code: str):
    for path in ("/v1/embeddings", "/v1/async/embeddings"):
        headers = {"content-type": "application/json", "authorization": f"Bearer {stack.keys['acme']}"}
        status, _, answer = stack.rest("POST", path, None, body, headers)
        assert_openai_error(status, answer, 400, code, "invalid_request_error")


def test_too_many_inputs_is_a_400(stack: Stack):
    body = {"model": MODEL, "input": ["x"] * 2049}
    status, _, answer = stack.rest("POST", "/v1/embeddings", stack.keys["acme"], body)
    assert_openai_error(status, answer, 400, "too_many_inputs", "invalid_request_error")


def test_a_malformed_grpc_message_is_invalid_argument(stack: Stack):
    for channel in (stack.channel, stack.gateway):
        for message in (b"\xff\xff\xff", b"\x0a\xff\xff\xff\xff\x0f", b"\x12\x05abc"):
            error = refused(channel, "/embeddings.v1.EmbeddingService/Embed", message, key=stack.keys["acme"])
            assert error.code == grpc.StatusCode.INVALID_ARGUMENT, (message, error)
    assert_still_serving(stack)


def test_what_an_error_echoes_of_the_request_is_bounded(stack: Stack):
    """A huge model name or id used to travel back whole in the error's trailers, past Envoy's header limit: a 502
    (a reset, which in a cluster ejected the replica)."""
    key = stack.keys["acme"]
    for name in ("no-such-model", "m" * 100_000):
        status, _, answer = stack.rest("POST", "/v1/embeddings", key, {"model": name, "input": "x"})
        assert_openai_error(status, answer, 404, "model_not_found", "invalid_request_error")
        assert len(answer["error"]["message"]) <= 1024
        error = refused(
            stack.channel,
            "/embeddings.v1.EmbeddingService/Embed",
            b"\x0a" + _varint(len(name)) + name.encode(),
            key=key,
        )
        assert (error.code, error.reason) == (grpc.StatusCode.NOT_FOUND, "model_not_found")
    for path, code in [("/v1/async/jobs/{}", "job_not_found"), ("/v1/webhooks/{}/deliveries", "webhook_not_found")]:
        status, _, answer = stack.rest("GET", path.format("j" * 15_000), key)
        assert_openai_error(status, answer, 404, code, "invalid_request_error")
    status, _, answer = stack.rest("GET", "/v1/async/jobs/" + "j" * 20_000, key)
    assert_openai_error(status, answer, 431, "request_header_fields_too_large", "invalid_request_error")
    status, _, answer = stack.rest("GET", "/v1/models", key, None, {"x-big": "b" * 15_000})
    assert status == 200, answer  # headers Envoy lets through never fail at the server
    assert_still_serving(stack)


def _varint(value: int) -> bytes:
    out = b""
    while value > 0x7F:
        out += bytes([value & 0x7F | 0x80])
        value >>= 7
    return out + bytes([value])
