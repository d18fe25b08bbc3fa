"""What a tenant may store is bounded: job metadata (OpenAI's limits: 16 pairs, keys up to 64 characters, values up
to 512), webhook URLs (2048) and descriptions (512), and webhook endpoints per tenant (max_webhooks_per_tenant).
Each excess is a 400 in OpenAI's envelope (REST) or INVALID_ARGUMENT with its reason (gRPC), before any work."""

from __future__ import annotations

import grpc
import pytest

from service._gen.embeddings.v1 import jobs_pb2 as pb
from service._gen.embeddings.v1 import rest_pb2
from tests.adversarial.conftest import MAX_WEBHOOKS
from tests.adversarial.probes import MODEL, Stack, assert_openai_error, assert_still_serving, refused

METADATA = [
    ({f"k{i}": "v" for i in range(17)}, "object_above_max_properties"),
    ({"k" * 65: "v"}, "string_above_max_length"),
    ({"k": "v" * 513}, "string_above_max_length"),
    ({f"k{i}": "v" * 600 for i in range(10_000)}, "object_above_max_properties"),
]


@pytest.mark.parametrize(("metadata", "reason"), METADATA, ids=["17 pairs", "long key", "long value", "huge"])
def test_job_metadata_over_openais_limits_is_refused(stack: Stack, metadata: dict, reason: str):
    body = {"model": MODEL, "input": ["x"], "metadata": metadata}
    status, _, answer = stack.rest("POST", "/v1/async/embeddings", stack.keys["globex"], body)
    assert_openai_error(status, answer, 400, reason, "invalid_request_error")
    assert answer["error"]["param"] == "metadata" and len(answer["error"]["message"]) < 300
    request = rest_pb2.CreateEmbeddingRequest(model=MODEL, metadata=metadata).SerializeToString()
    error = refused(stack.channel, "/embeddings.v1.JobService/AsyncEmbed", request, key=stack.keys["globex"])
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, reason)


def test_metadata_at_the_limits_is_accepted(stack: Stack):
    metadata = {f"{i:02d}" + "k" * 62: "v" * 512 for i in range(16)}
    body = {"model": MODEL, "input": ["x"], "metadata": metadata}
    status, _, job = stack.rest("POST", "/v1/async/embeddings", stack.keys["globex"], body)
    assert status == 200 and job["metadata"] == metadata


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"url": "https://example.com/" + "a" * 2100}, "url"),
        ({"url": "https://example.com/hook", "description": "d" * 513}, "description"),
        ({"url": "https://example.com/hook", "description": "d" * 5_000_000}, "description"),
    ],
    ids=["long url", "long description", "huge description"],
)
def test_webhook_fields_are_bounded(stack: Stack, body: dict, param: str):
    status, _, answer = stack.rest("POST", "/v1/webhooks", stack.keys["globex"], body)
    assert_openai_error(status, answer, 400, "string_above_max_length", "invalid_request_error")
    assert answer["error"]["param"] == param and len(answer["error"]["message"]) < 300


def test_webhook_endpoints_per_tenant_are_capped(stack: Stack):
    key = stack.keys["capped"]
    hooks = []
    for i in range(MAX_WEBHOOKS):
        status, _, hook = stack.rest("POST", "/v1/webhooks", key, {"url": f"https://example.com/{i}"})
        assert status == 200, hook
        hooks.append(hook["id"])
    status, _, answer = stack.rest("POST", "/v1/webhooks", key, {"url": "https://example.com/one-more"})
    assert_openai_error(status, answer, 400, "webhook_limit_reached", "invalid_request_error")
    request = pb.CreateWebhookRequest(url="https://example.com/grpc").SerializeToString()
    error = refused(stack.channel, "/embeddings.v1.JobService/CreateWebhook", request, key=key)
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "webhook_limit_reached")
    assert stack.rest("DELETE", f"/v1/webhooks/{hooks[0]}", key)[0] == 200
    assert stack.rest("POST", "/v1/webhooks", key, {"url": "https://example.com/again"})[0] == 200
    assert len(stack.rest("GET", "/v1/webhooks", key)[2]["data"]) == MAX_WEBHOOKS
    assert_still_serving(stack)
