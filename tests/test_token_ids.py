"""Token-id inputs are read in bulk from their protobuf wire form (service/api/rest.py `split_input`), with the same
answers a per-Value reading gives: the ids, the bound on how many are read, and the refusals."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from google.protobuf import struct_pb2

from service import errors
from service.api.rest import split_input
from service.engine.errors import InvalidInput
from service.engine.tokenize import TokenIdDecoder

MAX_IDS = 100


def value_of(data) -> struct_pb2.Value:
    """`data` as the Value the gateway's transcoder (or a client) sends: serialized, then parsed by the server."""
    value = struct_pb2.Value()
    if isinstance(data, list):
        value.list_value.extend(data)
    else:
        value.string_value = data
    return struct_pb2.Value.FromString(value.SerializeToString())


def ids_of(data) -> list[list[int]]:
    texts, sequences = split_input(value_of(data), MAX_IDS, 2048)
    assert texts == []
    assert all(isinstance(s, np.ndarray) and s.dtype == np.int64 for s in sequences)
    return [s.tolist() for s in sequences]


def refusal(data) -> errors.ApiError:
    with pytest.raises(errors.ApiError) as refused:
        split_input(value_of(data), MAX_IDS, 2048)
    return refused.value


def test_ids_are_read_as_sent_up_to_the_bound():
    rng = np.random.default_rng(5)
    flat = rng.integers(0, 100_256, 57).tolist()
    assert ids_of(flat) == [flat]
    nested = [rng.integers(0, 100_256, n).tolist() for n in (1, 2, 99, 100, 101, 5000)]
    assert ids_of(nested) == [s[:MAX_IDS] for s in nested]
    assert ids_of([0, -0.0, 2.0**53]) == [[0, 0, 2**53]]  # integers a double holds exactly; the decoder checks range


def test_a_number_value_with_unknown_fields_is_still_a_token_id():
    crafted = struct_pb2.Value(number_value=7)
    wire = crafted.SerializeToString() + b"\x78\x01"  # field 15 (unknown to Value), varint 1
    outer = struct_pb2.ListValue()
    outer.values.add().MergeFromString(wire)
    outer.values.add(number_value=8)
    value = struct_pb2.Value(list_value=outer)
    assert [s.tolist() for s in split_input(value, MAX_IDS, 2048)[1]] == [[7, 8]]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([1.5, 2], "Input 0 must be an array of integer token ids."),
        ([1, "a"], "Input 0 must be an array of integer token ids."),
        ([1, None], "Input 0 must be an array of integer token ids."),
        ([1, [2]], "Input 0 must be an array of integer token ids."),
        ([1, 2.0**53 + 2], "Input 0 must be an array of integer token ids."),
        ([1, float("inf")], "Input 0 must be an array of integer token ids."),
        ([[1], [2, True]], "Input 1 must be an array of integer token ids."),
        ([[1], []], "Input 1 is an empty array of token ids."),
        (
            [[1], "a"],
            "'input' must be a string, an array of strings, an array of token ids, or an array of arrays "
            "of token ids; arrays may not mix these.",
        ),
    ],
)
def test_what_is_not_token_ids_is_refused_as_before(data, message: str):
    refused = refusal(data)
    assert (refused.message, refused.field, refused.reason) == (message, "input", "invalid_input")


def test_what_lies_past_the_bound_is_never_read():
    assert ids_of([1] * MAX_IDS + ["not an id"]) == [[1] * MAX_IDS]


def test_the_decoder_checks_arrays_in_bulk_and_decodes_off_the_loop():
    async def scenario() -> tuple[list[str], str]:
        decoder = TokenIdDecoder(ThreadPoolExecutor(1))
        texts = await decoder.decode([np.array([15339, 1917]), [15339]])  # "hello world", "hello"
        with pytest.raises(InvalidInput) as refused:
            await decoder.decode([np.array([1]), np.array([1, 100_300, -1])])
        return texts, str(refused.value)

    texts, refusal_message = asyncio.run(scenario())
    assert texts == ["hello world", "hello"]
    assert refusal_message.startswith("Input 1 holds token id 100300, outside the cl100k_base vocabulary")
