"""The native gRPC API on the real server with real models: parity, scores, order, options and every error."""

from __future__ import annotations

import asyncio
import base64

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2
from grpc_status import rpc_status

from service._gen.embeddings.v1 import embeddings_pb2 as pb
from service._gen.embeddings.v1 import embeddings_pb2_grpc as pb_grpc
from tests.serving import ServerProcess
from tests.stsb import load_pairs, spearman_x100

FP32 = "all-minilm-l6-v2"
INT8 = "all-minilm-l6-v2-int8"
TINY = "tiny-bert"  # from conftest: shortened_dimensions 8,16; query/document prefixes; no default normalize


def embed(stub, inputs, model=FP32, **options) -> pb.EmbedResponse:
    return stub.Embed(pb.EmbedRequest(model=model, inputs=inputs, **options), timeout=120)


def vectors(response: pb.EmbedResponse) -> np.ndarray:
    return np.array([list(e.values) for e in response.embeddings], dtype=np.float32)


def embed_all(stub, texts, model=FP32, chunk=256) -> np.ndarray:
    parts = [vectors(embed(stub, texts[i : i + chunk], model=model)) for i in range(0, len(texts), chunk)]
    return np.concatenate(parts)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return (a * b).sum(axis=-1)


def error_of(call) -> tuple[grpc.StatusCode, str, error_details_pb2.ErrorInfo, list[str]]:
    """Run `call`, expect an RpcError, and decode it."""
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return decode_error(caught.value)


def decode_error(err: grpc.RpcError) -> tuple[grpc.StatusCode, str, error_details_pb2.ErrorInfo, list[str]]:
    """The code, message, ErrorInfo and BadRequest fields of a rich gRPC error."""
    status = rpc_status.from_call(err)
    assert status is not None, "error carries no google.rpc.Status details"
    info = error_details_pb2.ErrorInfo()
    fields: list[str] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            detail.Unpack(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields += [v.field for v in bad.field_violations]
    return err.code(), err.details(), info, fields


# --- fidelity -------------------------------------------------------------------------------------------


def test_golden_parity_with_sentence_transformers(stub, golden):
    response = embed(stub, golden["texts"], truncate=True)
    got = vectors(response)
    expected = np.stack([np.frombuffer(base64.b64decode(s), dtype="<f4") for s in golden["embeddings_f32_base64"]])
    sims = cosine(got, expected)
    assert sims.min() >= 0.9999, f"worst cosine {sims.min():.6f} at text {int(sims.argmin())}"
    limit = 256
    expected_tokens = [min(n, limit) for n in golden["token_counts"]]
    assert [e.tokens for e in response.embeddings] == expected_tokens
    assert [e.truncated for e in response.embeddings] == golden["truncated"]
    assert response.usage.prompt_tokens == sum(expected_tokens) == response.usage.total_tokens
    assert [e.index for e in response.embeddings] == list(range(len(golden["texts"])))


def test_stsb_score_matches_published(stub):
    pairs = load_pairs("test")
    score = spearman_x100(pairs, embed_all(stub, pairs.first), embed_all(stub, pairs.second))
    assert abs(score - 82.03) <= 0.05, score


def test_stsb_score_int8(stub, record_property):
    pairs = load_pairs("test")
    score = spearman_x100(pairs, embed_all(stub, pairs.first, INT8), embed_all(stub, pairs.second, INT8))
    record_property("int8_stsb", score)
    print(f"int8 STS-B Spearman x100: {score:.2f}")
    assert score >= 81.0, score


def test_vectors_unit_norm_and_bytes_equal_floats(stub):
    texts = ["The quick brown fox", "jumps over the lazy dog", "ünïcödé ✓ 日本語"]
    floats = embed(stub, texts)
    raw = embed(stub, texts, encoding_format=pb.ENCODING_FORMAT_BYTES)
    as_floats = vectors(floats)
    from_bytes = np.stack([np.frombuffer(e.data, dtype="<f4") for e in raw.embeddings])
    assert all(len(e.values) == 0 for e in raw.embeddings)
    assert np.array_equal(as_floats, from_bytes)
    assert np.allclose(np.linalg.norm(as_floats, axis=1), 1.0, atol=1e-5)
    assert floats.dimensions == 384 and floats.model == FP32


# --- order and batching ---------------------------------------------------------------------------------


def test_order_preserved_under_64_concurrent_calls(server):
    pairs = load_pairs("test")
    pool = pairs.sentences[:400]
    rng = np.random.default_rng(7)
    sizes = [int(s) for s in rng.choice([1, 2, 5, 17, 33, 64, 100], size=64)]
    requests = [[pool[int(j)] for j in rng.choice(len(pool), size=n)] for n in sizes]

    async def run() -> list[pb.EmbedResponse]:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.EmbeddingServiceStub(channel)
            calls = [stub.Embed(pb.EmbedRequest(model=FP32, inputs=r), timeout=120) for r in requests]
            return await asyncio.gather(*calls)

    responses = asyncio.run(run())
    with grpc.insecure_channel(server.address) as channel:
        reference = vectors(embed(pb_grpc.EmbeddingServiceStub(channel), pool))
    for texts, response in zip(requests, responses, strict=True):
        assert [e.index for e in response.embeddings] == list(range(len(texts)))
        expected = np.stack([reference[pool.index(t)] for t in texts])
        assert cosine(vectors(response), expected).min() >= 0.99999


# --- options ----------------------------------------------------------------------------------------------


def test_alias_and_case_insensitive_names_resolve(stub):
    for name in ("sentence-transformers/all-MiniLM-L6-v2", "ALL-MINILM-L6-V2", "text-embedding-3-small"):
        assert embed(stub, ["hi"], model=name).model == FP32


def test_dimensions_shorten_then_renormalize(stub):
    text = ["a short sentence about shortening"]
    full = vectors(embed(stub, text, model=TINY, normalize=True))[0]
    short = embed(stub, text, model=TINY, dimensions=8, normalize=True)
    assert short.dimensions == 8
    got = vectors(short)[0]
    expected = full[:8] / np.linalg.norm(full[:8])
    assert np.allclose(got, expected, atol=1e-6)
    assert abs(np.linalg.norm(got) - 1) < 1e-5


def test_normalize_option_overrides_model_default(stub):
    text = ["normalization is a per-call choice"]
    raw = vectors(embed(stub, text, model=TINY))[0]  # tiny-bert's manifest: normalize false
    unit = vectors(embed(stub, text, model=TINY, normalize=True))[0]
    assert abs(np.linalg.norm(raw) - 1) > 1e-3
    assert np.allclose(unit, raw / np.linalg.norm(raw), atol=1e-6)
    plain = vectors(embed(stub, text, normalize=False))[0]
    assert np.allclose(vectors(embed(stub, text))[0], plain / np.linalg.norm(plain), atol=1e-6)


def test_input_type_adds_manifest_prefix(stub):
    with_type = embed(stub, ["what is pooling"], model=TINY, input_type=pb.INPUT_TYPE_QUERY)
    spelled = embed(stub, ["query: what is pooling"], model=TINY)
    assert np.allclose(vectors(with_type), vectors(spelled), atol=1e-6)
    assert with_type.usage.prompt_tokens == spelled.usage.prompt_tokens
    document = embed(stub, ["what is pooling"], model=TINY, input_type=pb.INPUT_TYPE_DOCUMENT)
    assert np.allclose(vectors(document), vectors(embed(stub, ["passage: what is pooling"], model=TINY)), atol=1e-6)
    assert not np.array_equal(vectors(document), vectors(with_type))


def test_truncate_cuts_to_limit_like_reference(stub, golden):
    long_text = " ".join(["word"] * 600)
    response = embed(stub, [long_text, "short"], truncate=True)
    first = response.embeddings[0]
    assert first.tokens == 256 and first.truncated
    assert not response.embeddings[1].truncated
    assert response.usage.prompt_tokens == 256 + response.embeddings[1].tokens


def test_list_and_get_models(stub):
    listing = stub.ListModels(pb.ListModelsRequest(), timeout=10)
    assert listing.object == "list"
    by_id = {m.id: m for m in listing.data}
    assert {FP32, INT8, TINY} <= set(by_id)
    fp32 = by_id[FP32]
    assert fp32.object == "model" and fp32.created > 0 and fp32.owned_by == "sentence-transformers"
    assert fp32.dimensions == 384 and fp32.max_input_tokens == 256 and fp32.pooling == "mean"
    assert "sentence-transformers/all-MiniLM-L6-v2" in fp32.aliases
    assert "text-embedding-3-small" in fp32.aliases  # configured alias
    assert list(by_id[TINY].shortened_dimensions) == [8, 16]
    assert stub.ListModels(pb.ListModelsRequest(modality="embedding"), timeout=10).data
    assert not stub.ListModels(pb.ListModelsRequest(modality="image"), timeout=10).data
    got = stub.GetModel(pb.GetModelRequest(model="sentence-transformers/all-MiniLM-L6-v2"), timeout=10)
    assert got.model.id == FP32


def test_health_serving(server):
    assert server.health() == health_pb2.HealthCheckResponse.SERVING
    assert server.health("embeddings.v1.EmbeddingService") == health_pb2.HealthCheckResponse.SERVING


# --- errors -----------------------------------------------------------------------------------------------

ERROR_CASES = {
    "unknown model": (
        dict(model="no-such-model", inputs=["x"]),
        grpc.StatusCode.NOT_FOUND,
        "model_not_found",
        "model",
        "no-such-model",
    ),
    "empty input list": (dict(model=FP32, inputs=[]), grpc.StatusCode.INVALID_ARGUMENT, "invalid_input", "inputs", ""),
    "empty string": (
        dict(model=FP32, inputs=["ok", ""]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "invalid_input",
        "inputs[1]",
        "Input 1",
    ),
    "too many inputs": (
        dict(model=FP32, inputs=["x"] * 2049),
        grpc.StatusCode.INVALID_ARGUMENT,
        "too_many_inputs",
        "inputs",
        "2048",
    ),
    "dimensions on a model without shortening": (
        dict(model=FP32, inputs=["x"], dimensions=128),
        grpc.StatusCode.INVALID_ARGUMENT,
        "dimensions_not_supported",
        "dimensions",
        "all-minilm-l6-v2",
    ),
    "dimensions not offered": (
        dict(model=TINY, inputs=["x"], dimensions=12),
        grpc.StatusCode.INVALID_ARGUMENT,
        "dimensions_not_supported",
        "dimensions",
        "tiny-bert",
    ),
    "input over the context length (truncate: false)": (
        dict(model=FP32, inputs=["fine", "word " * 300], truncate=False),
        grpc.StatusCode.INVALID_ARGUMENT,
        "context_length_exceeded",
        "inputs[1]",
        "302 tokens",
    ),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_error_cases(stub, case):
    fields, code, reason, field, fragment = ERROR_CASES[case]
    got_code, message, info, violations = error_of(lambda: stub.Embed(pb.EmbedRequest(**fields), timeout=30))
    assert got_code == code
    assert info.reason == reason and info.domain == "embeddings.v1"
    assert field in violations
    assert fragment in message


def test_context_length_error_names_index_tokens_and_limit(stub):
    _, message, info, _ = error_of(lambda: embed(stub, ["fine", "word " * 300], truncate=False))
    assert "Input 1" in message and "302 tokens" in message and "256" in message
    assert dict(info.metadata) == {"index": "1", "tokens": "302", "limit": "256", "model": FP32}


def test_get_unknown_model_not_found(stub):
    code, _, info, _ = error_of(lambda: stub.GetModel(pb.GetModelRequest(model="gpt-9"), timeout=10))
    assert code == grpc.StatusCode.NOT_FOUND and info.reason == "model_not_found"


def test_deadline_exceeded(server):
    texts = [f"sentence number {i} " * 20 for i in range(2048)]
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.EmbeddingServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.Embed(pb.EmbedRequest(model=FP32, inputs=texts), timeout=0.05)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # The server dropped the abandoned work and still answers promptly.
        assert embed(stub, ["still alive"]).embeddings[0].tokens > 0


def distinct_texts(call: int, count: int) -> list[str]:
    return [f"{call}.{i} a fairly long sentence to keep the model busy for a while " * 4 for i in range(count)]


def test_queue_full_fails_fast(served_repo):
    with ServerProcess(served_repo, "--max-queued-inputs", "64", "--max-batch-size", "8") as small:

        async def flood() -> list[object]:
            async with grpc.aio.insecure_channel(small.address) as channel:
                stub = pb_grpc.EmbeddingServiceStub(channel)
                calls = [  # all inputs distinct: none served from the embedding cache
                    stub.Embed(pb.EmbedRequest(model=FP32, inputs=distinct_texts(call, 32)), timeout=120)
                    for call in range(12)
                ]
                return await asyncio.gather(*calls, return_exceptions=True)

        results = asyncio.run(flood())
    refused = [r for r in results if isinstance(r, grpc.RpcError)]
    assert any(isinstance(r, pb.EmbedResponse) for r in results)
    assert refused and all(r.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for r in refused)
    _, message, info, _ = decode_error(refused[0])
    assert info.reason == "queue_full" and "overloaded" in message
