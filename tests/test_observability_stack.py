"""Tracing, JSON logs and access control together, on a server and Envoy of their own: API keys in force, JSON logs
at DEBUG, OpenTelemetry tracing to an in-test OTLP collector (a real gRPC server decoding ExportTraceServiceRequest).

- one trace from Envoy's HTTP request through the servicer to tokenize, queue and inference, under the caller's
  W3C traceparent;
- every log line of a call is JSON carrying its request id; no key, webhook secret or input text is ever logged;
- /metrics needs an admin key, counts tokens per authenticated tenant and counts rate-limit refusals.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent import futures

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from service._gen.embeddings.v1 import embeddings_pb2 as pb
from service._gen.embeddings.v1 import embeddings_pb2_grpc as pb_grpc
from tests.serving import ROOT, EnvoyProcess, ServerProcess, free_port, http
from tests.test_access import create_key
from tests.test_observability import parse_metrics, scrape, value

FP32 = "all-minilm-l6-v2"
SECRET_TEXT = "the quick zebra-7 crosses the confidential bridge"


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace collector that keeps every span with its service name."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, object]] = []
        self._lock = threading.Lock()

    def Export(self, request, context):
        with self._lock:
            for resource_spans in request.resource_spans:
                attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    self.spans.extend((attributes.get("service.name", ""), s) for s in scope_spans.spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    def trace(self, trace_id: bytes) -> list[tuple[str, object]]:
        with self._lock:
            return [(service, span) for service, span in self.spans if span.trace_id == trace_id]


@pytest.fixture(scope="module")
def collector():
    servicer = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"http://127.0.0.1:{port}"
    server.stop(0)


@pytest.fixture(scope="module")
def stack(served_repo, tmp_path_factory, collector):
    _, endpoint = collector
    data_dir = tmp_path_factory.mktemp("observed-data")
    keys = {
        "admin": create_key(data_dir, "admin", "--tenant", "ops", "--admin"),
        "acme": create_key(data_dir, "acme", "--tenant", "acme"),
        "limited": create_key(data_dir, "limited", "--tenant", "limited", "--rpm", "2"),
    }
    args = ("--data-dir", str(data_dir), "--log-format", "json", "--log-level", "DEBUG", "--otlp-endpoint", endpoint)
    with (
        ServerProcess(served_repo, *args, "--webhook-allow-private", "true") as server,
        EnvoyProcess(
            server.port, tmp_path_factory.mktemp("observed-envoy"), otlp_endpoint=endpoint, admin_port=free_port()
        ) as envoy,
    ):
        yield server, envoy, keys


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def wait_for(predicate, timeout: float = 30.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if result := predicate():
            return result
        time.sleep(0.2)
    raise AssertionError("condition not met in time")


def test_one_trace_from_envoy_through_the_servicer_to_inference(stack, collector):
    _, envoy, keys = stack
    spans_of, _ = collector
    trace_id, caller_span = secrets.token_hex(16), secrets.token_hex(8)
    headers = {**bearer(keys["acme"]), "traceparent": f"00-{trace_id}-{caller_span}-01"}
    status, _, _ = http(envoy, "POST", "/v1/embeddings", {"model": FP32, "input": ["traced", "twice"]}, headers)
    assert status == 200

    def complete():
        spans = spans_of.trace(bytes.fromhex(trace_id))
        names = {span.name for _, span in spans}
        return (
            spans
            if {"RestService/CreateEmbedding", "tokenize", "queue", "inference"} <= names
            and any(service == "embeddings-gateway" for service, _ in spans)
            else None
        )

    spans = wait_for(complete)
    by_id = {span.span_id: (service, span) for service, span in spans}
    [rpc] = [span for _, span in spans if span.name == "RestService/CreateEmbedding"]
    # The servicer's span is the child of Envoy's, which continues the caller's trace.
    envoy_service, envoy_span = by_id[rpc.parent_span_id]
    assert envoy_service == "embeddings-gateway"
    assert envoy_span.parent_span_id == bytes.fromhex(caller_span)
    for name in ("tokenize", "queue", "inference"):
        [child] = [span for _, span in spans if span.name == name]
        assert child.parent_span_id == rpc.span_id
        assert rpc.start_time_unix_nano <= child.start_time_unix_nano <= child.end_time_unix_nano
        assert child.end_time_unix_nano <= rpc.end_time_unix_nano
    attributes = {a.key: a.value for a in rpc.attributes}
    assert attributes["embeddings.model"].string_value == FP32
    assert attributes["embeddings.tenant"].string_value == "acme"


def test_grpc_calls_continue_the_callers_traceparent(stack, collector):
    server, _, keys = stack
    spans_of, _ = collector
    trace_id, caller_span = secrets.token_hex(16), secrets.token_hex(8)
    metadata = (("authorization", f"Bearer {keys['acme']}"), ("traceparent", f"00-{trace_id}-{caller_span}-01"))
    with grpc.insecure_channel(server.address) as channel:
        pb_grpc.EmbeddingServiceStub(channel).Embed(
            pb.EmbedRequest(model=FP32, inputs=["native"]), metadata=metadata, timeout=60
        )
    spans = wait_for(lambda: len(s := spans_of.trace(bytes.fromhex(trace_id))) >= 4 and s)
    [rpc] = [span for _, span in spans if span.name == "EmbeddingService/Embed"]
    assert rpc.parent_span_id == bytes.fromhex(caller_span)


def test_json_logs_carry_the_request_id_and_no_secret(stack):
    server, envoy, keys = stack
    request_id = f"req-{secrets.token_hex(6)}"
    headers = {**bearer(keys["acme"]), "x-request-id": request_id}
    status, _, _ = http(envoy, "POST", "/v1/embeddings", {"model": FP32, "input": SECRET_TEXT}, headers)
    assert status == 200
    # Auth traffic: a wrong key, a missing key, a webhook secret, a key made over the admin API.
    wrong_key = keys["acme"][:-6] + "abcdef"
    assert http(envoy, "POST", "/v1/embeddings", {"model": FP32, "input": SECRET_TEXT}, bearer(wrong_key))[0] == 401
    assert http(envoy, "GET", "/v1/models")[0] == 401
    hook = {"url": "http://127.0.0.1:9/hook", "description": "log test"}
    status, _, body = http(envoy, "POST", "/v1/webhooks", hook, bearer(keys["acme"]))
    assert status == 200
    webhook_secret = json.loads(body)["secret"]
    status, _, body = http(envoy, "POST", "/v1/admin/keys", {"tenant": "acme", "name": "made"}, bearer(keys["admin"]))
    assert status == 200, body
    made_key = json.loads(body)["token"]
    job = {"model": FP32, "input": [SECRET_TEXT, "more"]}
    status, _, _ = http(envoy, "POST", "/v1/async/embeddings", job, bearer(keys["acme"]))
    assert status == 200

    wait_for(lambda: request_id in server.log)
    time.sleep(1.0)  # the job and the webhook loops log too
    log = server.log
    for secret in (*keys.values(), made_key, wrong_key, webhook_secret, webhook_secret.removeprefix("whsec_")):
        assert secret not in log
    for key in (*keys.values(), made_key):
        assert key.split("_")[-1][-12:] not in log  # not even the secret part of a key
    assert SECRET_TEXT not in log and "zebra" not in log
    records = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert len(records) > 10
    assert all({"time", "level", "logger", "message", "request_id"} <= set(r) for r in records)
    mine = [r for r in records if r["request_id"] == request_id]
    assert mine and any(r["rpc"] == "RestService/CreateEmbedding" for r in mine)


def test_metrics_need_an_admin_key_and_count_tenants_and_refusals(stack):
    _, envoy, keys = stack
    assert http(envoy, "GET", "/metrics")[0] == 401
    assert http(envoy, "GET", "/metrics", headers=bearer(keys["acme"]))[0] == 403

    before = scrape(envoy, bearer(keys["admin"]))
    codes = [http(envoy, "POST", "/v1/embeddings", {"model": FP32, "input": "x"}, bearer(keys["limited"]))[0]]
    codes += [http(envoy, "POST", "/v1/embeddings", {"model": FP32, "input": "x"}, bearer(keys["limited"]))[0]]
    codes += [http(envoy, "POST", "/v1/embeddings", {"model": FP32, "input": "x"}, bearer(keys["limited"]))[0]]
    assert 429 in codes and 200 in codes
    after = scrape(envoy, bearer(keys["admin"]))
    refused = codes.count(429)
    for name, labels, expected in (
        ("embeddings_rate_limited_total", {"tenant": "limited", "limit": "requests"}, refused),
        ("embeddings_tokens_total", {"model": FP32, "tenant": "limited"}, 3 * codes.count(200)),
    ):
        assert value(after, name, **labels) - value(before, name, **labels) == expected


def test_envoy_stats_are_scrapable_on_its_loopback_admin_port(stack):
    _, envoy, _ = stack
    with urllib.request.urlopen(f"http://127.0.0.1:{envoy.admin_port}/stats/prometheus", timeout=10) as response:
        samples = parse_metrics(response.read())
    assert any(name == "envoy_http_downstream_rq_total" for name, _ in samples)


def test_webhook_delivery_outcomes_are_counted(stack):
    _, envoy, keys = stack
    admin = bearer(keys["admin"])
    before = value(scrape(envoy, admin), "embeddings_webhook_deliveries_total", outcome="retry")
    # Nothing listens on port 9: the first attempt fails and is scheduled again.
    hook = {"url": "http://127.0.0.1:9/unreachable", "description": "metrics"}
    status, _, body = http(envoy, "POST", "/v1/webhooks", hook, bearer(keys["acme"]))
    assert status == 200
    job = {"model": FP32, "input": ["notify me"], "metadata": {"webhook_id": json.loads(body)["id"]}}
    assert http(envoy, "POST", "/v1/async/embeddings", job, bearer(keys["acme"]))[0] == 200
    wait_for(lambda: value(scrape(envoy, admin), "embeddings_webhook_deliveries_total", outcome="retry") > before)


def test_cli_sends_the_api_key(stack):
    server, _, keys = stack
    command = [sys.executable, "-m", "embeddings_client", "--address", server.address, "models"]
    refused = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "UNAUTHENTICATED" in refused.stderr
    env = {**os.environ, "EMBEDDINGS_API_KEY": keys["acme"]}
    listed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)
    assert listed.returncode == 0 and FP32 in listed.stdout
    assert keys["acme"] not in listed.stdout + listed.stderr
