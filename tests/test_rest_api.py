"""The OpenAI-compatible REST surface through the real Envoy and the real server, driven by the real openai SDK
and by raw HTTP for exact shapes, headers and every error path."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess

import bpe_openai
import grpc
import numpy as np
import openai
import pytest
from google.protobuf import struct_pb2

from gateway.envoy import CONFIG, ROOT, validate
from service._gen.embeddings.v1 import embeddings_pb2 as pb
from service._gen.embeddings.v1 import rest_pb2, rest_pb2_grpc
from tests.serving import http

FP32 = "all-minilm-l6-v2"
TINY = "tiny-bert"
TEXTS = ["The quick brown fox", "jumps over the lazy dog", "ünïcödé ✓ 日本語"]


def grpc_vectors(stub, texts, model=FP32, **options) -> np.ndarray:
    response = stub.Embed(pb.EmbedRequest(model=model, inputs=texts, **options), timeout=60)
    return np.array([list(e.values) for e in response.embeddings], dtype=np.float32)


def cosine(a, b) -> np.ndarray:
    a, b = np.asarray(a), np.asarray(b)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


# --- the openai SDK -------------------------------------------------------------------------------------------


def test_sdk_default_base64_decodes_to_the_grpc_vectors(openai_client, stub):
    result = openai_client.embeddings.create(model=FP32, input=TEXTS)  # the SDK asks for base64 and decodes it
    got = np.array([d.embedding for d in result.data], dtype=np.float32)
    assert np.array_equal(got, grpc_vectors(stub, TEXTS))
    assert [d.index for d in result.data] == [0, 1, 2]
    assert result.model == FP32 and result.object == "list"
    assert result.usage.prompt_tokens == result.usage.total_tokens > 0


def test_sdk_explicit_float_and_base64(openai_client, stub):
    expected = grpc_vectors(stub, TEXTS)
    floats = openai_client.embeddings.create(model=FP32, input=TEXTS, encoding_format="float")
    assert np.array_equal(np.array([d.embedding for d in floats.data], dtype=np.float32), expected)
    raw = openai_client.embeddings.create(model=FP32, input=TEXTS, encoding_format="base64")
    decoded = np.stack([np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") for d in raw.data])
    assert all(isinstance(d.embedding, str) for d in raw.data)
    assert np.array_equal(decoded, expected)


def test_sdk_single_string_and_alias(openai_client):
    result = openai_client.embeddings.create(model="sentence-transformers/all-MiniLM-L6-v2", input="hello")
    assert len(result.data) == 1 and len(result.data[0].embedding) == 384 and result.model == FP32


def test_sdk_dimensions(openai_client, stub):
    # tiny-bert does not normalize by default; `normalize` is this service's extension field.
    result = openai_client.embeddings.create(
        model=TINY, input=["shorter vectors"], dimensions=8, extra_body={"normalize": True}
    )
    got = np.array(result.data[0].embedding, dtype=np.float32)
    assert got.shape == (8,)
    full = grpc_vectors(stub, ["shorter vectors"], model=TINY)[0]
    assert np.allclose(got, full[:8] / np.linalg.norm(full[:8]), atol=1e-6)


def test_sdk_errors_are_typed_with_code_and_param(openai_client):
    with pytest.raises(openai.NotFoundError) as missing:
        openai_client.embeddings.create(model="text-embedding-ada-999", input="x")
    assert missing.value.code == "model_not_found" and missing.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as empty:
        openai_client.embeddings.create(model=FP32, input=["fine", ""])
    assert empty.value.body["param"] == "input" and empty.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as dims:
        openai_client.embeddings.create(model=FP32, input="x", dimensions=256)
    assert dims.value.body["message"].startswith("This model does not support specifying dimensions.")
    assert dims.value.code == "dimensions_not_supported" and dims.value.body["param"] == "dimensions"
    with pytest.raises(openai.BadRequestError) as long_input:
        openai_client.embeddings.create(model=FP32, input=["word " * 300], extra_body={"truncate": False})
    assert long_input.value.code == "context_length_exceeded"
    assert "maximum context length is 256 tokens" in long_input.value.body["message"]


def test_token_id_inputs_equal_their_text(openai_client, stub):
    """LangChain's default: cl100k_base token ids (arrays of arrays, or one flat array)."""
    cl100k = bpe_openai.get_encoding("cl100k_base")
    ids = [cl100k.encode(t) for t in TEXTS]
    nested = openai_client.embeddings.create(model=FP32, input=ids, encoding_format="float")
    expected = grpc_vectors(stub, TEXTS)
    assert cosine(np.array([d.embedding for d in nested.data]), expected).min() >= 0.99999
    flat = openai_client.embeddings.create(model=FP32, input=ids[0], encoding_format="float")
    assert len(flat.data) == 1 and cosine(flat.data[0].embedding, expected[0]) >= 0.99999


@pytest.mark.parametrize("encoding_format", ["float", "base64"])
def test_2048_inputs_in_one_request(openai_client, encoding_format):
    texts = [f"sentence {i} about batching many inputs" for i in range(2048)]
    result = openai_client.embeddings.create(model=FP32, input=texts, encoding_format=encoding_format)
    assert [d.index for d in result.data] == list(range(2048))
    first = result.data[0].embedding
    size = len(base64.b64decode(first)) // 4 if encoding_format == "base64" else len(first)
    assert size == 384


# --- exact JSON shapes ----------------------------------------------------------------------------------------


def test_embeddings_json_exact_shape_and_compact_floats(gateway, stub):
    status, headers, raw = http(gateway, "POST", "/v1/embeddings", {"model": FP32, "input": "index zero"})
    assert status == 200 and headers["content-type"] == "application/json"
    body = json.loads(raw)
    assert list(body) == ["object", "data", "model", "usage"]
    assert body["object"] == "list" and body["model"] == FP32
    assert body["usage"] == {
        "prompt_tokens": body["usage"]["prompt_tokens"],
        "total_tokens": body["usage"]["prompt_tokens"],
        "prompt_tokens_details": {"cached_tokens": body["usage"]["prompt_tokens_details"]["cached_tokens"]},
    }
    assert isinstance(body["usage"]["prompt_tokens_details"]["cached_tokens"], int)
    assert isinstance(body["usage"]["prompt_tokens"], int)
    item = body["data"][0]
    assert list(item) == ["object", "index", "embedding"] and item == {**item, "object": "embedding", "index": 0}
    printed = re.search(rb'"embedding":\[([^\]]*)\]', raw).group(1).decode().split(",")
    for text in printed:  # float32 shortest form: at most 9 significant digits
        assert len(re.sub(r"[-.]|e.*$", "", text).lstrip("0")) <= 9, text
    assert np.array_equal(
        np.array([float(t) for t in printed], dtype=np.float32), grpc_vectors(stub, ["index zero"])[0]
    )


def test_oai_prefix_is_identical(gateway):
    request = {"model": FP32, "input": ["same", "answer"]}
    first = http(gateway, "POST", "/v1/embeddings", request)
    second = http(gateway, "POST", "/oai/v1/embeddings", request)
    assert first[0] == second[0] == 200
    answers = [json.loads(raw) for _, _, raw in (first, second)]
    for answer in answers:  # the second is served from the embedding cache, and says so
        answer["usage"].pop("prompt_tokens_details")
    assert answers[0] == answers[1] and second[1]["x-cached-inputs"] == "2"


def test_scaigrid_inference_embed_envelope(gateway, stub):
    status, _, raw = http(gateway, "POST", "/v1/inference/embed", {"model": FP32, "input": ["The quick brown fox"]})
    body = json.loads(raw)
    assert status == 200 and body["status"] == "ok"
    assert list(body["data"]) == ["model", "data", "usage"]
    assert body["data"]["data"][0]["index"] == 0 and list(body["data"]["data"][0]) == ["index", "embedding"]
    expected = grpc_vectors(stub, ["The quick brown fox"])[0]
    assert np.array_equal(np.array(body["data"]["data"][0]["embedding"], dtype=np.float32), expected)


def test_models_list_and_retrieve(gateway):
    status, _, raw = http(gateway, "GET", "/v1/models")
    body = json.loads(raw)
    assert status == 200 and body["object"] == "list"
    model = next(m for m in body["data"] if m["id"] == FP32)
    assert model["object"] == "model" and isinstance(model["created"], int) and model["owned_by"]
    filtered = json.loads(http(gateway, "GET", "/v1/models?modality=embedding")[2])
    assert [m["id"] for m in filtered["data"]] == [m["id"] for m in body["data"]]
    for path in (
        "/v1/models/all-minilm-l6-v2",
        "/v1/models/sentence-transformers/all-MiniLM-L6-v2",
        "/v1/models/sentence-transformers%2Fall-MiniLM-L6-v2",
    ):
        status, _, raw = http(gateway, "GET", path)
        single = json.loads(raw)
        assert status == 200 and single["id"] == FP32 and single["object"] == "model", path
        assert isinstance(single["created"], int)


def test_sdk_models(openai_client):
    ids = [m.id for m in openai_client.models.list()]
    assert FP32 in ids
    assert openai_client.models.retrieve("sentence-transformers/all-MiniLM-L6-v2").id == FP32


def test_health(gateway):
    status, _, raw = http(gateway, "GET", "/health")
    assert status == 200 and json.loads(raw)["status"] == "SERVING"


def test_headers_request_id_processing_time_no_grpc(gateway):
    status, headers, _ = http(
        gateway, "POST", "/v1/embeddings", {"model": FP32, "input": "x"}, {"x-request-id": "req-42"}
    )
    assert status == 200 and headers["x-request-id"] == "req-42"
    assert int(headers["openai-processing-ms"]) >= 0
    assert not [h for h in headers if h.startswith("grpc-")]
    _, generated, _ = http(gateway, "POST", "/v1/embeddings", {"model": "nope", "input": "x"})
    assert generated["x-request-id"] and not [h for h in generated if h.startswith("grpc-")]


# --- errors: every path in OpenAI's envelope -----------------------------------------------------------------

LONG = "word " * 300
ERRORS = {
    "unknown model": ("POST", "/v1/embeddings", {"model": "nope", "input": "x"}, 404, "model", "model_not_found"),
    "missing model": ("POST", "/v1/embeddings", {"input": "x"}, 400, "model", "invalid_input"),
    "missing input": ("POST", "/v1/embeddings", {"model": FP32}, 400, "input", "invalid_input"),
    "empty string": ("POST", "/v1/embeddings", {"model": FP32, "input": ""}, 400, "input", "invalid_input"),
    "empty array": ("POST", "/v1/embeddings", {"model": FP32, "input": []}, 400, "input", "invalid_input"),
    "mixed array": ("POST", "/v1/embeddings", {"model": FP32, "input": ["a", 1]}, 400, "input", "invalid_input"),
    "object input": ("POST", "/v1/embeddings", {"model": FP32, "input": {"a": 1}}, 400, "input", "invalid_input"),
    "bad token id": (
        "POST",
        "/v1/embeddings",
        {"model": FP32, "input": [[1, 99999999]]},
        400,
        "input",
        "invalid_input",
    ),
    "fractional token": ("POST", "/v1/embeddings", {"model": FP32, "input": [1.5, 2]}, 400, "input", "invalid_input"),
    "too many inputs": (
        "POST",
        "/v1/embeddings",
        {"model": FP32, "input": ["x"] * 2049},
        400,
        "input",
        "too_many_inputs",
    ),
    "context length (truncate: false)": (
        "POST",
        "/v1/embeddings",
        {"model": FP32, "input": ["ok", LONG], "truncate": False},
        400,
        "input",
        "context_length_exceeded",
    ),
    "dimensions unsupported": (
        "POST",
        "/v1/embeddings",
        {"model": FP32, "input": "x", "dimensions": 64},
        400,
        "dimensions",
        "dimensions_not_supported",
    ),
    "dimensions zero": (
        "POST",
        "/v1/embeddings",
        {"model": TINY, "input": "x", "dimensions": 0},
        400,
        "dimensions",
        "invalid_input",
    ),
    "bad encoding": (
        "POST",
        "/v1/embeddings",
        {"model": FP32, "input": "x", "encoding_format": "hex"},
        400,
        "encoding_format",
        "invalid_input",
    ),
    "malformed json": ("POST", "/v1/embeddings", '{"model": "x", "input": ', 400, None, "invalid_request"),
    "wrong type": ("POST", "/v1/embeddings", {"model": 5, "input": "x"}, 400, None, "invalid_request"),
    "top-level array": ("POST", "/v1/embeddings", [{"model": FP32}], 400, None, "invalid_request"),
    "unknown route": ("POST", "/v1/nothing-here", {"model": FP32}, 404, None, "unknown_url"),
    "wrong verb": ("GET", "/v1/embeddings", None, 404, None, "unknown_url"),
    "unknown query parameter": ("GET", "/v1/models?color=blue", None, 400, None, "invalid_request"),
    "unknown model (get)": ("GET", "/v1/models/gpt-9", None, 404, "model", "model_not_found"),
    "oversized body": (
        "POST",
        "/v1/embeddings",
        '{"model":"x","input":"' + "a" * (17 << 20) + '"}',
        413,
        None,
        "request_too_large",
    ),
    "scaigrid unknown model": (
        "POST",
        "/v1/inference/embed",
        {"model": "nope", "input": "x"},
        404,
        "model",
        "model_not_found",
    ),
}


@pytest.mark.parametrize("path", ["/v1/embeddings", "/oai/v1/embeddings", "/v1/inference/embed"])
def test_metadata_is_refused_by_the_synchronous_routes(gateway, server, path):
    """`metadata` is the async jobs' field of the message the live routes share with them (CreateEmbeddingRequest):
    a live call that sets it is refused in OpenAI's envelope, naming it, not answered as if it were kept; over
    native gRPC (RestService) the same, as INVALID_ARGUMENT. An empty object sets nothing."""
    status, headers, raw = http(gateway, "POST", path, {"model": FP32, "input": "x", "metadata": {"k": "v"}})
    assert status == 400 and headers["content-type"].startswith("application/json"), raw
    error = json.loads(raw)["error"]
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", "metadata", "invalid_request")
    assert "metadata" in error["message"] and "/v1/async/embeddings" in error["message"]
    assert http(gateway, "POST", path, {"model": FP32, "input": "x", "metadata": {}})[0] == 200
    method = {"/v1/inference/embed": "InferenceEmbed"}.get(path, "CreateEmbedding")
    request = rest_pb2.CreateEmbeddingRequest(model=FP32, input=struct_pb2.Value(string_value="x"), metadata={"k": "v"})
    with grpc.insecure_channel(server.address) as channel, pytest.raises(grpc.RpcError) as refused:
        getattr(rest_pb2_grpc.RestServiceStub(channel), method)(request, timeout=30)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "metadata" in refused.value.details()


@pytest.mark.parametrize("case", list(ERRORS))
def test_error_paths_use_openai_envelope(gateway, case):
    method, path, body, status, param, code = ERRORS[case]
    got_status, headers, raw = http(gateway, method, path, body)
    assert got_status == status, raw[:300]
    assert headers["content-type"].startswith("application/json")
    error = json.loads(raw)["error"]
    assert sorted(error) == ["code", "message", "param", "type"]
    assert error["param"] == param and error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    expected_type = "invalid_request_error" if status < 500 else "server_error"
    assert error["type"] == expected_type
    assert not [h for h in headers if h.startswith("grpc-")]


def test_context_length_message_names_input_tokens_and_limit(gateway):
    _, _, raw = http(gateway, "POST", "/v1/embeddings", {"model": FP32, "input": ["ok", LONG], "truncate": False})
    message = json.loads(raw)["error"]["message"]
    assert "Input 1" in message and "302 tokens" in message and "256" in message


def test_upstream_down_is_503_in_envelope(tmp_path):
    from tests.serving import EnvoyProcess, free_port

    with EnvoyProcess(free_port(), tmp_path) as envoy:
        status, _, raw = http(envoy, "POST", "/v1/embeddings", {"model": FP32, "input": "x"})
    assert status == 503
    error = json.loads(raw)["error"]
    assert error["type"] == "server_error" and sorted(error) == ["code", "message", "param", "type"]


def test_queue_full_is_429_with_retry_after(served_repo, tmp_path):
    import concurrent.futures

    from tests.serving import EnvoyProcess, ServerProcess

    with (
        ServerProcess(served_repo, "--max-queued-inputs", "64", "--max-batch-size", "8") as small,
        EnvoyProcess(small.port, tmp_path) as envoy,
    ):

        def texts(call: int) -> list[str]:  # all distinct: none served from the embedding cache
            return [f"{call}.{i} a fairly long sentence to keep the model busy for a while " * 4 for i in range(32)]

        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            results = list(
                pool.map(lambda c: http(envoy, "POST", "/v1/embeddings", {"model": FP32, "input": texts(c)}), range(12))
            )
    statuses = {status for status, _, _ in results}
    assert statuses == {200, 429}
    _, headers, raw = next(r for r in results if r[0] == 429)
    assert headers["retry-after"] == "1" and headers["retry-after-ms"] == "1000"
    error = json.loads(raw)["error"]
    assert error["type"] == "rate_limit_error" and error["code"] == "queue_full"


def test_shipped_envoy_config_validates():
    result = validate(CONFIG, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout + result.stderr


def test_node_sdk(gateway, stub):
    """The official Node SDK (npm `openai`), which always asks for base64 and decodes it."""
    node = shutil.which("node")
    modules = ROOT / "build" / "npm" / "node_modules"
    if node is None:
        pytest.skip("node is not installed")
    if not (modules / "openai").is_dir():
        pytest.fail("npm package openai missing: `make setup` installs it into build/npm")
    script = ROOT / "tests" / "node" / "embeddings.mjs"
    done = subprocess.run(
        [node, str(script), f"{gateway.base_url}/v1", FP32],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OPENAI_NODE_MODULES": str(modules)},
    )
    assert done.returncode == 0, done.stderr
    checks = {line["check"]: line for line in map(json.loads, done.stdout.splitlines())}
    expected = grpc_vectors(stub, ["The quick brown fox", "jumps over the lazy dog"])
    default = checks["default"]
    assert default["model"] == FP32 and default["usage"]["prompt_tokens"] > 0
    assert [d["index"] for d in default["data"]] == [0, 1]
    assert np.array_equal(np.array([d["embedding"] for d in default["data"]], dtype=np.float32), expected)
    assert np.array_equal(np.array(checks["float"]["embedding"], dtype=np.float32), expected[0])
    error = checks["error"]
    assert (error["status"], error["code"], error["param"]) == (404, "model_not_found", "model")


def test_empty_lists_print_as_empty_arrays(gateway):
    status, _, raw = http(gateway, "GET", "/v1/models?modality=image")
    assert status == 200 and json.loads(raw) == {"object": "list", "data": []}
