"""Per-method message caps (the contract's `max_message_bytes`) seen from the callers' side: what fits is served,
async jobs keep their larger cap, a compressed body is sized once inflated, and gRPC's own refusal of a message over
the server's `max_message_bytes` reads as 413 `request_too_large` over REST, not as a rate limit (429). The refusals
of oversized messages and their memory are probed in tests/adversarial/test_parsed_size.py."""

from __future__ import annotations

import gzip
import json
import tempfile
from pathlib import Path

import grpc
import numpy as np
import pytest

from service._gen.embeddings.v1 import embeddings_pb2, embeddings_pb2_grpc
from tests.serving import EnvoyProcess, ServerProcess, http

MIB = 1 << 20
MODEL = "all-minilm-l6-v2"
FLOOD_IDS = 13 * MIB // 2  # `1,` repeated: 13 MiB of JSON, ~72 MiB as protobuf
SMALL_SERVER_CAP = 4 * MIB


def token_body(ids: int) -> bytes:
    return b'{"model":"' + MODEL.encode() + b'","input":[' + b"1," * (ids - 1) + b"1]}"


def post(gateway, path: str, body: bytes, headers: dict | None = None) -> tuple[int, dict]:
    status, _, raw = http(gateway, "POST", path, body, {"content-type": "application/json", **(headers or {})})
    return status, json.loads(raw)


def assert_too_large(status: int, answer: dict) -> None:
    assert status == 413, answer
    assert answer["error"]["code"] == "request_too_large" and answer["error"]["type"] == "invalid_request_error"


def test_token_ids_under_the_cap_are_embedded(gateway):
    status, answer = post(gateway, "/v1/embeddings", token_body(2_000_000))  # 4 MiB of JSON, 22 MB as protobuf
    assert status == 200 and len(answer["data"]) == 1, answer
    assert answer["usage"]["prompt_tokens"] == 256  # cut to the model's limit, as any long input


def test_async_jobs_keep_their_larger_cap(gateway):
    body = token_body(FLOOD_IDS)
    assert_too_large(*post(gateway, "/v1/embeddings", body))
    status, job = post(gateway, "/v1/async/embeddings", body)  # 256 MiB messages
    assert status == 200 and job["status"] == "queued" and job["input_count"] == 1, job


def test_a_compressed_body_is_sized_once_inflated(gateway):
    ids = np.full(2 * FLOOD_IDS - 1, ord(","), dtype=np.uint8)
    ids[::2] = np.random.default_rng(12).integers(ord("0"), ord("9") + 1, FLOOD_IDS, dtype=np.uint8)  # 1 digit each
    body = gzip.compress(b'{"model":"' + MODEL.encode() + b'","input":[' + ids.tobytes() + b"]}", compresslevel=1)
    assert len(body) < 4 * MIB  # under any body cap as sent; ~75 MB as protobuf once inflated and transcoded
    status, answer = post(gateway, "/v1/embeddings", body, {"content-encoding": "gzip"})
    assert_too_large(status, answer)
    assert f"{FLOOD_IDS} token ids" in answer["error"]["message"]


@pytest.fixture(scope="module")
def small_stack(model_repo: Path):
    """A server whose own max_message_bytes (4 MiB) is below every method's declared cap: gRPC refuses larger
    messages itself (RESOURCE_EXHAUSTED), before the method's cap applies."""
    args = ("--models", MODEL, "--max-message-bytes", str(SMALL_SERVER_CAP))
    with ServerProcess(model_repo, *args) as server, EnvoyProcess(server.port, Path(tempfile.mkdtemp())) as envoy:
        yield server, envoy


@pytest.mark.parametrize("path", ["/v1/embeddings", "/v1/async/embeddings"])
def test_a_message_over_the_servers_own_cap_is_a_413_not_a_429(small_stack, path: str):
    _, envoy = small_stack
    assert_too_large(*post(envoy, path, token_body(500_000)))  # 1 MiB of JSON, 5.5 MB as protobuf


def test_native_grpc_over_the_servers_own_cap_is_resource_exhausted(small_stack):
    server, _ = small_stack
    with grpc.insecure_channel(server.address) as channel:
        stub = embeddings_pb2_grpc.EmbeddingServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.Embed(embeddings_pb2.EmbedRequest(model=MODEL, inputs=["x" * (5 * MIB)]), timeout=60)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # gRPC's own, as any gRPC server's
