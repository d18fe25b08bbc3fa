"""The Python client library (embeddings_client) against the real server, the real Envoy and a real TLS Envoy:
vectors equal to the raw stubs', calls split to the server's limits, typed errors with the server's reason and the
caller's input positions, API keys, retries on RESOURCE_EXHAUSTED after the server's retry-after-ms and on
UNAVAILABLE until a server comes up, TLS and mutual TLS, async jobs, and the shipped gRPC service config."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from pathlib import Path

import grpc
import numpy as np
import pytest
import yaml
from google.protobuf import descriptor_pool

from embeddings_client import (
    NO_RETRIES,
    AsyncEmbeddingsClient,
    AuthenticationError,
    EmbeddingsClient,
    InvalidRequestError,
    NotFoundError,
    RateLimitError,
    RestEmbeddingsClient,
    RetryPolicy,
    UnavailableError,
    connect,
)
from embeddings_client.config import parse_target, shipped_config
from service._gen.embeddings.v1 import embeddings_pb2 as pb
from service._gen.embeddings.v1 import embeddings_pb2_grpc as pb_grpc
from service.server import MIN_CLIENT_PING_INTERVAL_MS
from tests.serving import ROOT, EnvoyProcess, ServerProcess, free_port

FP32, TINY = "all-minilm-l6-v2", "tiny-bert"
TEXTS = [f"sentence {i}: {topic}" for i, topic in enumerate(["cats purr", "the sea", "old trains", "jazz"] * 6)]
MAX_INPUTS = 16  # the keyed server's max_inputs_per_request


def raw_vectors(stub, texts, **fields) -> np.ndarray:
    response = stub.Embed(pb.EmbedRequest(model=fields.pop("model", FP32), inputs=texts, **fields), timeout=60)
    return np.array([list(e.values) for e in response.embeddings], dtype=np.float32)


def admin(data_dir: Path, *args: str) -> str:
    command = [sys.executable, "-m", "service.admin", "--data-dir", str(data_dir), *args]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def make_certs(folder: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and localhost, and a client certificate, made with openssl."""
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True, timeout=60)

    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=embeddings test CA")
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, extra in (("server", ("-extfile", "san.ext")), ("client", ())):
        run("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        run(
            *("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial"),
            *("-out", f"{name}.pem", "-days", "2", *extra),
        )
    return {name: folder / name for name in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")}


def with_mutual_tls(config_path: Path, certs: dict[str, Path]) -> None:
    """Make the rendered gateway listener terminate TLS and require a client certificate from the test CA."""
    config = yaml.safe_load(config_path.read_text())
    chain = config["static_resources"]["listeners"][0]["filter_chains"][0]
    chain["transport_socket"] = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "require_client_certificate": True,
            "common_tls_context": {
                "alpn_protocols": ["h2", "http/1.1"],
                "tls_certificates": [
                    {
                        "certificate_chain": {"filename": str(certs["server.pem"])},
                        "private_key": {"filename": str(certs["server.key"])},
                    }
                ],
                "validation_context": {"trusted_ca": {"filename": str(certs["ca.pem"])}},
            },
        },
    }
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))


@pytest.fixture(scope="module")
def keyed(served_repo, tmp_path_factory):
    """A server with API keys (one rate-limited) and a low input cap, behind a plain and a mutual-TLS Envoy."""
    data_dir = tmp_path_factory.mktemp("client-keys")
    keys = {
        "user": admin(data_dir, "keys", "create", "--tenant", "lib", "--name", "user"),
        "limited": admin(data_dir, "keys", "create", "--tenant", "slow", "--name", "limited", "--rpm", "20"),
    }
    certs = make_certs(tmp_path_factory.mktemp("certs"))
    args = ("--data-dir", str(data_dir), "--models", f"{FP32},{TINY}", "--max-inputs-per-request", str(MAX_INPUTS))
    with ServerProcess(served_repo, *args) as server:
        tls = EnvoyProcess(server.port, tmp_path_factory.mktemp("envoy-tls"))
        with_mutual_tls(tls.config, certs)
        with EnvoyProcess(server.port, tmp_path_factory.mktemp("envoy-plain")) as envoy, tls:
            yield {"server": server, "envoy": envoy, "tls": tls, "keys": keys, "certs": certs}


@pytest.fixture(scope="module")
def keyed_stub(keyed):
    metadata = (("authorization", f"Bearer {keyed['keys']['user']}"),)
    with grpc.insecure_channel(keyed["server"].address) as channel:
        stub = pb_grpc.EmbeddingServiceStub(channel)
        yield lambda texts, **fields: raw_vectors(_Authed(stub, metadata), texts, **fields)


class _Authed:
    """A raw stub that sends the key."""

    def __init__(self, stub, metadata) -> None:
        self._stub, self._metadata = stub, metadata

    def Embed(self, request, timeout):
        return self._stub.Embed(request, timeout=timeout, metadata=self._metadata)


# --- embeddings --------------------------------------------------------------------------------------------------


def test_embed_equals_the_raw_stub_in_input_order(server, stub):
    with EmbeddingsClient(f"grpc://{server.address}", model=FP32) as client:
        vectors = client.embed(TEXTS, batch_size=5)
        assert vectors.shape == (len(TEXTS), 384) and vectors.dtype == np.float32
        assert np.allclose(vectors, raw_vectors(stub, TEXTS), atol=1e-6)
        assert np.allclose(client.embed(TEXTS[0]), vectors[:1], atol=1e-6)  # a single string is one input
        batches = list(client.iter_embed(TEXTS, batch_size=7))
        assert [(b.start, b.stop) for b in batches] == [(0, 7), (7, 14), (14, 21), (21, 24)]
        assert all(b.tokens.min() > 2 and not b.truncated.any() for b in batches)
        # The model's options pass through: dimensions, normalize, input_type (prefixes) on tiny-bert.
        options = {"dimensions": 8, "normalize": True, "input_type": "query"}
        shortened = client.embed(TEXTS[:3], model=TINY, **options)
        expected = raw_vectors(
            stub, TEXTS[:3], model=TINY, dimensions=8, normalize=True, input_type=pb.INPUT_TYPE_QUERY
        )
        assert shortened.shape == (3, 8) and np.allclose(shortened, expected, atol=1e-6)
        assert not np.allclose(shortened, client.embed(TEXTS[:3], model=TINY, dimensions=8, normalize=True), atol=1e-3)
        assert client.embed([], model=FP32).shape == (0, 384)


@pytest.mark.parametrize("scheme", ["grpc", "rest"])
def test_batches_say_how_many_tokens_the_servers_cache_served(server, gateway, scheme):
    target = f"grpc://{server.address}" if scheme == "grpc" else gateway.base_url
    texts = [f"{scheme} cached sentence {i} for the client" for i in range(3)]
    with connect(target, model=FP32) as client:
        first, second = (list(client.iter_embed(texts)) for _ in range(2))
    assert [b.cached_tokens for b in first] == [0]
    assert second[0].cached_tokens > 0 and np.array_equal(second[0].vectors, first[0].vectors)
    if scheme == "grpc":  # REST reports tokens for the whole call only
        assert second[0].cached_tokens == int(first[0].tokens.sum())


def test_calls_are_split_to_the_servers_input_limit(keyed, keyed_stub):
    texts = [f"text number {i}" for i in range(3 * MAX_INPUTS + 5)]
    with pytest.raises(grpc.RpcError) as refused:
        keyed_stub(texts)  # one call over the cap
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "too many" in refused.value.details().lower()
    key = keyed["keys"]["user"]
    with EmbeddingsClient(keyed["server"].address, api_key=key, model=FP32) as client:
        assert client.model().max_inputs_per_request == MAX_INPUTS
        batches = list(client.iter_embed(texts))
        assert [len(b.vectors) for b in batches] == [MAX_INPUTS] * 3 + [5]
        vectors = np.concatenate([b.vectors for b in batches])
    expected = np.concatenate([keyed_stub(texts[i : i + 8]) for i in range(0, len(texts), 8)])
    assert np.allclose(vectors, expected, atol=1e-6)
    with RestEmbeddingsClient(keyed["envoy"].base_url, api_key=key, model=FP32) as rest:
        assert rest.model().max_inputs_per_request == MAX_INPUTS
        assert np.allclose(rest.embed(texts), vectors, atol=1e-6)


def test_errors_are_typed_with_the_servers_reason_and_the_callers_positions(server, gateway):
    texts = [*TEXTS[:9], "word " * 400, "after"]
    for client in (EmbeddingsClient(server.address, model=FP32), RestEmbeddingsClient(gateway.base_url, model=FP32)):
        with client:
            with pytest.raises(InvalidRequestError) as too_long:
                client.embed(texts, batch_size=4, truncate=False)  # the long text is input 1 of the third request
            err = too_long.value
            assert (err.code, err.reason, err.index) == ("INVALID_ARGUMENT", "context_length_exceeded", 9)
            assert err.message.startswith("Input 9 is too long") and "input 9 has 402 tokens" in err.message
            with pytest.raises(NotFoundError) as missing:
                client.embed(["x"], model="no-such-model")
            assert missing.value.reason == "model_not_found" and "no-such-model" in str(missing.value)
            with pytest.raises(InvalidRequestError) as dims:
                client.embed(["x"], dimensions=7)
            assert dims.value.reason == "dimensions_not_supported" and dims.value.field == "dimensions"
    assert err.http_status == 400 and too_long.value.metadata == {}  # REST: the envelope's code, no ErrorInfo
    with EmbeddingsClient(server.address, model=FP32) as client, pytest.raises(InvalidRequestError) as grpc_err:
        client.embed(texts, batch_size=4, truncate=False)
    assert grpc_err.value.field == "inputs[9]" and grpc_err.value.metadata["tokens"] == "402"
    assert grpc_err.value.metadata["limit"] == "256" and grpc_err.value.metadata["index"] == "9"


def test_api_key_is_sent_as_bearer_metadata(keyed):
    server, envoy, key = keyed["server"], keyed["envoy"], keyed["keys"]["user"]
    for make in (lambda k: EmbeddingsClient(server.address, api_key=k), lambda k: connect(envoy.base_url, api_key=k)):
        for bad in (None, "sk-000000000000-nope"):
            with make(bad) as client, pytest.raises(AuthenticationError) as refused:
                client.embed(["hello"], model=FP32)
            assert refused.value.reason == "invalid_api_key" and refused.value.code == "UNAUTHENTICATED"
        with make(key) as client:
            assert client.embed(["hello"], model=FP32).shape == (1, 384)


async def test_async_client_equals_the_sync_client(server, stub):
    expected = raw_vectors(stub, TEXTS)
    async with AsyncEmbeddingsClient(server.address, model=FP32, concurrency=3) as client:
        assert np.allclose(await client.embed(TEXTS, batch_size=5), expected, atol=1e-6)
        assert FP32 in [m.id for m in await client.models()] and (await client.model()).dimensions == 384
        with pytest.raises(InvalidRequestError) as too_long:
            await client.embed([*TEXTS[:6], "word " * 400], batch_size=2, truncate=False)
        assert too_long.value.index == 6 and too_long.value.message.startswith("Input 6 ")
        job = await client.submit_job(TEXTS, metadata={"corpus": "async"})
        done = await client.wait_job(job.id, poll_interval_s=0.1)
        assert done.status == "completed" and done.metadata["corpus"] == "async"
        assert np.allclose(await client.job_results(done.id, page_size=10), expected, atol=1e-5)


# --- retries -----------------------------------------------------------------------------------------------------


def _until_retried(embed, seen: list) -> np.ndarray:
    """Call `embed` until one call was refused for the rate limit (and retried): the key allows 20 a minute."""
    for _ in range(60):
        vectors = embed()
        if seen:
            return vectors
    raise AssertionError("never rate limited")


def test_rate_limited_calls_wait_exactly_the_servers_retry_delay(keyed):
    key = keyed["keys"]["limited"]
    for transport in ("grpc", "asyncio", "rest"):
        seen: list = []
        policy = RetryPolicy(on_retry=lambda attempt, error, wait, seen=seen: seen.append((error, wait)))
        options = {"api_key": key, "model": FP32, "retry": policy}
        if transport == "grpc":
            with EmbeddingsClient(keyed["server"].address, **options) as client:
                vectors = _until_retried(lambda client=client: client.embed(["hello"]), seen)
        elif transport == "rest":
            with RestEmbeddingsClient(keyed["envoy"].base_url, **options) as client:
                vectors = _until_retried(lambda client=client: client.embed(["hello"]), seen)
        else:

            async def run(options=options, seen=seen) -> np.ndarray:
                async with AsyncEmbeddingsClient(keyed["server"].address, **options) as client:
                    for _ in range(60):
                        vectors = await client.embed(["hello"])
                        if seen:
                            return vectors
                raise AssertionError("never rate limited")

            vectors = asyncio.run(run())
        assert vectors.shape == (1, 384), transport
        error, wait = seen[0]
        assert isinstance(error, RateLimitError) and error.reason == "rate_limit_exceeded", transport
        assert error.retry_after_s is not None and 0 < error.retry_after_s <= 3.1, transport  # 20/min: one per 3 s
        assert wait == error.retry_after_s, transport  # exactly what the server asked, no back-off of its own


def test_unavailable_is_retried_until_the_server_comes_up(served_repo):
    port = free_port()
    seen: list = []
    failed_once = threading.Event()

    def on_retry(attempt, error, wait) -> None:
        seen.append(error)
        failed_once.set()

    policy = RetryPolicy(max_attempts=100_000, initial_backoff_s=0.05, max_backoff_s=0.5, on_retry=on_retry)
    fast_reconnect = {"grpc.initial_reconnect_backoff_ms": 100, "grpc.max_reconnect_backoff_ms": 500}
    client = EmbeddingsClient(
        f"127.0.0.1:{port}", model=TINY, timeout=240, retry=policy, channel_options=fast_reconnect
    )
    # A job submission is not idempotent: it is never retried on UNAVAILABLE (the server may have acted on it).
    with pytest.raises(UnavailableError):
        client.submit_job(["x"], timeout=30)
    assert not seen
    outcome: dict = {}

    def embed() -> None:
        try:
            outcome["vectors"] = client.embed(["hello", "world"])
        except Exception as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=embed)
    thread.start()
    assert failed_once.wait(60)
    with ServerProcess(served_repo, "--models", TINY, "--port", str(port)):
        thread.join(240)
    client.close()
    assert "error" not in outcome, outcome.get("error")
    assert outcome["vectors"].shape[0] == 2 and all(isinstance(e, UnavailableError) for e in seen)


# --- TLS ---------------------------------------------------------------------------------------------------------


def test_grpcs_and_https_with_mutual_tls(keyed, keyed_stub):
    certs, port, key = keyed["certs"], keyed["tls"].port, keyed["keys"]["user"]
    mutual = {"root_certificates": certs["ca.pem"], "client_certificate": certs["client.pem"]}
    mutual["client_key"] = certs["client.key"]
    expected = keyed_stub(TEXTS[:4])
    for url in (f"grpcs://127.0.0.1:{port}", f"https://127.0.0.1:{port}", f"https://localhost:{port}"):
        with connect(url, api_key=key, model=FP32, **mutual) as client:
            assert np.allclose(client.embed(TEXTS[:4]), expected, atol=1e-6), url
    # The certificate checked for another name than the URL's host (gRPC only).
    with EmbeddingsClient(f"127.0.0.1:{port}", tls=True, server_name="localhost", api_key=key, **mutual) as client:
        assert client.embed(["hello"], model=FP32).shape == (1, 384)
    # An unknown CA (the system's roots), or no client certificate: the handshake fails, nothing is sent.
    refused = [{}, {"root_certificates": certs["ca.pem"]}]
    for url in (f"grpcs://127.0.0.1:{port}", f"https://127.0.0.1:{port}"):
        for tls in refused:
            client = connect(url, api_key=key, model=FP32, retry=NO_RETRIES, timeout=30, **tls)
            with client, pytest.raises(UnavailableError):
                client.embed(["hello"])
    # The CLI with the same material, the key from the environment.
    command = [sys.executable, "-m", "embeddings_client", "--url", f"grpcs://localhost:{port}"]
    command += ["--ca-cert", str(certs["ca.pem"]), "--client-cert", str(certs["client.pem"])]
    command += ["--client-key", str(certs["client.key"]), "models"]
    env = {**os.environ, "EMBEDDINGS_API_KEY": key}
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0 and FP32 in done.stdout, done.stderr


# --- jobs and configuration ----------------------------------------------------------------------------------


def test_jobs_submit_wait_and_results_over_grpc_and_rest(server, stub, gateway):
    expected = raw_vectors(stub, TEXTS)
    for client in (EmbeddingsClient(server.address, model=FP32), RestEmbeddingsClient(gateway.base_url, model=FP32)):
        with client:
            job = client.submit_job(TEXTS, metadata={"corpus": "lib"})
            assert job.status in ("queued", "in_progress", "completed") and job.total == len(TEXTS)
            progress: list = []
            done = client.wait_job(job.id, poll_interval_s=0.1, on_progress=progress.append)
            assert done.status == "completed" and done.completed == len(TEXTS) and progress[-1] == done
            assert np.allclose(client.job_results(job.id, page_size=7), expected, atol=1e-5)
            assert job.id in [j.id for j in client.list_jobs(limit=100).jobs]
            big = client.submit_job([f"to cancel {i}" for i in range(3000)])
            assert client.cancel_job(big.id).status in ("cancelled", "completed")
            with pytest.raises(NotFoundError) as missing:
                client.get_job("job_missing")
            assert missing.value.reason == "job_not_found"


def test_shipped_service_config_names_real_methods_and_matches_the_server():
    config = shipped_config()
    pool = descriptor_pool.Default()
    retried = set()
    for method_config in config["serviceConfig"]["methodConfig"]:
        for name in method_config["name"]:
            service = pool.FindServiceByName(name["service"])
            methods = [service.methods_by_name[name["method"]]] if "method" in name else service.methods
            retried |= {m.full_name for m in methods}
        assert method_config["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert "embeddings.v1.EmbeddingService.Embed" in retried
    assert not {"embeddings.v1.JobService.AsyncEmbed", "embeddings.v1.JobService.CancelJob"} & retried
    args = config["channelArgs"]
    assert args["grpc.keepalive_time_ms"] >= MIN_CLIENT_PING_INTERVAL_MS  # never a too_many_pings GOAWAY
    assert args["grpc.max_receive_message_length"] == 256 * 1024 * 1024  # the server's max_message_bytes


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("127.0.0.1:50051", ("grpc", "127.0.0.1", 50051, False)),
        ("grpc://embed.internal", ("grpc", "embed.internal", 50051, False)),
        ("grpcs://embed.internal", ("grpcs", "embed.internal", 443, True)),
        ("http://127.0.0.1:8080/", ("http", "127.0.0.1", 8080, False)),
        ("https://gw.example/embeddings", ("https", "gw.example", 443, True)),
        ("[::1]:6000", ("grpc", "::1", 6000, False)),
    ],
)
def test_urls(url, expected):
    target = parse_target(url)
    assert (target.scheme, target.host, target.port, target.tls) == expected


@pytest.mark.parametrize("url", ["ftp://x", "grpc://", "grpc://host/path", "http://host:notaport"])
def test_bad_urls(url):
    with pytest.raises(ValueError):
        parse_target(url)
