"""Requests whose protobuf form is larger than their method takes are refused before they are parsed (issue 12).

A JSON body of token ids grows 5.5 times as Envoy transcodes it (`1,` is 2 bytes of JSON, an 11-byte
google.protobuf.Value): 13 MiB of JSON, under the 16 MiB body cap, became ~72 MiB of protobuf that the server parsed
whole before any bound applied (seconds, and ~300 MiB of RSS a call), then answered 200. The interactive embedding
methods take messages of up to 32 MiB (`max_message_bytes` in the contract): the gateway refuses a REST body that
cannot fit before transcoding it, and the server refuses a larger message from its raw bytes, unparsed, whichever way
it came. Every refusal is 413 `request_too_large` (REST) or INVALID_ARGUMENT with that reason (gRPC), and neither
process keeps 50 MiB more than before.
"""

from __future__ import annotations

import struct
import time

import grpc
import pytest

from service._gen.embeddings.v1 import embeddings_pb2, rest_pb2
from tests.adversarial.probes import MIB, MODEL, Stack, assert_openai_error, raw_call, refused, rss_mib

MAX_GROWTH_MIB = 50
CAP = 32 * MIB
# `1,` repeated: a 13 MiB JSON body of ~6.8M token ids, ~72 MiB as protobuf.
FLOOD_IDS = 13 * MIB // 2
# One element of a ListValue: field 1, 9 bytes, holding Value{number_value (field 2, fixed64): 1.0}.
ID_ELEMENT = b"\x0a\x09\x11" + struct.pack("<d", 1.0)
EMBEDDING_ROUTES = ("/v1/embeddings", "/oai/v1/embeddings", "/v1/inference/embed")


def token_body(ids: int, text: str | None = None) -> bytes:
    """A REST body whose input is `ids` token ids (after `text`, when given: a mixed array the gateway cannot size
    without the text)."""
    first = f'"{text}",'.encode() if text is not None else b""
    return b'{"model":"' + MODEL.encode() + b'","input":[' + first + b"1," * (ids - 1) + b"1]}"


def varint(value: int) -> bytes:
    out = b""
    while value > 0x7F:
        out += bytes([value & 0x7F | 0x80])
        value >>= 7
    return out + bytes([value])


def token_message(ids: int) -> bytes:
    """CreateEmbeddingRequest{model, input: [1, 1, ...]} as bytes, made without building `ids` Python messages."""
    values = ID_ELEMENT * ids
    value = b"\x32" + varint(len(values)) + values  # Value{list_value (field 6): ListValue{values}}
    model = MODEL.encode()
    return b"\x0a" + varint(len(model)) + model + b"\x12" + varint(len(value)) + value


def memory(stack: Stack) -> tuple[int, int]:
    return rss_mib(stack.server.proc.pid), rss_mib(stack.envoy.proc.pid)


def assert_memory_settles(stack: Stack, before: tuple[int, int], timeout: float = 60.0) -> None:
    """Both processes come back within MAX_GROWTH_MIB of `before` (the server hands freed heap back after a call
    that received a large message, in a worker thread: a state to wait for)."""
    end = time.monotonic() + timeout
    while True:
        now = memory(stack)
        if now[0] - before[0] < MAX_GROWTH_MIB and now[1] - before[1] < MAX_GROWTH_MIB:
            return
        if time.monotonic() > end:
            raise AssertionError(f"RSS (server, envoy) MiB went from {before} to {now}")
        time.sleep(0.2)


def acme(stack: Stack) -> dict[str, str]:
    return {"content-type": "application/json", "authorization": f"Bearer {stack.keys['acme']}"}


def test_the_messages_built_here_are_what_they_claim():
    parsed = rest_pb2.CreateEmbeddingRequest.FromString(token_message(3))
    assert parsed.model == MODEL and [v.number_value for v in parsed.input.list_value.values] == [1, 1, 1]
    assert len(token_message(FLOOD_IDS)) > 2 * CAP and 13 * MIB < len(token_body(FLOOD_IDS)) < 13 * MIB + 64


def test_a_token_id_flood_over_rest_is_a_413_before_it_is_transcoded(stack: Stack):
    body = token_body(FLOOD_IDS)
    before = memory(stack)
    for path in (*EMBEDDING_ROUTES, "/v1/embeddings"):
        status, _, answer = stack.rest("POST", path, None, body, acme(stack))
        assert_openai_error(status, answer, 413, "request_too_large", "invalid_request_error")
        message = answer["error"]["message"]
        assert answer["error"]["param"] is None and "6815744 token ids" in message, answer
        assert "once transcoded" in message  # the gateway's answer, before transcoding: the server never saw it
    assert_memory_settles(stack, before)


@pytest.mark.parametrize("through", ["server", "gateway"])
def test_a_token_id_flood_over_grpc_is_refused_unparsed(stack: Stack, through: str):
    channel = stack.channel if through == "server" else stack.gateway
    message = token_message(FLOOD_IDS)
    before = memory(stack)
    rounds = 2 if through == "server" else 1  # what passes through Envoy raises its high-water mark, not the server's
    for method in ("/embeddings.v1.RestService/CreateEmbedding", "/embeddings.v1.RestService/InferenceEmbed") * rounds:
        error = refused(channel, method, message, key=stack.keys["acme"], timeout=120)
        assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "request_too_large"), error
        assert f"{len(message)} bytes" in error.message and "32 MiB" in error.message
    del message
    assert_memory_settles(stack, before)


@pytest.mark.parametrize("through", ["server", "gateway"])
def test_texts_over_the_cap_are_refused_over_grpc(stack: Stack, through: str):
    channel = stack.channel if through == "server" else stack.gateway
    request = embeddings_pb2.EmbedRequest(model=MODEL, inputs=["x" * (11 * MIB)] * 3).SerializeToString()
    before = memory(stack)
    error = refused(channel, "/embeddings.v1.EmbeddingService/Embed", request, key=stack.keys["acme"], timeout=120)
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "request_too_large"), error
    del request
    assert_memory_settles(stack, before)


def test_what_the_gateway_cannot_size_the_server_refuses_unparsed(stack: Stack):
    """10 MiB of text and 3M ids: at least 33,000,004 bytes as protobuf by what the gateway counts (under the cap,
    so it transcodes it), 43.5 MB in fact. The server refuses it from its size."""
    body = token_body(3_000_000, "x" * (10 * MIB))
    assert len(body) < 16 * MIB
    before = memory(stack)
    status, _, answer = stack.rest("POST", "/v1/embeddings", None, body, acme(stack))
    assert_openai_error(status, answer, 413, "request_too_large", "invalid_request_error")
    assert "bytes as a protobuf message" in answer["error"]["message"], answer  # the server's answer
    assert_memory_settles(stack, before)


def test_requests_under_the_cap_leave_no_memory_behind(stack: Stack):
    """A request read as a stream (the access interceptor reads unary requests so) stayed in memory after its call,
    in a reference cycle inside grpc, until the garbage collector's next full pass: ~150 MiB a 30 MiB call."""
    message = token_message(2_800_000)  # 30.8 MB, under the cap: parsed and embedded
    before = memory(stack)
    for _ in range(3):
        raw_call(stack.channel, "/embeddings.v1.RestService/CreateEmbedding", message, stack.keys["acme"], timeout=120)
    del message
    assert_memory_settles(stack, before)
