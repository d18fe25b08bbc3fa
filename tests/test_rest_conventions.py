"""HTTP conventions OpenAI-compatible clients rely on, through the real Envoy: Azure-style `?api-version=` accepted
and ignored (other unknown parameters still refused), gzip request bodies inflated (within the body cap), gzip
responses when the caller asks and only then."""

from __future__ import annotations

import gzip
import json

import pytest

from tests.serving import http

MODEL = "all-minilm-l6-v2"
BODY = {"model": MODEL, "input": ["conventions"] * 8}


def embeddings(response: bytes) -> list[list[float]]:
    return [item["embedding"] for item in json.loads(response)["data"]]


@pytest.mark.parametrize(
    "query", ["?api-version=2024-02-01", "?API-Version=2024-10-21", "?api-version=1&api-version=2", "?api-version"]
)
def test_api_version_is_accepted_and_ignored(gateway, query: str) -> None:
    plain = http(gateway, "POST", "/v1/embeddings", BODY)
    status, _, body = http(gateway, "POST", f"/v1/embeddings{query}", BODY)
    assert status == 200, body
    assert embeddings(body) == embeddings(plain[2])
    assert http(gateway, "GET", f"/v1/models{query}")[0] == 200


def test_other_unknown_query_parameters_are_still_refused(gateway) -> None:
    status, _, body = http(gateway, "POST", "/v1/embeddings?api-version=1&colour=blue", BODY)
    assert status == 400 and json.loads(body)["error"]["code"] == "invalid_request"
    # A declared parameter still works beside an ignored one.
    status, _, body = http(gateway, "GET", "/v1/models/all-minilm-l6-v2?api-version=1")
    assert status == 200 and json.loads(body)["id"] == MODEL


def test_a_gzip_request_body_is_inflated(gateway) -> None:
    plain = http(gateway, "POST", "/v1/embeddings", BODY)[2]
    packed = gzip.compress(json.dumps(BODY).encode())
    status, _, body = http(gateway, "POST", "/v1/embeddings", packed, {"content-encoding": "gzip"})
    assert status == 200, body
    assert embeddings(body) == embeddings(plain)


def test_a_gzip_body_inflating_past_the_cap_is_413(gateway) -> None:
    """The cap bounds the inflated size, not the compressed one: 17 MiB of JSON in about 1 MiB of gzip."""
    words = " ".join(f"word{i * 7919 % 100003}" for i in range(1_700_000)).encode()[: 17 * 1024 * 1024]
    packed = gzip.compress(b'{"model": "all-minilm-l6-v2", "input": "' + words + b'"}')
    assert len(packed) < 16 * 1024 * 1024
    status, _, body = http(gateway, "POST", "/v1/embeddings", packed, {"content-encoding": "gzip"})
    assert status == 413 and json.loads(body)["error"]["code"] == "request_too_large"


def test_a_gzip_bomb_is_refused_in_the_error_envelope(gateway) -> None:
    """Inflating more than the decompressor allows (100x) stops it: an error in OpenAI's envelope, never a 5xx."""
    packed = gzip.compress(b'{"model": "all-minilm-l6-v2", "input": "' + b"a" * (17 * 1024 * 1024) + b'"}')
    status, _, body = http(gateway, "POST", "/v1/embeddings", packed, {"content-encoding": "gzip"})
    assert status in (400, 413) and json.loads(body)["error"]["type"] == "invalid_request_error", body
    assert http(gateway, "POST", "/v1/embeddings", BODY)[0] == 200


def test_responses_are_gzip_only_when_asked(gateway) -> None:
    status, headers, body = http(gateway, "POST", "/v1/embeddings", BODY, {"accept-encoding": "gzip"})
    assert status == 200 and headers.get("content-encoding") == "gzip"
    assert len(embeddings(gzip.decompress(body))) == 8
    status, headers, body = http(gateway, "POST", "/v1/embeddings", BODY)
    assert status == 200 and "content-encoding" not in headers and len(embeddings(body)) == 8
    status, headers, body = http(gateway, "GET", "/openapi.json", headers={"accept-encoding": "gzip"})
    assert status == 200 and headers.get("content-encoding") == "gzip" and json.loads(gzip.decompress(body))["paths"]
