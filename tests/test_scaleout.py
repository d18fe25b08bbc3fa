"""Scale-out end to end: two real replicas on one PostgreSQL schema and one Redis prefix, behind a real Envoy.

What a client must not notice: a key created through one replica works on the other; a per-key limit holds across
both combined; an async job whose replica is SIGKILLed completes on the other with every vector exactly once and
one webhook delivery; and under concurrent load, SIGKILL of a replica fails no request (Envoy retries the killed
replica's in-flight calls on the other and stops routing to it), even a replica that dies after the headers of its
answer, and a call that a replica answers UNAVAILABLE (starting, shutting down) after its headers is answered by the
other. One cluster for the module; a killed replica is started again on the same port for the next test.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from service._gen.embeddings.v1 import admin_pb2, admin_pb2_grpc, embeddings_pb2, embeddings_pb2_grpc
from service.access.records import NewKey
from tests.serving import ROOT, EnvoyProcess, ServerProcess, free_port, http
from tests.shared_stores import temp_redis_prefix, temp_schema
from tests.stsb import load_pairs
from tests.test_async_jobs import Receiver, wait_for

FP32 = "all-minilm-l6-v2"
LEASE_S = 3


class Cluster:
    """Two replicas (fixed ports, so one can be killed and started again where Envoy expects it) and Envoy."""

    def __init__(self, model_repo: Path, tmp: Path, store_url: str, redis_prefix: str) -> None:
        self.model_repo = model_repo
        self.store_url = store_url
        self.args = (
            *("--store-url", store_url, "--redis-key-prefix", redis_prefix, "--models", FP32),
            *("--inference-workers", "1", "--job-lease-s", str(LEASE_S), "--job-chunk-size", "16"),
            *("--webhook-allow-private", "true", "--webhook-retry-schedule", "1s,1s"),
        )
        self.ports = [free_port(), free_port()]
        self.replicas: list[ServerProcess] = [self._replica(port) for port in self.ports]
        self.envoy = EnvoyProcess(
            self.ports[0], tmp, admin_port=free_port(), upstreams=[("127.0.0.1", port) for port in self.ports]
        )

    def _replica(self, port: int) -> ServerProcess:
        return ServerProcess(self.model_repo, *self.args, "--port", str(port))

    def start(self) -> Cluster:
        for replica in self.replicas:
            replica.start(wait_ready=False)
        for replica in self.replicas:
            replica.wait_serving(120)
        self.envoy.start()
        return self

    def kill(self, i: int) -> None:
        self.replicas[i].signal(signal.SIGKILL)
        self.replicas[i].wait(30)

    def restart(self, i: int) -> None:
        self.replicas[i].stop()
        self.replicas[i] = self._replica(self.ports[i]).start(timeout=120)
        wait_for(self.all_healthy_in_envoy, timeout=60)  # health-checked and no longer ejected

    def all_healthy_in_envoy(self) -> bool:
        return all_healthy_in(self.envoy, len(self.ports))

    def _clusters(self) -> list[str]:
        return envoy_clusters(self.envoy)

    def host_requests(self) -> dict[int, int]:
        """Requests Envoy sent to each replica (its admin /clusters)."""
        lines = self._clusters()
        counts = {}
        for port in self.ports:
            [line] = [line for line in lines if line.startswith(f"embeddings_grpc::127.0.0.1:{port}::rq_total::")]
            counts[port] = int(line.rsplit("::", 1)[1])
        return counts

    def envoy_stats(self, pattern: str) -> dict[str, int]:
        return envoy_stats(self.envoy, pattern)

    def stop(self) -> None:
        self.envoy.stop()
        for replica in self.replicas:
            replica.stop()


def envoy_clusters(envoy: EnvoyProcess) -> list[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{envoy.admin_port}/clusters", timeout=10) as response:
        return response.read().decode().splitlines()


def all_healthy_in(envoy: EnvoyProcess, hosts: int) -> bool:
    """Whether Envoy has all `hosts` replicas healthy (health-checked, not ejected)."""
    flags = [line for line in envoy_clusters(envoy) if "::health_flags::" in line]
    return len(flags) == hosts and all(line.endswith("::healthy") for line in flags)


def envoy_stats(envoy: EnvoyProcess, pattern: str) -> dict[str, int]:
    """Envoy's counters and gauges matching `pattern` (a regex), by name."""
    url = f"http://127.0.0.1:{envoy.admin_port}/stats?filter={pattern}"
    with urllib.request.urlopen(url, timeout=10) as response:
        lines = response.read().decode().splitlines()
    return {name: int(value) for name, _, value in (line.partition(": ") for line in lines) if value.isdigit()}


@pytest.fixture(scope="module")
def cluster(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    from service.stores.postgres import PostgresAccessStore

    with temp_schema() as url, temp_redis_prefix() as prefix:
        bootstrap = PostgresAccessStore(url)  # the admin key, as `python -m service.admin keys create` makes it
        _, admin_token = bootstrap.create_key(NewKey("ops", "bootstrap", admin=True), int(time.time()))
        bootstrap.close()
        running = Cluster(model_repo, tmp_path_factory.mktemp("scaleout"), url, prefix)
        running.admin_token = admin_token  # type: ignore[attr-defined]
        try:
            yield running.start()
        finally:
            running.stop()


def auth(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def create_key(replica: ServerProcess, admin_token: str, tenant: str, **fields: object) -> str:
    with grpc.insecure_channel(replica.address) as channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        request = admin_pb2.CreateKeyRequest(tenant=tenant, name="scaleout", **fields)
        return stub.CreateKey(request, metadata=auth(admin_token), timeout=30).token


def knows_key(replica: ServerProcess, token: str) -> bool:
    """Whether the replica accepts the key yet (it re-reads keys every second); ListModels charges no limit."""
    with grpc.insecure_channel(replica.address) as channel:
        try:
            embeddings_pb2_grpc.EmbeddingServiceStub(channel).ListModels(
                embeddings_pb2.ListModelsRequest(), metadata=auth(token), timeout=10
            )
            return True
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED, err
            return False


def embed(replica: ServerProcess, token: str, inputs: list[str]) -> np.ndarray:
    with grpc.insecure_channel(replica.address) as channel:
        reply = embeddings_pb2_grpc.EmbeddingServiceStub(channel).Embed(
            embeddings_pb2.EmbedRequest(model=FP32, inputs=inputs), metadata=auth(token), timeout=60
        )
    return np.array([list(e.values) for e in reply.embeddings], dtype=np.float32)


def rest(cluster: Cluster, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    status, _, raw = http(cluster.envoy, method, path, body, {"authorization": f"Bearer {cluster.admin_token}"})
    return status, json.loads(raw) if raw else {}


def test_a_key_created_through_one_replica_works_on_the_other(cluster: Cluster) -> None:
    token = create_key(cluster.replicas[0], cluster.admin_token, "acme")
    assert not knows_key(cluster.replicas[1], token + "x")  # keys are enforced: a wrong one is refused
    wait_for(lambda: knows_key(cluster.replicas[1], token), timeout=30)
    assert embed(cluster.replicas[1], token, ["shared keys"]).shape == (1, 384)
    from openai import OpenAI

    client = OpenAI(base_url=f"{cluster.envoy.base_url}/v1", api_key=token, max_retries=0)
    assert len(client.embeddings.create(model=FP32, input=["through envoy"]).data[0].embedding) == 384


def test_a_per_key_limit_holds_across_both_replicas_combined(cluster: Cluster) -> None:
    from openai import OpenAI, RateLimitError

    limit = 6
    token = create_key(cluster.replicas[0], cluster.admin_token, "limited", rpm=limit)
    for replica in cluster.replicas:
        wait_for(lambda replica=replica: knows_key(replica, token), timeout=30)
    for i in range(limit):  # alternately on each replica: 3 + 3 = the key's 6 a minute
        embed(cluster.replicas[i % 2], token, [f"call {i}"])
    for replica in cluster.replicas:
        with pytest.raises(grpc.RpcError) as refused:
            embed(replica, token, ["one too many"])
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert f"Limit {limit}" in refused.value.details()
    client = OpenAI(base_url=f"{cluster.envoy.base_url}/v1", api_key=token, max_retries=0)
    with pytest.raises(RateLimitError) as limited:
        client.embeddings.create(model=FP32, input=["through envoy"])
    assert limited.value.status_code == 429 and limited.value.body["code"] == "rate_limit_exceeded"


def test_a_job_whose_replica_is_killed_completes_on_the_other_exactly_once(cluster: Cluster) -> None:
    import psycopg

    receiver = Receiver()
    try:
        status, hook = rest(cluster, "POST", "/v1/webhooks", {"url": receiver.url(), "description": "scaleout"})
        assert status == 200, hook
        texts = load_pairs().sentences[:1600]
        status, job = rest(
            cluster,
            "POST",
            "/v1/async/embeddings",
            {"model": FP32, "input": texts, "metadata": {"webhook_id": hook["id"]}},
        )
        assert status == 200, job

        def progress() -> int:
            return rest(cluster, "GET", f"/v1/async/jobs/{job['id']}")[1]["progress"]["completed"]

        def lease_holders() -> int:
            with psycopg.connect(cluster.store_url, autocommit=True) as db:
                sql = "SELECT COUNT(DISTINCT lease_owner) FROM chunks WHERE job_id = %s AND status = 'leased'"
                return db.execute(sql, (job["id"],)).fetchone()[0]

        wait_for(lambda: lease_holders() == 2, timeout=120, interval=0.01)  # each replica's worker holds a chunk
        cluster.kill(0)  # mid-way
        assert progress() < len(texts), "the job finished before the replica could be killed"
        done = wait_for(
            lambda: (j := rest(cluster, "GET", f"/v1/async/jobs/{job['id']}")[1])["status"] == "completed" and j,
            timeout=180,
        )
        assert done["progress"] == {"completed": len(texts), "total": len(texts)}

        results, offset = [], 0
        while True:
            status, page = rest(cluster, "GET", f"/v1/async/jobs/{job['id']}/results?offset={offset}&limit=500")
            assert status == 200, page
            results += page["data"]
            if not page["has_more"]:
                break
            offset = page["next_offset"]
        assert [r["index"] for r in results] == list(range(len(texts)))  # none lost, none twice
        got = np.array([r["embedding"] for r in results], dtype=np.float32)
        expected = np.concatenate(
            [embed(cluster.replicas[1], cluster.admin_token, texts[i : i + 256]) for i in range(0, len(texts), 256)]
        )
        assert np.allclose(got, expected, atol=1e-5)

        with psycopg.connect(cluster.store_url, autocommit=True) as db:
            attempts = db.execute("SELECT MAX(attempts) FROM chunks WHERE job_id = %s", (job["id"],)).fetchone()[0]
        assert attempts >= 2  # the killed replica's chunk was leased again by the other one

        [event] = wait_for(lambda: receiver.events(), timeout=60)
        assert event["type"] == "embedding.job.completed" and event["data"]["id"] == job["id"]
        time.sleep(3)  # a second delivery, from either replica, would arrive by now (retry schedule 1s)
        assert [r["headers"]["webhook-id"] for r in receiver.requests] == [event["id"]]
        status, deliveries = rest(cluster, "GET", f"/v1/webhooks/{hook['id']}/deliveries")
        assert status == 200 and len(deliveries["data"]) == 1, deliveries
    finally:
        receiver.close()
        cluster.restart(0)


def test_sigkill_of_a_replica_under_concurrent_load_fails_no_request(cluster: Cluster) -> None:
    from openai import OpenAI

    sentences = load_pairs().sentences[:400]
    ok: list[int] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    def client_loop(n: int) -> None:
        client = OpenAI(base_url=f"{cluster.envoy.base_url}/v1", api_key=cluster.admin_token, max_retries=0)
        i = n
        while not stop.is_set():
            batch = [sentences[(i + j) % len(sentences)] for j in range(4)]
            try:
                reply = client.embeddings.create(model=FP32, input=batch, timeout=60)
                assert len(reply.data) == 4
                ok.append(n)
            except BaseException as exc:
                failures.append(exc)
            i += 7

    wait_for(cluster.all_healthy_in_envoy, timeout=60)
    threads = [threading.Thread(target=client_loop, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: len(ok) >= 60, timeout=120)
        before = cluster.host_requests()
        assert all(count > 0 for count in before.values()), before  # both replicas were serving
        cluster.kill(1)
        at_kill = len(ok)
        wait_for(lambda: len(ok) >= at_kill + 120 or failures, timeout=180)
    finally:
        stop.set()
        for thread in threads:
            thread.join(90)
    stats = cluster.envoy_stats("retry|rq_reset|outlier|health_check|cx_connect_fail")
    assert failures == [], f"{len(failures)} failed requests, first: {failures[:1]!r}\n{stats}"
    assert len(ok) >= at_kill + 120


class StandIns:
    """Envoy in front of `modes` stand-in replicas (tests/dying_replica.py: "die", "unavailable", "invalid") and, with
    `good`, the cluster's first replica. `reached(i)`: whether a call got to stand-in i."""

    def __init__(self, cluster: Cluster, tmp: Path, modes: list[str], good: bool) -> None:
        self.cluster, self.markers, self.ports = cluster, [tmp / f"reached-{i}" for i in range(len(modes))], []
        self.processes = []
        for marker, mode in zip(self.markers, modes, strict=True):
            port = free_port()
            self.ports.append(port)
            self.processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "tests.dying_replica", str(port), str(marker), mode],
                    cwd=ROOT,
                    stdout=subprocess.PIPE,
                )
            )
        upstreams = [("127.0.0.1", port) for port in ([cluster.ports[0]] if good else []) + self.ports]
        self.envoy = EnvoyProcess(cluster.ports[0], tmp, admin_port=free_port(), upstreams=upstreams)
        self.hosts = len(upstreams)

    def __enter__(self) -> StandIns:
        try:
            for process in self.processes:
                assert process.stdout is not None and process.stdout.readline() == b"ready\n"
            self.cluster.replicas[0].wait_serving(120)
            self.envoy.start()
            wait_for(lambda: all_healthy_in(self.envoy, self.hosts), timeout=60)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self.envoy.stop()
        for process in self.processes:
            process.kill()
            process.wait()

    def reached(self, i: int = 0) -> bool:
        return self.markers[i].exists()

    def rest(self, token: str) -> tuple[int, dict, dict]:
        body = {"model": FP32, "input": ["headers, then an error"]}
        status, headers, raw = http(self.envoy, "POST", "/v1/embeddings", body, {"authorization": f"Bearer {token}"})
        return status, headers, json.loads(raw)

    def grpc(self, token: str) -> tuple[grpc.StatusCode, str, dict, embeddings_pb2.EmbedResponse | None]:
        """(code, details, initial metadata, reply) of one Embed."""
        with grpc.insecure_channel(f"127.0.0.1:{self.envoy.port}") as channel:
            stub = embeddings_pb2_grpc.EmbeddingServiceStub(channel)
            call = stub.Embed.future(
                embeddings_pb2.EmbedRequest(model=FP32, inputs=["headers, then an error"]),
                metadata=auth(token),
                timeout=60,
            )
            try:
                reply = call.result()
            except grpc.RpcError:
                reply = None
            return call.code(), call.details(), dict(call.initial_metadata() or ()), reply

    def stats(self) -> dict[str, int]:
        return envoy_stats(self.envoy, "retry|rq_reset_after|rq_timeout")


@pytest.mark.parametrize("api", ["rest", "grpc"])
def test_a_replica_killed_between_the_headers_and_the_body_of_its_answer_is_retried(
    cluster: Cluster, tmp_path: Path, api: str
) -> None:
    """The server sends an answer's headers (openai-processing-ms, x-ratelimit-*) ahead of its message; a replica
    SIGKILLed in between left Envoy with a response begun, which it never retries (a 503 "reset before headers").
    Envoy holds retry-safe calls' responses until complete (gateway/hold_response.lua), so such a call is answered
    by the other replica. Here one replica always dies just there (tests/dying_replica.py); calls go until one has
    landed on it."""
    from openai import OpenAI

    with StandIns(cluster, tmp_path, ["die"], good=True) as gateway:
        client = OpenAI(base_url=f"{gateway.envoy.base_url}/v1", api_key=cluster.admin_token, max_retries=0)
        with grpc.insecure_channel(f"127.0.0.1:{gateway.envoy.port}") as channel:
            stub = embeddings_pb2_grpc.EmbeddingServiceStub(channel)
            for _ in range(200):  # each call lands on the dying replica with probability 1/2
                if api == "rest":
                    raw = client.embeddings.with_raw_response.create(model=FP32, input=["headers, then death"])
                    assert raw.headers.get("openai-processing-ms") is not None
                    assert len(raw.parse().data[0].embedding) == 384
                else:
                    reply = stub.Embed(
                        embeddings_pb2.EmbedRequest(model=FP32, inputs=["headers, then death"]),
                        metadata=auth(cluster.admin_token),
                        timeout=60,
                    )
                    assert len(reply.embeddings[0].values) == 384
                if gateway.reached():
                    break
        assert gateway.reached(), "no call reached the dying replica"
        assert gateway.processes[0].wait(30) == -signal.SIGKILL
        stats = gateway.stats()
        assert stats["http.api.rq_reset_after_downstream_response_started"] == 0, stats
        assert stats["cluster.embeddings_grpc.upstream_rq_retry_success"] == 1, stats


@pytest.mark.parametrize("api", ["rest", "grpc"])
def test_a_replica_answering_unavailable_after_its_headers_is_retried_on_the_other(
    cluster: Cluster, tmp_path: Path, api: str
) -> None:
    """A replica starting or shutting down answers UNAVAILABLE, after its headers when the call has some (REST errors,
    calls with an API key), so in the trailers, where Envoy's retry on `unavailable` does not look. The hold
    (gateway/hold_response.lua) moves it into the headers: the call is answered by the other replica. Calls go
    until one has landed on the stand-in that always answers so; every call succeeds."""
    with StandIns(cluster, tmp_path, ["unavailable"], good=True) as gateway:
        for _ in range(200):  # each call lands on the stand-in with probability 1/2
            if api == "rest":
                status, headers, body = gateway.rest(cluster.admin_token)
                assert status == 200, body
                assert headers.get("openai-processing-ms") is not None
                assert len(body["data"][0]["embedding"]) == 384
            else:
                code, _, _, reply = gateway.grpc(cluster.admin_token)
                assert code == grpc.StatusCode.OK
                assert reply is not None and len(reply.embeddings[0].values) == 384
            if gateway.reached():
                break
        assert gateway.reached(), "no call reached the stand-in"
        stats = gateway.stats()
        assert stats["cluster.embeddings_grpc.upstream_rq_retry_success"] == 1, stats


@pytest.mark.parametrize("api", ["rest", "grpc"])
def test_when_every_replica_answers_unavailable_the_client_gets_it_after_the_retries(
    cluster: Cluster, tmp_path: Path, api: str
) -> None:
    """No replica to answer: after its retries Envoy hands the client the last UNAVAILABLE, a 503 in OpenAI's
    envelope over REST, UNAVAILABLE over gRPC (not a hang, not a 500)."""
    with StandIns(cluster, tmp_path, ["unavailable", "unavailable"], good=False) as gateway:
        if api == "rest":
            status, headers, body = gateway.rest(cluster.admin_token)
            assert status == 503, body
            assert body["error"]["message"] == "The server is starting; retry shortly.", body
            assert body["error"]["code"] == "unavailable", body
            assert not any(name.startswith("grpc-") for name in headers), headers
        else:
            code, details, _, _ = gateway.grpc(cluster.admin_token)
            assert (code, details) == (grpc.StatusCode.UNAVAILABLE, "The server is starting; retry shortly.")
        stats = gateway.stats()
        assert gateway.reached(0) and gateway.reached(1), stats  # retried on the other
        assert stats["cluster.embeddings_grpc.upstream_rq_retry_limit_exceeded"] == 1, stats  # every retry spent
        assert stats["cluster.embeddings_grpc.upstream_rq_retry_success"] == 0, stats
        assert stats["http.api.rq_reset_after_downstream_response_started"] == 0, stats


@pytest.mark.parametrize("api", ["rest", "grpc"])
def test_a_replica_answering_another_error_after_its_headers_is_not_retried(
    cluster: Cluster, tmp_path: Path, api: str
) -> None:
    """Only UNAVAILABLE is retried: an INVALID_ARGUMENT after the headers reaches the client as the replica sent it,
    headers included."""
    with StandIns(cluster, tmp_path, ["invalid"], good=True) as gateway:
        for _ in range(200):  # each call lands on the stand-in with probability 1/2
            if api == "rest":
                status, headers, body = gateway.rest(cluster.admin_token)
            else:
                code, details, metadata, _ = gateway.grpc(cluster.admin_token)
            if gateway.reached():
                break
            assert (status if api == "rest" else code) in (200, grpc.StatusCode.OK)
        assert gateway.reached(), "no call reached the stand-in"
        if api == "rest":
            assert status == 400, body
            assert headers.get("openai-processing-ms") == "1", headers
            assert body["error"]["message"] == "Rejected by the stand-in replica.", body
            assert body["error"]["param"] == "input", body
        else:
            assert (code, details) == (grpc.StatusCode.INVALID_ARGUMENT, "Rejected by the stand-in replica.")
            assert metadata.get("openai-processing-ms") == "1", metadata
        stats = gateway.stats()
        assert stats.get("cluster.embeddings_grpc.upstream_rq_retry", 0) == 0, stats
