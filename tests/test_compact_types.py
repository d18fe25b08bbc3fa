"""Compact vector types (int8, uint8, binary, ubinary) through REST (the real Envoy) and gRPC, checked bit-exactly
against a numpy reference written from sentence-transformers' definitions, and their quality on STS-B."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
from sentence_transformers.util.quantization import quantize_embeddings

from service._gen.embeddings.v1 import embeddings_pb2 as pb
from service.engine.manifest import ModelManifest
from tests.serving import http
from tests.stsb import load_pairs, spearman_x100

FP32 = "all-minilm-l6-v2"
TINY = "tiny-bert"
TEXTS = ["The quick brown fox", "jumps over the lazy dog", "ünïcödé ✓ 日本語", "A man is playing a guitar."]
GRPC_TYPES = {
    "int8": pb.EMBEDDING_TYPE_INT8,
    "uint8": pb.EMBEDDING_TYPE_UINT8,
    "binary": pb.EMBEDDING_TYPE_BINARY,
    "ubinary": pb.EMBEDDING_TYPE_UBINARY,
}


def ranges(repo: Path, model: str, key: str) -> np.ndarray:
    """[2, dims]: the calibrated minimum and maximum, in sentence-transformers' `ranges` layout."""
    stored = ModelManifest.load(repo / model).quantization_ranges[key]
    return np.array([stored["min"], stored["max"]], dtype=np.float32)


def reference(vectors: np.ndarray, kind: str, calibrated: np.ndarray | None = None) -> np.ndarray:
    """sentence-transformers' quantize_embeddings (6.x: floor, clipped to the calibrated range)."""
    if kind == "ubinary":
        return np.packbits(vectors > 0, axis=1)
    if kind == "binary":
        return (np.packbits(vectors > 0, axis=1).astype(np.int16) - 128).astype(np.int8)
    starts, steps = calibrated[0], (calibrated[1] - calibrated[0]) / np.float32(255)  # float32, as theirs
    levels = np.clip(np.floor((vectors - starts) / steps), 0, 255)
    return levels.astype(np.uint8) if kind == "uint8" else (levels - 128).astype(np.int8)


def rest(gateway, **body) -> dict:
    status, _, raw = http(gateway, "POST", "/v1/embeddings", body)
    assert status == 200, raw
    return json.loads(raw)


def rest_floats(gateway, model: str = FP32, texts=TEXTS, **options) -> np.ndarray:
    data = rest(gateway, model=model, input=texts, encoding_format="float", **options)["data"]
    return np.array([item["embedding"] for item in data], dtype=np.float32)


@pytest.mark.parametrize("kind", ["int8", "uint8", "binary", "ubinary"])
def test_rest_compact_types_equal_the_reference_bit_for_bit(gateway, served_repo, kind):
    floats = rest_floats(gateway)
    expected = reference(floats, kind, ranges(served_repo, FP32, "384") if kind.endswith("int8") else None)
    as_ints = rest(gateway, model=FP32, input=TEXTS, encoding_format=kind)["data"]
    assert np.array_equal(np.array([d["embedding"] for d in as_ints]), expected.astype(np.int64))
    as_base64 = rest(gateway, model=FP32, input=TEXTS, encoding_format="base64", embedding_type=kind)["data"]
    decoded = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype=expected.dtype) for d in as_base64])
    assert np.array_equal(decoded, expected)
    if kind in ("binary", "ubinary"):  # 384 dimensions pack into whole bytes: sentence-transformers' own output
        assert np.array_equal(expected, quantize_embeddings(floats, precision=kind))


@pytest.mark.parametrize("kind", ["int8", "uint8"])
def test_scalar_types_equal_sentence_transformers_with_the_calibrated_ranges(gateway, served_repo, kind):
    floats = rest_floats(gateway)
    theirs = quantize_embeddings(floats, precision=kind, ranges=ranges(served_repo, FP32, "384"))
    ours = np.array([d["embedding"] for d in rest(gateway, model=FP32, input=TEXTS, encoding_format=kind)["data"]])
    assert np.array_equal(ours, theirs.astype(np.int64))


def test_grpc_carries_compact_types_as_bytes(stub, gateway, served_repo):
    floats = rest_floats(gateway)
    for kind, enum in GRPC_TYPES.items():
        response = stub.Embed(pb.EmbedRequest(model=FP32, inputs=TEXTS, embedding_type=enum), timeout=60)
        expected = reference(floats, kind, ranges(served_repo, FP32, "384") if kind.endswith("int8") else None)
        got = np.stack([np.frombuffer(e.data, dtype=expected.dtype) for e in response.embeddings])
        assert np.array_equal(got, expected), kind
        assert response.dimensions == 384 and not any(e.values for e in response.embeddings)


def test_dimensions_and_normalization_apply_before_quantizing(gateway, served_repo):
    """tiny-bert: unnormalized, shortened to 16: its own ranges, from vectors of that size and normalization."""
    floats = rest_floats(gateway, TINY, dimensions=16)
    got = rest(gateway, model=TINY, input=TEXTS, encoding_format="uint8", dimensions=16)["data"]
    expected = reference(floats, "uint8", ranges(served_repo, TINY, "16-unnormalized"))
    assert np.array_equal(np.array([d["embedding"] for d in got]), expected.astype(np.int64))
    normalized = rest_floats(gateway, TINY, dimensions=16, normalize=True)
    got = rest(gateway, model=TINY, input=TEXTS, encoding_format="int8", dimensions=16, normalize=True)["data"]
    expected = reference(normalized, "int8", ranges(served_repo, TINY, "16"))
    assert np.array_equal(np.array([d["embedding"] for d in got]), expected.astype(np.int64))
    bits = rest(gateway, model=TINY, input=TEXTS, encoding_format="ubinary", dimensions=8)["data"]
    assert [len(d["embedding"]) for d in bits] == [1] * len(TEXTS)


def test_models_list_their_types(gateway):
    status, _, raw = http(gateway, "GET", f"/v1/models/{FP32}")
    assert status == 200
    assert json.loads(raw)["embedding_types"] == ["float", "int8", "uint8", "binary", "ubinary"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"encoding_format": "int4"}, "encoding_format"),
        ({"embedding_type": "int4"}, "embedding_type"),
        ({"encoding_format": "int8", "embedding_type": "binary"}, "embedding_type"),
    ],
)
def test_unknown_or_conflicting_types_are_400(gateway, body, field):
    status, _, raw = http(gateway, "POST", "/v1/embeddings", {"model": FP32, "input": "hi", **body})
    error = json.loads(raw)["error"]
    assert status == 400 and error["type"] == "invalid_request_error" and error["param"] == field, raw


def test_stsb_quality_of_the_compact_types(gateway, served_repo, record_property):
    """Spearman x100 on the STS-B test split (unseen by the calibration): dot product of int8/uint8 values, and
    Hamming similarity of the sign bits, beside float's cosine. int8 stays within 0.3 of float."""
    pairs = load_pairs("test")
    texts = pairs.sentences
    floats = np.concatenate([rest_floats(gateway, texts=texts[i : i + 256]) for i in range(0, len(texts), 256)])
    first, second = floats[: len(pairs.first)], floats[len(pairs.first) :]
    scores = {"float": spearman_x100(pairs, first, second)}
    calibrated = ranges(served_repo, FP32, "384")
    for kind in ("int8", "uint8"):
        a, b = (reference(v, kind, calibrated).astype(np.float64) for v in (first, second))
        scores[kind] = _rank_score(pairs, (a * b).sum(1))
    bits_a, bits_b = (np.unpackbits(reference(v, "ubinary"), axis=1) for v in (first, second))
    scores["binary"] = _rank_score(pairs, -(bits_a != bits_b).sum(1))
    for kind, score in scores.items():
        record_property(f"stsb_{kind}", round(score, 2))
    print("STS-B Spearman x100:", {kind: round(score, 2) for kind, score in scores.items()})
    assert abs(scores["int8"] - scores["float"]) <= 0.3
    assert scores["binary"] > 70  # reported as it is; a floor that catches a broken bit order


def _rank_score(pairs, similarity: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(similarity, pairs.scores).statistic * 100)
