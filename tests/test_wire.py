"""Embed's responses are written in protobuf's wire format by hand (service/api/wire.py): they must parse to exactly
the message the protobuf runtime builds, for every encoding, vector type and field at or off its default."""

from __future__ import annotations

import numpy as np
import pytest

from service._gen.embeddings.v1 import embeddings_pb2 as pb
from service.api.embeddings import embed_response, embed_response_wire
from service.api.wire import passthrough, varint
from service.engine.model import EmbedResult


def result(rows: int, dims: int, dtype=np.float32, model: str = "all-minilm-l6-v2", seed: int = 0) -> EmbedResult:
    rng = np.random.default_rng(seed)
    if dtype == np.float32:
        vectors = rng.normal(size=(rows, dims)).astype(np.float32)
        vectors[0, 0] = -0.0  # signed zero and extremes survive as bytes
        vectors[-1, -1] = np.finfo(np.float32).max
    else:
        info = np.iinfo(dtype)
        vectors = rng.integers(info.min, info.max, size=(rows, dims), endpoint=True).astype(dtype)
    tokens = [int(n) for n in rng.integers(0, 300, size=rows)]
    tokens[0] = 0  # a field at its default is left out
    cut = [bool(c) for c in rng.integers(0, 2, size=rows)]
    return EmbedResult(model, vectors, tokens, cut, dimensions=dims)


@pytest.mark.parametrize(
    "encoding", [pb.ENCODING_FORMAT_FLOAT, pb.ENCODING_FORMAT_BYTES, pb.ENCODING_FORMAT_UNSPECIFIED]
)
@pytest.mark.parametrize(("rows", "dims"), [(1, 384), (3, 8), (200, 768), (1, 1)])
def test_wire_bytes_parse_to_the_runtime_message(encoding, rows, dims):
    r = result(rows, dims)
    expected = embed_response(r, encoding)
    got = embed_response_wire(r, encoding)
    assert pb.EmbedResponse.FromString(got) == expected
    assert got == expected.SerializeToString(deterministic=True)  # the same bytes, field for field


@pytest.mark.parametrize("dtype", [np.int8, np.uint8])
def test_compact_vectors_go_as_bytes_whatever_the_encoding(dtype):
    r = result(5, 48, dtype)
    for encoding in (pb.ENCODING_FORMAT_FLOAT, pb.ENCODING_FORMAT_BYTES):
        got = pb.EmbedResponse.FromString(embed_response_wire(r, encoding))
        assert got == embed_response(r, encoding)
        assert got.embeddings[1].data == r.vectors[1].tobytes() and not got.embeddings[1].values


def test_packed_bits_keep_the_vectors_dimensions():
    bits = np.packbits(np.random.default_rng(1).integers(0, 2, size=(2, 64)).astype(bool), axis=1)
    r = EmbedResult("m", bits.astype(np.uint8), [7, 9], [False, True], dimensions=64)
    got = pb.EmbedResponse.FromString(embed_response_wire(r, pb.ENCODING_FORMAT_FLOAT))
    assert got == embed_response(r, pb.ENCODING_FORMAT_FLOAT) and got.dimensions == 64


def test_a_model_name_beyond_ascii_and_no_tokens():
    r = EmbedResult("modèle-テスト", np.ones((2, 4), np.float32), [0, 0], [False, False], dimensions=4)
    assert pb.EmbedResponse.FromString(embed_response_wire(r, pb.ENCODING_FORMAT_FLOAT)) == embed_response(
        r, pb.ENCODING_FORMAT_FLOAT
    )


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 16383, 16384, 2**32 - 1])
def test_varint_matches_protobuf(value):
    assert pb.Usage(prompt_tokens=value).SerializeToString()[1:] == (varint(value) if value else b"")


def test_passthrough_sends_bytes_as_they_are_and_messages_serialized():
    serialize = passthrough(pb.Usage.SerializeToString)
    assert serialize(b"\x08\x05") == b"\x08\x05"
    assert serialize(pb.Usage(prompt_tokens=5)) == b"\x08\x05"
    assert passthrough(None) is None
