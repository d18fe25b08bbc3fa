"""Access control end to end: keys made by the admin CLI, the real server and Envoy, the real openai SDK and grpc.

One server and one Envoy for the module. Every scenario uses its own keys (and tenants), so the rate limits one
test exhausts never touch another.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import grpc
import httpx2
import openai
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from openai import OpenAI

from service._gen.embeddings.v1 import admin_pb2, admin_pb2_grpc, jobs_pb2, jobs_pb2_grpc
from service._gen.embeddings.v1 import embeddings_pb2 as pb
from service._gen.embeddings.v1 import embeddings_pb2_grpc as pb_grpc
from tests.serving import ROOT, EnvoyProcess, ServerProcess, http

FP32, INT8 = "all-minilm-l6-v2", "all-minilm-l6-v2-int8"
DURATION = re.compile(r"^(\d+h)?(\d+m)?(\d+(\.\d+)?s|\d+ms)$")
KEYS = {
    # name: CLI flags
    "admin": ("--tenant", "ops", "--admin"),
    "acme": (
        "--tenant",
        "acme",
    ),
    "globex": (
        "--tenant",
        "globex",
    ),
    "int8-only": ("--tenant", "acme", "--models", INT8),
    "rpm": ("--tenant", "limited", "--rpm", "12"),
    # Refills one request every 10 s: what a call takes shows in the next answer's remaining count.
    "slow-refill": ("--tenant", "refill", "--rpm", "6"),
    "rpm-sibling": ("--tenant", "limited"),
    "tpm": ("--tenant", "tokens", "--tpm", "40"),
    "shared-1": ("--tenant", "shared"),
    "shared-2": ("--tenant", "shared"),
    "metered": ("--tenant", "metered"),
    "paced": ("--tenant", "paced", "--tpm", "120"),
}


def admin_cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "service.admin", "--data-dir", str(data_dir), *args]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done


def create_key(data_dir: Path, name: str, *flags: str) -> str:
    token = admin_cli(data_dir, "keys", "create", "--name", name, *flags).stdout.strip()
    assert token.startswith("sk-") and len(token) > 50
    return token


@pytest.fixture(scope="module")
def stack(served_repo, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("access-data")
    keys = {name: create_key(data_dir, name, *flags) for name, flags in KEYS.items()}
    admin_cli(data_dir, "tenants", "set", "shared", "--rpm", "4")
    args = ("--data-dir", str(data_dir), "--webhook-allow-private", "true", "--job-chunk-size", "2")
    with (
        ServerProcess(served_repo, *args) as server,
        EnvoyProcess(server.port, tmp_path_factory.mktemp("envoy-access")) as envoy,
    ):
        yield server, envoy, keys, data_dir


def client(stack, key: str, **kwargs) -> OpenAI:
    _, envoy, _, _ = stack
    return OpenAI(base_url=f"{envoy.base_url}/v1", api_key=key, max_retries=kwargs.pop("max_retries", 0), **kwargs)


def rest(stack, method: str, path: str, key: str | None, body: dict | None = None):
    headers = {"authorization": f"Bearer {key}"} if key else {}
    status, response_headers, raw = http(stack[1], method, path, body, headers)
    return status, response_headers, json.loads(raw) if raw else None


def embed(stack, key: str | None, text: str = "hello world", model: str = FP32):
    return rest(stack, "POST", "/v1/embeddings", key, {"model": model, "input": text})


def wait_for(predicate, timeout: float = 15.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if value := predicate():
            return value
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def metadata(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


# --- authentication ---------------------------------------------------------------------------------------------


def test_missing_and_unknown_keys_get_openai_401(stack):
    status, _, body = embed(stack, None)
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
    assert body["error"]["type"] == "authentication_error" and "didn't provide an API key" in body["error"]["message"]

    wrong = "sk-000000000000-" + "x" * 43
    with pytest.raises(openai.AuthenticationError) as caught:
        client(stack, wrong).embeddings.create(model=FP32, input="hi")
    error = caught.value
    assert error.status_code == 401 and error.code == "invalid_api_key"
    assert "sk-000***xxxx" in error.message and wrong not in error.message  # masked, never the whole key

    real = stack[2]["acme"]
    tampered = real[:-4] + ("AAAA" if not real.endswith("AAAA") else "BBBB")
    with pytest.raises(openai.AuthenticationError):
        client(stack, tampered).embeddings.create(model=FP32, input="hi")
    assert real not in stack[0].log and tampered not in stack[0].log  # keys are never logged


def test_grpc_needs_the_key_in_metadata_but_health_does_not(stack):
    server, _, keys, _ = stack
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.EmbeddingServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.Embed(pb.EmbedRequest(model=FP32, inputs=["hi"]), timeout=30)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        reply, call = stub.Embed.with_call(
            pb.EmbedRequest(model=FP32, inputs=["hi"]), metadata=metadata(keys["acme"]), timeout=30
        )
        assert len(reply.embeddings[0].values) == 384
        assert "x-ratelimit-remaining-requests" in dict(call.initial_metadata())
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    status, _, body = rest(stack, "GET", "/health", None)
    assert status == 200 and body["status"] == "SERVING"


def test_grpcurl_with_the_key_as_a_header(stack):
    server, _, keys, _ = stack
    grpcurl = str(Path(sys.executable).parent / "grpcurl")
    listed = subprocess.run([grpcurl, "-plaintext", server.address, "list"], capture_output=True, text=True, timeout=30)
    assert "embeddings.v1.AdminService" in listed.stdout  # reflection needs no key
    request = json.dumps({"model": FP32, "inputs": ["hi"]})
    command = [grpcurl, "-plaintext", "-d", request, server.address, "embeddings.v1.EmbeddingService/Embed"]
    refused = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert refused.returncode != 0 and "Unauthenticated" in refused.stderr and "invalid_api_key" in refused.stderr
    command[1:1] = ["-H", f"authorization: Bearer {keys['acme']}"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["usage"]["prompt_tokens"] > 0


def test_keys_made_revoked_and_rotated_by_the_cli_apply_to_the_running_server(stack):
    _, _, _, data_dir = stack
    token = create_key(data_dir, "late", "--tenant", "late")
    wait_for(lambda: embed(stack, token)[0] == 200)  # picked up without a restart
    key_id = token.split("-")[1]
    rotated = admin_cli(data_dir, "keys", "rotate", key_id).stdout.strip()
    assert rotated.startswith(f"sk-{key_id}-") and rotated != token
    wait_for(lambda: embed(stack, token)[0] == 401)
    assert embed(stack, rotated)[0] == 200
    admin_cli(data_dir, "keys", "revoke", key_id)
    _, _, body = wait_for(lambda: (answer := embed(stack, rotated))[0] == 401 and answer)
    assert body["error"]["code"] == "invalid_api_key"
    listed = json.loads(admin_cli(data_dir, "--json", "keys", "list", "--tenant", "late").stdout)
    assert [k["id"] for k in listed] == [key_id] and listed[0]["revoked_at"] and "secret_hash" not in listed[0]
    assert rotated not in json.dumps(listed)


# --- models -----------------------------------------------------------------------------------------------------


def test_a_key_sees_and_uses_only_its_models(stack):
    server, _, keys, _ = stack
    restricted = client(stack, keys["int8-only"])
    assert len(restricted.embeddings.create(model=INT8, input="hi").data[0].embedding) == 384
    for name in (FP32, "sentence-transformers/all-MiniLM-L6-v2"):
        with pytest.raises(openai.NotFoundError) as caught:
            restricted.embeddings.create(model=name, input="hi")
        assert caught.value.code == "model_not_found" and caught.value.param == "model"
        assert "does not exist or you do not have access to it" in caught.value.message
    assert [m.id for m in restricted.models.list()] == [INT8]
    with pytest.raises(openai.NotFoundError):
        restricted.models.retrieve(FP32)
    assert {m.id for m in client(stack, keys["acme"]).models.list()} >= {FP32, INT8}
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.EmbeddingServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.Embed(pb.EmbedRequest(model=FP32, inputs=["hi"]), metadata=metadata(keys["int8-only"]), timeout=30)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        listed = stub.ListModels(pb.ListModelsRequest(), metadata=metadata(keys["int8-only"]), timeout=30)
        assert [m.id for m in listed.data] == [INT8]
    status, _, body = rest(stack, "POST", "/v1/async/embeddings", keys["int8-only"], {"model": FP32, "input": ["x"]})
    assert status == 404 and body["error"]["code"] == "model_not_found"


# --- rate limits ------------------------------------------------------------------------------------------------


def test_every_rest_answer_carries_rate_limit_headers(stack):
    keys = stack[2]
    for status, headers, _ in (
        embed(stack, keys["acme"]),
        embed(stack, keys["acme"], text=""),  # a 400
        rest(stack, "GET", "/v1/models", keys["acme"]),
        rest(stack, "GET", "/v1/async/jobs", keys["acme"]),
    ):
        assert status in (200, 400)
        assert headers["x-ratelimit-limit-requests"] == "3000" and headers["x-ratelimit-limit-tokens"] == "1000000"
        # 3000 a minute refill one every 20 ms; a refused call (the 400) takes none.
        assert 0 <= int(headers["x-ratelimit-remaining-requests"]) <= 3000
        assert 0 < int(headers["x-ratelimit-remaining-tokens"]) <= 1000000
        assert DURATION.match(headers["x-ratelimit-reset-requests"]), headers
        assert DURATION.match(headers["x-ratelimit-reset-tokens"]), headers
        assert not any(name.startswith("grpc-") for name in headers)


def test_a_call_takes_one_request_and_a_refused_call_none(stack):
    """On a fresh bucket of 6 that refills one every 10 s: the first call leaves exactly 5 (nothing can refill a
    full bucket); the 400 after it leaves at least 5 whatever the time between them (refills only add)."""
    key = stack[2]["slow-refill"]
    status, headers, _ = embed(stack, key)
    assert status == 200 and headers["x-ratelimit-limit-requests"] == "6"
    assert headers["x-ratelimit-remaining-requests"] == "5"
    status, headers, _ = embed(stack, key, text="")
    assert status == 400 and int(headers["x-ratelimit-remaining-requests"]) >= 5


def test_429_names_the_limit_and_the_sdk_retries_after_the_advertised_wait(stack):
    keys = stack[2]
    for _ in range(40):
        status, headers, body = embed(stack, keys["rpm"])
        if status == 429:
            break
        assert status == 200
    assert status == 429, "the requests-per-minute limit never applied"
    error = body["error"]
    assert error["code"] == "rate_limit_exceeded" and error["type"] == "rate_limit_error"
    assert "requests per min (RPM)" in error["message"] and "Limit 12" in error["message"]
    assert headers["x-ratelimit-remaining-requests"] == "0" and headers["x-ratelimit-limit-requests"] == "12"
    wait_ms = int(headers["retry-after-ms"])
    assert 0 < wait_ms <= 5000 and int(headers["retry-after"]) == -(-wait_ms // 1000)

    statuses: list[int] = []
    hooks = {"response": [lambda response: statuses.append(response.status_code)]}
    sdk = client(stack, keys["rpm"], max_retries=2, http_client=httpx2.Client(event_hooks=hooks))
    result = sdk.embeddings.create(model=FP32, input="after the wait")
    assert len(result.data[0].embedding) == 384
    # Refused at once, then one retry after the advertised wait: it passes (a too-early retry would be refused).
    assert statuses == [429, 200]

    # The limit is the key's: another key of the same tenant is unaffected.
    assert embed(stack, keys["rpm-sibling"])[0] == 200


def test_tokens_per_minute_and_a_request_larger_than_the_limit(stack):
    keys = stack[2]
    statuses: list[int] = []
    hooks = {"response": [lambda response: statuses.append(response.status_code)]}
    sdk = client(stack, keys["tpm"], max_retries=2, http_client=httpx2.Client(event_hooks=hooks))
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.embeddings.create(model=FP32, input="word " * 60)
    assert caught.value.code == "max_tokens_per_request"
    assert "tokens per min (TPM)" in caught.value.message and "Limit 40, Requested 62" in caught.value.message
    assert statuses == [400]  # not retried: waiting would never help

    for _ in range(20):
        status, headers, body = embed(stack, keys["tpm"], text="hello world")  # 4 tokens
        if status == 429:
            break
        assert status == 200
    assert status == 429 and "tokens per min (TPM)" in body["error"]["message"]
    assert int(headers["x-ratelimit-remaining-tokens"]) < 4 and int(headers["retry-after-ms"]) > 0
    # Requests are not what ran out.
    assert int(headers["x-ratelimit-remaining-requests"]) > 0


def test_tenant_limit_applies_across_its_keys(stack):
    keys = stack[2]
    for name in ("shared-1", "shared-1", "shared-1", "shared-2"):
        status, headers, _ = embed(stack, keys[name])
        assert status == 200
    assert headers["x-ratelimit-limit-requests"] == "4"  # the tighter of key (3000) and tenant (4)
    for name in ("shared-2", "shared-1"):
        status, _, body = embed(stack, keys[name])
        assert status == 429 and "on tenant shared" in body["error"]["message"]


def test_a_job_draws_on_the_token_budget_but_leaves_the_reserve_to_interactive_calls(stack):
    key = stack[2]["paced"]  # 120 tokens per minute; jobs leave half of that to interactive calls
    status, _, job = rest(stack, "POST", "/v1/async/embeddings", key, {"model": FP32, "input": ["hello world"] * 20})
    assert status == 200  # 80 tokens in chunks of 2 inputs (8 tokens): more than the 60 above the reserve
    progress = wait_for(
        lambda: (j := rest(stack, "GET", f"/v1/async/jobs/{job['id']}", key)[2])["progress"]["completed"] >= 14 and j
    )
    assert progress["status"] == "in_progress"  # paced by the budget, not failed
    status, headers, _ = embed(stack, key, text="hello world")
    assert status == 200 and int(headers["x-ratelimit-remaining-tokens"]) >= 50  # the reserve was there
    done = wait_for(
        lambda: (j := rest(stack, "GET", f"/v1/async/jobs/{job['id']}", key)[2])["status"] != "in_progress" and j,
        timeout=60,
    )
    assert done["status"] == "completed" and done["usage"]["total_tokens"] == 80


# --- usage ------------------------------------------------------------------------------------------------------


def test_usage_report_equals_what_clients_were_told(stack):
    server, _, keys, data_dir = stack
    sdk = client(stack, keys["metered"])
    told = 0
    for text in ("one", ["two texts", "in one call"], "a somewhat longer sentence to count"):
        told += sdk.embeddings.create(model=FP32, input=text).usage.total_tokens
    told += sdk.embeddings.create(model=INT8, input="int8 too").usage.total_tokens
    with grpc.insecure_channel(server.address) as channel:
        reply = pb_grpc.EmbeddingServiceStub(channel).Embed(
            pb.EmbedRequest(model=FP32, inputs=["over grpc"]), metadata=metadata(keys["metered"]), timeout=30
        )
        told += reply.usage.total_tokens
    status, _, job = rest(
        stack, "POST", "/v1/async/embeddings", keys["metered"], {"model": FP32, "input": ["a", "b c"]}
    )
    assert status == 200
    done = wait_for(
        lambda: (
            (j := rest(stack, "GET", f"/v1/async/jobs/{job['id']}", keys["metered"])[2])["status"] == "completed" and j
        )
    )

    status, _, report = rest(stack, "GET", "/v1/admin/usage?tenant=metered", keys["admin"])
    assert status == 200
    assert report["total_tokens"] == told and report["total_requests"] == 5
    assert report["total_job_requests"] == 1 and report["total_job_tokens"] == done["usage"]["total_tokens"]
    key_id = keys["metered"].split("-")[1]
    assert {(r["key_id"], r["model"]) for r in report["data"]} == {(key_id, FP32), (key_id, INT8)}

    cli = json.loads(admin_cli(data_dir, "--json", "usage", "--tenant", "metered").stdout)
    job_tokens = report["total_job_tokens"]
    assert cli["totals"] == {"requests": 5, "tokens": told, "job_requests": 1, "job_tokens": job_tokens, "cost": "0"}
    with grpc.insecure_channel(server.address) as channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        usage = stub.GetUsage(admin_pb2.GetUsageRequest(tenant="metered"), metadata=metadata(keys["admin"]), timeout=30)
        assert usage.total_tokens == told
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetUsage(admin_pb2.GetUsageRequest(), metadata=metadata(keys["metered"]), timeout=30)
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


# --- admin API ----------------------------------------------------------------------------------------------------


def test_admin_api_creates_rotates_and_revokes_keys(stack):
    keys = stack[2]
    status, _, body = rest(stack, "POST", "/v1/admin/keys", keys["acme"], {"tenant": "x", "name": "nope"})
    assert status == 403 and body["error"]["code"] == "insufficient_permissions"

    status, _, created = rest(
        stack, "POST", "/v1/admin/keys", keys["admin"], {"tenant": "api", "name": "made over rest", "rpm": 7}
    )
    assert status == 200 and created["key"]["tenant"] == "api" and created["key"]["rpm"] == 7
    token = created["token"]
    status, headers, _ = embed(stack, token)
    assert status == 200 and headers["x-ratelimit-limit-requests"] == "7"

    status, _, listed = rest(stack, "GET", "/v1/admin/keys?tenant=api", keys["admin"])
    assert [k["id"] for k in listed["data"]] == [created["key"]["id"]] and token not in json.dumps(listed)

    status, _, rotated = rest(stack, "POST", f"/v1/admin/keys/{created['key']['id']}/rotate", keys["admin"])
    assert status == 200 and rotated["token"] != token
    assert embed(stack, token)[0] == 401 and embed(stack, rotated["token"])[0] == 200

    status, _, tenant = rest(stack, "PUT", "/v1/admin/tenants/api", keys["admin"], {"rpm": 5})
    assert status == 200 and tenant == {"name": "api", "rpm": 5}
    status, headers, _ = embed(stack, rotated["token"])
    assert status == 200 and headers["x-ratelimit-limit-requests"] == "5"  # the tenant's limit is now the tighter

    status, _, revoked = rest(stack, "POST", f"/v1/admin/keys/{created['key']['id']}/revoke", keys["admin"])
    assert status == 200 and revoked["key"]["revoked_at"] > 0
    assert embed(stack, rotated["token"])[0] == 401
    status, _, body = rest(stack, "POST", "/v1/admin/keys/000000000000/rotate", keys["admin"])
    assert status == 404 and body["error"]["code"] == "api_key_not_found"


# --- tenant isolation ---------------------------------------------------------------------------------------------


def test_tenants_cannot_see_or_touch_each_others_jobs_and_webhooks(stack):
    server, _, keys, _ = stack
    acme, globex = keys["acme"], keys["globex"]
    status, _, hook = rest(stack, "POST", "/v1/webhooks", acme, {"url": "http://127.0.0.1:9/hook"})
    assert status == 200
    body = {"model": FP32, "input": ["x"] * 6, "metadata": {"webhook_id": hook["id"]}}
    status, _, job = rest(stack, "POST", "/v1/async/embeddings", acme, body)
    assert status == 200

    for method, path in (
        ("GET", f"/v1/async/jobs/{job['id']}"),
        ("GET", f"/v1/async/jobs/{job['id']}/results"),
        ("POST", f"/v1/async/jobs/{job['id']}/cancel"),
        ("GET", f"/v1/webhooks/{hook['id']}/deliveries"),
        ("DELETE", f"/v1/webhooks/{hook['id']}"),
    ):
        status, _, answer = rest(stack, method, path, globex)
        assert status == 404, (method, path, answer)
    assert job["id"] not in json.dumps(rest(stack, "GET", "/v1/async/jobs", globex)[2])
    assert hook["id"] not in json.dumps(rest(stack, "GET", "/v1/webhooks", globex)[2])
    status, _, answer = rest(stack, "POST", "/v1/async/embeddings", globex, body)  # another tenant's webhook
    assert status == 400 and answer["error"]["param"] == "metadata.webhook_id"

    with grpc.insecure_channel(server.address) as channel:
        stub = jobs_pb2_grpc.JobServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetJob(jobs_pb2.GetJobRequest(id=job["id"]), metadata=metadata(globex), timeout=30)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        mine = stub.GetJob(jobs_pb2.GetJobRequest(id=job["id"]), metadata=metadata(acme), timeout=30)
        assert mine.id == job["id"]
    assert rest(stack, "GET", f"/v1/async/jobs/{job['id']}", acme)[0] == 200
    assert hook["id"] in json.dumps(rest(stack, "GET", "/v1/webhooks", acme)[2])
