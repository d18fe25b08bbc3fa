"""Async jobs and webhooks end to end: the real server and Envoy, a real HTTP receiver for webhooks, SIGKILL."""

from __future__ import annotations

import base64
import json
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import numpy as np
import pytest
from google.protobuf import struct_pb2

from service._gen.embeddings.v1 import jobs_pb2, jobs_pb2_grpc, rest_pb2
from service.jobs import webhooks
from tests.serving import EnvoyProcess, ServerProcess, http
from tests.stsb import load_pairs

FP32 = "all-minilm-l6-v2"
TINY = "tiny-bert"
FAST_JOBS = ("--webhook-allow-private", "true", "--webhook-retry-schedule", "1s,1s", "--job-chunk-size", "64")


class Receiver:
    """A webhook endpoint: records every POST; answers from a script of status codes (then 200)."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.script: list[int] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                receiver.requests.append({"headers": dict(self.headers), "body": body, "path": self.path})
                status = receiver.script.pop(0) if receiver.script else 200
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def events(self, path: str = "/hook") -> list[dict]:
        return [json.loads(r["body"]) for r in self.requests if r["path"] == path]

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture(scope="module")
def stack(served_repo, tmp_path_factory):
    with (
        ServerProcess(served_repo, *FAST_JOBS) as server,
        EnvoyProcess(server.port, tmp_path_factory.mktemp("envoy-jobs")) as envoy,
    ):
        yield envoy


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def post(envoy, path, body):
    status, _, raw = http(envoy, "POST", path, body)
    return status, json.loads(raw) if raw else None


def get(envoy, path):
    status, _, raw = http(envoy, "GET", path)
    return status, json.loads(raw)


def wait_for(predicate, timeout=60.0, interval=0.1):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not met in time")


def wait_job(envoy, job_id, statuses=("completed",), timeout=120.0) -> dict:
    return wait_for(lambda: (job := get(envoy, f"/v1/async/jobs/{job_id}")[1])["status"] in statuses and job, timeout)


def all_results(envoy, job_id, page=100) -> list[dict]:
    items, offset = [], 0
    while True:
        status, body = get(envoy, f"/v1/async/jobs/{job_id}/results?offset={offset}&limit={page}")
        assert status == 200, body
        items += body["data"]
        if not body["has_more"]:
            return items
        offset = body["next_offset"]


def test_job_completes_with_signed_webhook_and_ordered_results(stack, receiver):
    status, hook = post(stack, "/v1/webhooks", {"url": receiver.url(), "description": "tests"})
    assert status == 200 and hook["id"].startswith("wh_") and hook["secret"].startswith("whsec_")
    texts = load_pairs().sentences[:300]
    status, job = post(
        stack,
        "/v1/async/embeddings",
        {"model": FP32, "input": texts, "metadata": {"webhook_id": hook["id"], "batch": "7"}},
    )
    assert status == 200, job
    assert job["id"].startswith("job_") and job["status"] == "queued" and job["object"] == "embedding.job"
    assert job["input_count"] == 300 and job["metadata"]["batch"] == "7" and job["progress"]["completed"] == 0
    done = wait_job(stack, job["id"])
    assert done["progress"] == {"completed": 300, "total": 300} and done["usage"]["prompt_tokens"] > 0

    results = all_results(stack, job["id"])
    assert [r["index"] for r in results] == list(range(300))
    _, _, direct = http(stack, "POST", "/v1/embeddings", {"model": FP32, "input": texts, "encoding_format": "float"})
    expected = np.array([d["embedding"] for d in json.loads(direct)["data"]], dtype=np.float32)
    got = np.array([r["embedding"] for r in results], dtype=np.float32)
    assert np.allclose(got, expected, atol=1e-5)

    [event] = wait_for(lambda: receiver.events())
    request = receiver.requests[0]
    assert webhooks.verify(hook["secret"], request["headers"], request["body"])
    assert request["headers"]["webhook-id"] == event["id"] and event["id"].startswith("evt_")
    assert event["type"] == "embedding.job.completed" and event["object"] == "event"
    data = event["data"]
    assert data["id"] == job["id"] and data["status"] == "completed" and data["model"] == FP32
    assert data["metadata"]["batch"] == "7" and data["results_url"].endswith("/results")
    assert data["usage"]["total_tokens"] == done["usage"]["total_tokens"]


def test_async_body_is_the_embeddings_body_plus_metadata(stack):
    """POST /v1/async/embeddings takes the JSON it always took (every field of the former AsyncEmbedRequest, now
    /v1/embeddings' own CreateEmbeddingRequest with `metadata`): the job keeps its metadata and options, and its
    results are what /v1/embeddings answers for the same body without the metadata."""
    metadata = {"corpus": "wire", "pairs": "2"}
    body = {
        "model": TINY, "input": ["the same body", "as before"], "encoding_format": "base64", "dimensions": 16,
        "user": "end-user-7", "truncate": True, "normalize": False, "input_type": "query", "metadata": metadata,
        "embedding_type": "uint8",
    }  # fmt: skip
    status, job = post(stack, "/v1/async/embeddings", body)
    assert status == 200, job
    assert job["metadata"] == metadata and job["input_count"] == 2
    assert (job["model"], job["encoding_format"], job["embedding_type"], job["dimensions"]) == (
        TINY, "base64", "uint8", 16,
    )  # fmt: skip
    assert wait_job(stack, job["id"])["metadata"] == metadata
    live = {name: value for name, value in body.items() if name != "metadata"}
    status, _, direct = http(stack, "POST", "/v1/embeddings", live)
    assert status == 200, direct
    assert all_results(stack, job["id"]) == json.loads(direct)["data"]


def test_webhook_retries_keep_the_event_id_and_410_disables(stack, receiver):
    _, hook = post(stack, "/v1/webhooks", {"url": receiver.url("/flaky")})
    receiver.script = [500]
    post(
        stack, "/v1/async/embeddings", {"model": FP32, "input": ["one", "two"], "metadata": {"webhook_id": hook["id"]}}
    )
    wait_for(lambda: len(receiver.events("/flaky")) == 2, timeout=30)
    first, second = [r for r in receiver.requests if r["path"] == "/flaky"]
    assert first["headers"]["webhook-id"] == second["headers"]["webhook-id"]
    assert webhooks.verify(hook["secret"], second["headers"], second["body"])
    assert get(stack, f"/v1/webhooks/{hook['id']}/deliveries")[0] == 200
    codes = sorted(
        (d.get("attempt"), d.get("status_code"))
        for d in wait_for(
            lambda: (
                len(get(stack, f"/v1/webhooks/{hook['id']}/deliveries")[1]["data"]) == 2
                and get(stack, f"/v1/webhooks/{hook['id']}/deliveries")[1]["data"]
            )
        )
    )
    assert codes == [(1, 500), (2, 200)]

    _, gone = post(stack, "/v1/webhooks", {"url": receiver.url("/gone")})
    receiver.script = [410]
    post(stack, "/v1/async/embeddings", {"model": FP32, "input": ["x"], "metadata": {"webhook_id": gone["id"]}})
    wait_for(lambda: any(h["id"] == gone["id"] and h.get("disabled_at") for h in get(stack, "/v1/webhooks")[1]["data"]))
    time.sleep(2.5)  # past the retry schedule: a disabled endpoint gets nothing more
    assert len(receiver.events("/gone")) == 1


def test_validation_happens_before_acceptance(stack):
    cases = [
        ({"model": "nope", "input": ["x"]}, 404, "model_not_found"),
        ({"model": FP32, "input": ["ok", ""]}, 400, "invalid_input"),
        ({"model": FP32, "input": ["word " * 300], "truncate": False}, 400, "context_length_exceeded"),
        ({"model": FP32, "input": ["x"], "dimensions": 7}, 400, "dimensions_not_supported"),
        ({"model": FP32, "input": ["x"], "metadata": {"webhook_id": "wh_missing"}}, 400, "invalid_input"),
    ]
    before = len(get(stack, "/v1/async/jobs?limit=100")[1]["data"])
    for body, status, code in cases:
        got, answer = post(stack, "/v1/async/embeddings", body)
        assert (got, answer["error"]["code"]) == (status, code), answer
    assert len(get(stack, "/v1/async/jobs?limit=100")[1]["data"]) == before


def test_100k_inputs_accepted_then_cancelled_with_event(stack, receiver):
    _, hook = post(stack, "/v1/webhooks", {"url": receiver.url("/cancel")})
    texts = [f"document number {i} of a large corpus" for i in range(100_000)]
    status, job = post(
        stack, "/v1/async/embeddings", {"model": FP32, "input": texts, "metadata": {"webhook_id": hook["id"]}}
    )
    assert status == 200 and job["input_count"] == 100_000
    # Interactive calls are served while the job runs.
    status, _ = post(stack, "/v1/embeddings", {"model": FP32, "input": "interactive while a job runs"})
    assert status == 200
    assert get(stack, f"/v1/async/jobs/{job['id']}")[1]["status"] in ("queued", "in_progress")
    status, cancelled = post(stack, f"/v1/async/jobs/{job['id']}/cancel", None)
    assert status == 200 and cancelled["status"] == "cancelled" and cancelled["cancelled_at"] > 0
    [event] = wait_for(lambda: receiver.events("/cancel"))
    assert event["type"] == "embedding.job.cancelled" and event["data"]["id"] == job["id"]
    status, again = post(stack, f"/v1/async/jobs/{job['id']}/cancel", None)
    assert status == 200 and again["status"] == "cancelled"


def test_list_pagination_and_unknown_ids(stack):
    ids = [post(stack, "/v1/async/embeddings", {"model": FP32, "input": [f"page {i}"]})[1]["id"] for i in range(3)]
    status, page = get(stack, "/v1/async/jobs?limit=2")
    assert status == 200 and [j["id"] for j in page["data"]] == ids[::-1][:2] and page["has_more"] is True
    _, rest = get(stack, f"/v1/async/jobs?limit=2&after={page['last_id']}")
    assert rest["data"][0]["id"] == ids[0]
    for path in ("/v1/async/jobs/job_nope", "/v1/async/jobs/job_nope/results", "/v1/webhooks/wh_nope/deliveries"):
        status, body = get(stack, path)
        assert status == 404 and sorted(body["error"]) == ["code", "message", "param", "type"]


def test_results_honour_encoding_and_expire(served_repo, tmp_path):
    args = (*FAST_JOBS, "--results-retention-s", "1", "--results-expiry-sweep-s", "0.5")
    with ServerProcess(served_repo, *args) as server, EnvoyProcess(server.port, tmp_path) as envoy:
        _, job = post(envoy, "/v1/async/embeddings", {"model": FP32, "input": ["a", "b"], "encoding_format": "base64"})
        wait_job(envoy, job["id"])
        status, page = get(envoy, f"/v1/async/jobs/{job['id']}/results")
        if status == 200:  # read before the sweep removed them
            vector = np.frombuffer(base64.b64decode(page["data"][0]["embedding"]), dtype="<f4")
            assert vector.shape == (384,)
        status, body = wait_for(lambda: (r := get(envoy, f"/v1/async/jobs/{job['id']}/results"))[0] == 404 and r)
        assert body["error"]["code"] == "results_expired" and "expired" in body["error"]["message"]
        assert get(envoy, f"/v1/async/jobs/{job['id']}")[1]["status"] == "completed"


def test_private_webhook_urls_are_refused_by_default(gateway):
    for url in (
        "http://127.0.0.1:9000/hook",
        "http://169.254.169.254/latest",
        "http://10.0.0.8/x",
        "ftp://example.com",
    ):
        status, body = post(gateway, "/v1/webhooks", {"url": url})
        assert status == 400 and body["error"]["param"] == "url", (url, body)


def test_sigkill_mid_job_loses_and_duplicates_nothing(served_repo, tmp_path, receiver):
    data_dir = tmp_path / "data"
    args = ("--data-dir", str(data_dir), "--job-lease-s", "2", "--job-chunk-size", "32", *FAST_JOBS[:2])
    texts = load_pairs().sentences[:1200]
    first = ServerProcess(served_repo, *args).start()
    with EnvoyProcess(first.port, tmp_path / "e1") as envoy:
        _, hook = post(envoy, "/v1/webhooks", {"url": receiver.url("/after-restart")})
        metadata = {"webhook_id": hook["id"]}
        _, job = post(envoy, "/v1/async/embeddings", {"model": FP32, "input": texts, "metadata": metadata})
        wait_for(lambda: get(envoy, f"/v1/async/jobs/{job['id']}")[1]["progress"]["completed"] > 0, interval=0.02)
    first.signal(signal.SIGKILL)
    first.wait(30)
    second = ServerProcess(served_repo, *args).start()
    try:
        (tmp_path / "e2").mkdir()
        with EnvoyProcess(second.port, tmp_path / "e2") as envoy:
            before = get(envoy, f"/v1/async/jobs/{job['id']}")[1]
            assert before["status"] != "completed" or before["progress"]["completed"] == 1200
            done = wait_job(envoy, job["id"])
            assert done["progress"] == {"completed": 1200, "total": 1200}
            wait_for(lambda: receiver.events("/after-restart"))
            results = all_results(envoy, job["id"], page=500)
            _, _, direct = http(envoy, "POST", "/v1/embeddings", {"model": FP32, "input": texts[:600]})
            _, _, direct2 = http(envoy, "POST", "/v1/embeddings", {"model": FP32, "input": texts[600:]})
    finally:
        second.stop()
    # The event was delivered after the restart, once (a retry would carry the same webhook-id).
    events = receiver.events("/after-restart")
    assert [e["data"]["id"] for e in events] == [job["id"]] and events[0]["type"] == "embedding.job.completed"
    assert webhooks.verify(hook["secret"], receiver.requests[-1]["headers"], receiver.requests[-1]["body"])
    assert [r["index"] for r in results] == list(range(1200))
    expected = np.array([d["embedding"] for d in json.loads(direct)["data"] + json.loads(direct2)["data"]])
    assert np.allclose(np.array([r["embedding"] for r in results]), expected, atol=1e-5)


def test_fresh_server_lists_are_empty_arrays(served_repo, tmp_path):
    with ServerProcess(served_repo) as server, EnvoyProcess(server.port, tmp_path) as envoy:
        for path in ("/v1/async/jobs", "/v1/webhooks"):
            status, body = get(envoy, path)
            assert status == 200 and body["data"] == [] and body["object"] == "list", (path, body)
        status, hook = post(envoy, "/v1/webhooks", {"url": "https://example.com/hook"})
        assert status == 200 and hook["secret"].startswith("whsec_") and "disabled_at" not in hook
        listed = get(envoy, "/v1/webhooks")[1]["data"][0]
        assert "secret" not in listed and "disabled_reason" not in listed
        assert get(envoy, f"/v1/webhooks/{hook['id']}/deliveries")[1]["data"] == []


def test_the_job_limits_set_on_the_server_are_the_ones_its_job_service_keeps(served_repo):
    """max_inputs_per_job and max_webhooks_per_tenant reach the job service (through JobSettings)."""
    limits = ("--max-inputs-per-job", "3", "--max-webhooks-per-tenant", "1", "--webhook-allow-private", "true")
    with ServerProcess(served_repo, *limits) as server, grpc.insecure_channel(server.address) as channel:
        stub = jobs_pb2_grpc.JobServiceStub(channel)
        texts = struct_pb2.Value(list_value=struct_pb2.ListValue(values=[struct_pb2.Value(string_value="a")] * 4))
        with pytest.raises(grpc.RpcError) as caught:
            stub.AsyncEmbed(rest_pb2.CreateEmbeddingRequest(model=FP32, input=texts), timeout=30)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "4 in one request, the limit is 3" in caught.value.details()
        del texts.list_value.values[3]
        assert stub.AsyncEmbed(rest_pb2.CreateEmbeddingRequest(model=FP32, input=texts), timeout=30).id
        hook = jobs_pb2.CreateWebhookRequest(url="http://127.0.0.1:9/hook")
        assert stub.CreateWebhook(hook, timeout=30).id
        with pytest.raises(grpc.RpcError) as caught:
            stub.CreateWebhook(hook, timeout=30)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "already has 1 webhook endpoints" in caught.value.details()
