"""Rate limits that are fair to the caller, on the real server and Envoy (REST and gRPC): a refused call consumes
nothing, webhook creation counts as a request, async jobs never drive a bucket into debt, and a Redis that accepts
connections but never answers stalls only the calls waiting on it, never the server.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service._gen.embeddings.v1 import embeddings_pb2 as pb
from service._gen.embeddings.v1 import embeddings_pb2_grpc as pb_grpc
from service._gen.embeddings.v1 import jobs_pb2, jobs_pb2_grpc
from service.access.records import NewKey
from tests.serving import EnvoyProcess, ServerProcess
from tests.shared_stores import temp_schema
from tests.test_access import create_key, metadata, rest, wait_for

FP32 = "all-minilm-l6-v2"
KEYS = {
    "atomic": ("--tenant", "atomic", "--rpm", "10", "--tpm", "20"),
    "hooks": ("--tenant", "hooks", "--rpm", "3"),
    "debt": ("--tenant", "debt", "--tpm", "400"),
}


@pytest.fixture(scope="module")
def stack(model_repo, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("limits-data")
    keys = {name: create_key(data_dir, name, *flags) for name, flags in KEYS.items()}
    args = ("--data-dir", str(data_dir), "--models", FP32, "--webhook-allow-private", "true", "--job-chunk-size", "2")
    with (
        ServerProcess(model_repo, *args) as server,
        EnvoyProcess(server.port, tmp_path_factory.mktemp("envoy-limits")) as envoy,
    ):
        yield server, envoy, keys, data_dir


def test_a_call_refused_on_tokens_takes_no_request(stack):
    server, _, keys, _ = stack
    key = keys["atomic"]  # 10 requests and 20 tokens a minute; "hello world" is 4 tokens
    for _ in range(5):
        status, headers, _ = rest(stack, "POST", "/v1/embeddings", key, {"model": FP32, "input": "hello world"})
        assert status == 200
    requests_left = int(headers["x-ratelimit-remaining-requests"])
    status, headers, body = rest(stack, "POST", "/v1/embeddings", key, {"model": FP32, "input": "hello world"})
    assert status == 429 and "tokens per min (TPM)" in body["error"]["message"]
    assert int(headers["x-ratelimit-remaining-requests"]) >= requests_left  # not one fewer
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.EmbeddingServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.Embed(pb.EmbedRequest(model=FP32, inputs=["hello world"]), metadata=metadata(key), timeout=30)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert int(dict(caught.value.initial_metadata())["x-ratelimit-remaining-requests"]) >= requests_left


def test_creating_webhooks_counts_against_the_request_limit(stack):
    server, _, keys, _ = stack
    key = keys["hooks"]  # 3 requests a minute
    status, headers, _ = rest(stack, "POST", "/v1/webhooks", key, {"url": "http://127.0.0.1:9/a"})
    assert status == 200 and headers["x-ratelimit-remaining-requests"] in ("1", "2")
    with grpc.insecure_channel(server.address) as channel:
        jobs = jobs_pb2_grpc.JobServiceStub(channel)
        request = jobs_pb2.CreateWebhookRequest(url="http://127.0.0.1:9/b")
        jobs.CreateWebhook(request, metadata=metadata(key), timeout=30)
        jobs.CreateWebhook(request, metadata=metadata(key), timeout=30)
        with pytest.raises(grpc.RpcError) as caught:
            jobs.CreateWebhook(request, metadata=metadata(key), timeout=30)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    status, _, body = rest(stack, "POST", "/v1/webhooks", key, {"url": "http://127.0.0.1:9/c"})
    assert status == 429 and body["error"]["code"] == "rate_limit_exceeded"
    assert len(rest(stack, "GET", "/v1/webhooks", key)[2]["data"]) == 3  # the refused ones were not created


def test_a_job_never_overdraws_the_bucket_and_interactive_calls_keep_the_reserve(stack):
    key = stack[2]["debt"]  # 400 tokens a minute: jobs leave 200 of them to interactive calls
    chunk = ["word " * 148] * 2  # one chunk of 2 x 150 = 300 tokens: more than the 200 above the reserve
    status, _, job = rest(stack, "POST", "/v1/async/embeddings", key, {"model": FP32, "input": chunk})
    assert status == 200

    def tokens_left() -> int:
        return int(rest(stack, "GET", "/v1/models", key)[1]["x-ratelimit-remaining-tokens"])

    wait_for(lambda: tokens_left() <= 210, timeout=60)  # the job took the room above the reserve, and waits
    status, headers, _ = rest(stack, "POST", "/v1/embeddings", key, {"model": FP32, "input": "hello world"})
    assert status == 200 and int(headers["x-ratelimit-remaining-tokens"]) >= 190  # the reserve was there
    done = wait_for(
        lambda: (j := rest(stack, "GET", f"/v1/async/jobs/{job['id']}", key)[2])["status"] != "in_progress" and j,
        timeout=120,
    )
    assert done["status"] == "completed" and done["usage"]["total_tokens"] == 300
    assert tokens_left() >= 190  # the job was paced by the budget, never in debt


# --- a Redis that accepts connections and never answers ------------------------------------------------------------


class BlackHole:
    """A TCP listener that accepts connections, reads what arrives and never answers."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.connections: list[socket.socket] = []
        self.received = threading.Semaphore(0)  # released once per connection that sent something
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self.connections.append(conn)
            threading.Thread(target=self._swallow, args=(conn,), daemon=True).start()

    def _swallow(self, conn: socket.socket) -> None:
        told = False
        while True:
            try:
                data = conn.recv(65536)
            except OSError:
                return
            if not data:
                return
            if not told:
                told = True
                self.received.release()

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        for conn in self.connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)  # wakes the reader and tells the client: the peer is gone
            conn.close()


@pytest.fixture
def stalled_server(model_repo) -> Iterator[tuple[ServerProcess, str]]:
    """A shared-mode server (PostgreSQL) whose Redis is a black hole, waiting up to 120 s for each answer."""
    from service.stores.postgres import PostgresAccessStore

    hole = BlackHole()
    with temp_schema() as url:
        store = PostgresAccessStore(url)
        _, token = store.create_key(NewKey("t", "k"), int(time.time()))
        store.close()
        args = ("--store-url", url, "--redis-url", f"redis://127.0.0.1:{hole.port}/0", "--models", FP32)
        with ServerProcess(model_repo, *args, "--rate-limit-redis-timeout-s", "120") as server:
            try:
                yield server, token, hole  # type: ignore[misc]
            finally:
                hole.close()


def test_a_silent_redis_stalls_only_the_calls_waiting_on_it(stalled_server):
    server, token, hole = stalled_server
    with grpc.insecure_channel(server.address) as channel, ThreadPoolExecutor(2) as pool:
        stub = pb_grpc.EmbeddingServiceStub(channel)

        def embed(text: str) -> pb.EmbedResponse:
            return stub.Embed(pb.EmbedRequest(model=FP32, inputs=[text]), metadata=metadata(token), timeout=300)

        first = pool.submit(embed, "waits on redis")
        assert hole.received.acquire(timeout=60)  # the first call is now waiting for Redis's answer
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=60)
        assert health.status == health_pb2.HealthCheckResponse.SERVING  # served meanwhile
        assert not first.done()
        second = pool.submit(embed, "waits on redis too")
        assert hole.received.acquire(timeout=60)  # a second call reached Redis while the first still waits
        assert not first.done() and not second.done()
        hole.close()  # Redis goes away: both fail open (the default) and are served
        assert len(first.result(timeout=120).embeddings) == 1 and len(second.result(timeout=120).embeddings) == 1
    assert "rate limits unavailable" in server.log
