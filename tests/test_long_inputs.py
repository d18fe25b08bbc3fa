"""Long inputs on the real server and Envoy: cut by default exactly as sentence-transformers cuts them, refused on
request, reported (header, trailing metadata, metric), and at a cost bounded by the model's limit, not the input's
size (multi-megabyte strings and token-id arrays leave the server's memory where it was)."""

from __future__ import annotations

import base64
import json
import shutil
import time
from pathlib import Path

import bpe_openai
import grpc
import numpy as np
import pytest
from google.protobuf import struct_pb2
from openai import OpenAI

from service._gen.embeddings.v1 import embeddings_pb2 as pb
from service._gen.embeddings.v1 import embeddings_pb2_grpc as pb_grpc
from service._gen.embeddings.v1 import jobs_pb2, jobs_pb2_grpc, rest_pb2
from tests.serving import EnvoyProcess, ServerProcess, http
from tests.test_observability import scrape, value

FP32 = "all-minilm-l6-v2"
CUT = "all-minilm-l6-v2-cut"  # the same model with `auto_truncate: true` in its manifest
GOLDEN = Path(__file__).resolve().parent / "golden" / "all-minilm-l6-v2-long.json"
SENTENCE = "hello world, this is a sentence. "  # 8 tokens in 33 characters
MiB = 1 << 20


@pytest.fixture(scope="module")
def long_golden() -> dict:
    data = json.loads(GOLDEN.read_text(encoding="utf-8"))
    data["vectors"] = np.stack([np.frombuffer(base64.b64decode(v), dtype="<f4") for v in data["embeddings_f32_base64"]])
    return data


def rss_mib(server: ServerProcess) -> float:
    assert server.proc is not None
    status = Path(f"/proc/{server.proc.pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1]) / 1024


def grpc_vectors(response: pb.EmbedResponse) -> np.ndarray:
    return np.array([list(e.values) for e in response.embeddings], dtype=np.float32)


def _strings(texts) -> struct_pb2.Value:
    return struct_pb2.Value(list_value=struct_pb2.ListValue(values=[struct_pb2.Value(string_value=t) for t in texts]))


# --- auto_truncate (the session's server: default settings) ----------------------------------------------------------


def test_long_inputs_are_cut_like_sentence_transformers_by_default(gateway, stub, long_golden):
    texts, expected = long_golden["texts"], long_golden["vectors"]
    before = scrape(gateway)
    sdk = OpenAI(base_url=f"{gateway.base_url}/v1", api_key="unused", max_retries=0)
    raw = sdk.embeddings.with_raw_response.create(model=FP32, input=texts, encoding_format="float")
    result = raw.parse()
    assert raw.headers["x-truncated-inputs"] == str(len(texts))
    got = np.array([d.embedding for d in result.data], dtype=np.float32)
    assert np.abs(got - expected).max() < 1e-5
    assert result.usage.total_tokens == 256 * len(texts)

    response, call = stub.Embed.with_call(pb.EmbedRequest(model=FP32, inputs=texts), timeout=120)
    assert np.abs(grpc_vectors(response) - expected).max() < 1e-5
    assert all(e.truncated and e.tokens == 256 for e in response.embeddings)
    assert dict(call.trailing_metadata())["x-truncated-inputs"] == str(len(texts))
    after = scrape(gateway)
    counted = value(after, "embeddings_truncated_inputs_total", model=FP32)
    assert counted - value(before, "embeddings_truncated_inputs_total", model=FP32) == 2 * len(texts)

    status, headers, _ = http(gateway, "POST", "/v1/embeddings", {"model": FP32, "input": ["short", "texts"]})
    assert status == 200 and headers["x-truncated-inputs"] == "0"


def test_truncate_false_still_refuses_with_a_useful_count(gateway, stub, long_golden):
    text = long_golden["texts"][0]  # ~2,000 tokens in 10,000+ characters: only a prefix is read
    status, _, raw = http(gateway, "POST", "/v1/embeddings", {"model": FP32, "input": ["ok", text], "truncate": False})
    error = json.loads(raw)["error"]
    assert status == 400 and error["code"] == "context_length_exceeded" and error["param"] == "input"
    assert "Input 1 is too long" in error["message"] and "has at least " in error["message"]
    with pytest.raises(grpc.RpcError) as caught:
        stub.Embed(pb.EmbedRequest(model=FP32, inputs=[text], truncate=False), timeout=60)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "has at least " in caught.value.details()
    counted = int(caught.value.details().split("has at least ")[1].split()[0])
    assert 256 < counted <= long_golden["token_counts"][0]


def test_async_jobs_truncate_by_default_and_refuse_on_request(server, stub, long_golden):
    texts = long_golden["texts"][:3]
    with grpc.insecure_channel(server.address) as channel:
        jobs = jobs_pb2_grpc.JobServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            jobs.AsyncEmbed(
                rest_pb2.CreateEmbeddingRequest(model=FP32, input=_strings(texts), truncate=False), timeout=60
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "too long" in caught.value.details()
        job = jobs.AsyncEmbed(rest_pb2.CreateEmbeddingRequest(model=FP32, input=_strings(texts)), timeout=60)
        while (job := jobs.GetJob(jobs_pb2.GetJobRequest(id=job.id), timeout=10)).status != "completed":
            assert job.status in ("queued", "in_progress"), job
            time.sleep(0.2)
        assert job.usage.total_tokens == 256 * len(texts)
        page = json.loads(jobs.GetJobResults(jobs_pb2.GetJobResultsRequest(id=job.id), timeout=30).data)
    got = np.array([d["embedding"] for d in page["data"]], dtype=np.float32)
    assert np.abs(got - long_golden["vectors"][:3]).max() < 1e-5


# --- the setting and its per-model override -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def refusing_server(model_repo, tmp_path_factory):
    """EMBED_AUTO_TRUNCATE=false, with a copy of the model whose manifest says `auto_truncate: true`."""
    repo = tmp_path_factory.mktemp("auto-truncate-repo")
    source = model_repo / FP32
    for model_id, override in ((FP32, None), (CUT, True)):
        target = repo / model_id
        target.mkdir()
        for path in source.iterdir():  # every file but the manifest (the solo graph too)
            if path.name != "manifest.json":
                (target / path.name).symlink_to(path)
        manifest = json.loads((source / "manifest.json").read_text())
        manifest["id"], manifest["aliases"] = model_id, []
        if override is not None:
            manifest["auto_truncate"] = override
        (target / "manifest.json").write_text(json.dumps(manifest))
    with ServerProcess(repo, env={"EMBED_AUTO_TRUNCATE": "false"}) as server:
        yield server
    shutil.rmtree(repo, ignore_errors=True)


def test_the_server_setting_and_the_manifest_override(refusing_server, long_golden):
    text, expected = long_golden["texts"][1], long_golden["vectors"][1]
    with grpc.insecure_channel(refusing_server.address) as channel:
        stub = pb_grpc.EmbeddingServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.Embed(pb.EmbedRequest(model=FP32, inputs=[text]), timeout=60)  # the server's default: refuse
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "context_length_exceeded" in str(caught.value.trailing_metadata())
        asked = stub.Embed(pb.EmbedRequest(model=FP32, inputs=[text], truncate=True), timeout=60)
        assert np.abs(grpc_vectors(asked)[0] - expected).max() < 1e-5
        by_manifest = stub.Embed(pb.EmbedRequest(model=CUT, inputs=[text]), timeout=60)  # the model's default: cut
        assert np.abs(grpc_vectors(by_manifest)[0] - expected).max() < 1e-5
        with pytest.raises(grpc.RpcError):
            stub.Embed(pb.EmbedRequest(model=CUT, inputs=[text], truncate=False), timeout=60)


# --- bounded cost of huge inputs --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lone_server(model_repo, tmp_path_factory):
    """A server of its own, so its memory is measured with nothing else running on it."""
    with (
        ServerProcess(model_repo, "--models", FP32) as server,
        EnvoyProcess(server.port, tmp_path_factory.mktemp("envoy-long")) as envoy,
    ):
        yield server, envoy


def test_megabyte_inputs_cost_what_the_model_reads_over_rest_and_grpc(lone_server):
    server, envoy = lone_server
    huge = SENTENCE * (15 * MiB // len(SENTENCE))  # 15 MiB: under the REST body cap
    reference_text = SENTENCE * 60  # 480 tokens: cut to the same 256
    with grpc.insecure_channel(server.address, options=[("grpc.max_receive_message_length", 64 * MiB)]) as channel:
        stub = pb_grpc.EmbeddingServiceStub(channel)
        reference = grpc_vectors(stub.Embed(pb.EmbedRequest(model=FP32, inputs=[reference_text]), timeout=60))[0]

        def one_round() -> None:
            refused = http(
                envoy, "POST", "/v1/embeddings", {"model": FP32, "input": huge[: 8 * MiB], "truncate": False}
            )
            assert refused[0] == 400 and "has at least " in json.loads(refused[2])["error"]["message"]
            status, headers, raw = http(envoy, "POST", "/v1/embeddings", {"model": FP32, "input": huge})
            assert status == 200 and headers["x-truncated-inputs"] == "1"
            assert np.abs(np.array(json.loads(raw)["data"][0]["embedding"]) - reference).max() < 1e-5
            with pytest.raises(grpc.RpcError) as caught:
                stub.Embed(pb.EmbedRequest(model=FP32, inputs=[huge[: 8 * MiB]], truncate=False), timeout=60)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            response = stub.Embed(pb.EmbedRequest(model=FP32, inputs=[huge, huge[:MiB]]), timeout=60)
            assert np.abs(grpc_vectors(response) - reference).max() < 1e-5

        one_round()  # first use: buffers of the transports reach their size
        settled = rss_mib(server)
        for _ in range(3):
            one_round()
        # Tokenizing these inputs whole held 1-2.5 GiB each, kept after the call. What remains is the transports'
        # (gRPC and protobuf keep some of a 16 MiB message's buffers: a request refused for an unknown model,
        # never read, does the same), which levels off; 12 calls of 8-15 MiB stay well within this.
        assert rss_mib(server) - settled < 200, "memory grew with the input's size"


def test_token_id_inputs_are_bounded_too(lone_server):
    _, envoy = lone_server
    cl100k = bpe_openai.get_encoding("cl100k_base")
    text = SENTENCE * 5000  # 40,000 cl100k tokens
    ids = cl100k.encode(text)
    assert len(ids) > 30_000
    status, _, raw = http(envoy, "POST", "/v1/embeddings", {"model": FP32, "input": text})
    assert status == 200
    expected = np.array(json.loads(raw)["data"][0]["embedding"])
    for body in ({"input": ids}, {"input": [ids, ids[:100]]}):
        status, headers, raw = http(envoy, "POST", "/v1/embeddings", {"model": FP32, **body})
        assert status == 200 and headers["x-truncated-inputs"] == "1", raw[:300]
        assert np.abs(np.array(json.loads(raw)["data"][0]["embedding"]) - expected).max() < 1e-5
    status, _, raw = http(envoy, "POST", "/v1/embeddings", {"model": FP32, "input": ids, "truncate": False})
    assert status == 400 and json.loads(raw)["error"]["code"] == "context_length_exceeded"
