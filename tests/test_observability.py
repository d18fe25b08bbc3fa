"""Metrics and timing headers on the session's real server and Envoy: counters, histograms and token counters move
as calls are served; `/metrics` is scraped through the gateway; every embedding answer carries timing headers."""

from __future__ import annotations

import json
import time

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.envoy import TRACE_CLUSTER, GatewayPorts, render, validate, write_rendered
from service._gen.embeddings.v1 import embeddings_pb2 as pb
from tests.serving import http

FP32 = "all-minilm-l6-v2"
TIMING_HEADERS = ("x-total-time", "x-tokenization-time", "x-queue-time", "x-inference-time")


def parse_metrics(body: bytes) -> dict[tuple[str, frozenset], float]:
    """Every sample of a Prometheus text exposition, keyed by (name, labels)."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def scrape(gateway, headers: dict | None = None) -> dict[tuple[str, frozenset], float]:
    """GET /metrics through Envoy."""
    status, response_headers, body = http(gateway, "GET", "/metrics", headers=headers)
    assert status == 200, body
    assert response_headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse_metrics(body)


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_metrics_move_as_calls_are_served(gateway, stub):
    before = scrape(gateway)
    texts = ["metrics should count this call", "and its two inputs"]
    response = stub.Embed(pb.EmbedRequest(model=FP32, inputs=texts), timeout=60)
    status, _, body = http(gateway, "POST", "/v1/embeddings", {"model": FP32, "input": "one more over REST"})
    assert status == 200
    rest_tokens = json.loads(body)["usage"]["total_tokens"]
    status, _, _ = http(gateway, "POST", "/v1/embeddings", {"model": "no-such-model", "input": "x"})
    assert status == 404
    after = scrape(gateway)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("embeddings_requests_total", rpc="EmbeddingService/Embed", model=FP32, code="OK") == 1
    assert delta("embeddings_requests_total", rpc="RestService/CreateEmbedding", model=FP32, code="OK") == 1
    assert delta("embeddings_requests_total", rpc="RestService/CreateEmbedding", model="", code="NOT_FOUND") == 1
    assert delta("embeddings_tokens_total", model=FP32, tenant="default") == response.usage.total_tokens + rest_tokens
    assert delta("embeddings_tokenize_duration_seconds_count", model=FP32) == 2
    assert delta("embeddings_tokenize_duration_seconds_sum", model=FP32) > 0
    assert delta("embeddings_queue_wait_seconds_count", model=FP32) == 2
    assert delta("embeddings_request_duration_seconds_count", rpc="EmbeddingService/Embed") == 1
    # Batches: at least one per call, every input in one, padded tokens at least the real ones.
    assert delta("embeddings_inference_duration_seconds_count", model=FP32) >= 2
    assert delta("embeddings_batch_size_sum", model=FP32) >= 3
    assert delta("embeddings_batch_tokens_sum", model=FP32) >= response.usage.total_tokens + rest_tokens
    assert ("embeddings_queue_depth", frozenset({("model", FP32)})) in after


def test_rest_embeddings_carry_timing_headers(gateway):
    status, headers, body = http(gateway, "POST", "/v1/embeddings", {"model": FP32, "input": ["a", "bb ccc"]})
    assert status == 200
    timings = {name: float(headers[name]) for name in TIMING_HEADERS}
    assert all(v >= 0 for v in timings.values())
    # The engine's parts fit in the total (each rounded to 0.01 ms).
    parts = timings["x-tokenization-time"] + timings["x-queue-time"] + timings["x-inference-time"]
    assert parts <= timings["x-total-time"] + 0.03
    assert int(headers["x-compute-tokens"]) == json.loads(body)["usage"]["total_tokens"]
    assert "openai-processing-ms" in headers and "x-request-id" in headers
    # The ScaiGrid route shares them.
    status, headers, _ = http(gateway, "POST", "/v1/inference/embed", {"model": FP32, "input": "x"})
    assert status == 200 and all(name in headers for name in (*TIMING_HEADERS, "x-compute-tokens"))


def test_grpc_embed_sends_timing_metadata(stub):
    response, call = stub.Embed.with_call(pb.EmbedRequest(model=FP32, inputs=["timed over gRPC"]), timeout=60)
    metadata = dict(call.trailing_metadata())
    assert int(metadata["x-compute-tokens"]) == response.usage.total_tokens
    assert all(float(metadata[name]) >= 0 for name in TIMING_HEADERS)


def test_errors_carry_no_timing_headers_but_are_counted_by_code(gateway, stub):
    labels = {"rpc": "EmbeddingService/Embed", "model": FP32, "code": "INVALID_ARGUMENT"}
    before = value(scrape(gateway), "embeddings_requests_total", **labels)
    with pytest.raises(grpc.RpcError) as failed:
        stub.Embed(pb.EmbedRequest(model=FP32, inputs=[""]), timeout=60)
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "x-queue-time" not in dict(failed.value.trailing_metadata())
    assert value(scrape(gateway), "embeddings_requests_total", **labels) - before == 1


def test_async_job_metrics(gateway):
    before = scrape(gateway)
    status, _, body = http(gateway, "POST", "/v1/async/embeddings", {"model": FP32, "input": ["job one", "job two"]})
    assert status == 200, body
    job_id = json.loads(body)["id"]
    end = time.monotonic() + 60
    while json.loads(http(gateway, "GET", f"/v1/async/jobs/{job_id}")[2])["status"] != "completed":
        assert time.monotonic() < end, "job did not complete"
        time.sleep(0.1)
    after = scrape(gateway)

    def delta(name: str) -> float:
        return value(after, name, model=FP32) - value(before, name, model=FP32)

    assert delta("embeddings_job_chunks_total") >= 1
    assert delta("embeddings_job_inputs_total") >= 2
    assert value(after, "embeddings_jobs", status="completed") >= 1
    for status in ("queued", "in_progress", "failed", "cancelled"):
        assert ("embeddings_jobs", frozenset({("status", status)})) in after


def test_gateway_renders_a_valid_tracing_configuration(tmp_path):
    """What `make run ARGS="--otlp-endpoint ..."` gives Envoy: its OpenTelemetry tracer and a collector cluster."""
    config = render(GatewayPorts(), otlp_endpoint="http://collector.internal:4317")
    manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    assert manager["tracing"]["provider"]["name"] == "envoy.tracers.opentelemetry"
    [cluster] = [c for c in config["static_resources"]["clusters"] if c["name"] == TRACE_CLUSTER]
    endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    assert endpoint == {"address": "collector.internal", "port_value": 4317}
    untraced = render(GatewayPorts())["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    assert "tracing" not in untraced["typed_config"]
    checked = validate(write_rendered(GatewayPorts(), tmp_path / "envoy.yaml", "http://collector.internal:4317"))
    assert checked.returncode == 0, checked.stdout + checked.stderr
