"""Charge-back and per-user limits end to end: the real server and Envoy, keys made by the admin CLI and the admin
API, the openai SDK, raw REST and gRPC.

Prices: a model's price per million tokens comes from the server's `model_prices` setting, else its manifest;
`/v1/models` and ListModels show it, and usage reports cost each row's tokens at the price they were used at.
Per-user limits: OpenAI's `user` names an end user inside a key; a key (or its tenant, or the server) may limit each
user, enforced and reported like the key's and the tenant's limits. Usage can be grouped by user.

The models: all-MiniLM-L6-v2 (priced by the setting) and three null-backend models with MiniLM's tokenizer (token
counts are real): one priced by its manifest, one whose manifest price the setting overrides, one unpriced.
"""

from __future__ import annotations

import json
import shutil
from decimal import Decimal
from pathlib import Path

import grpc
import openai
import pytest
from openai import OpenAI

from service._gen.embeddings.v1 import admin_pb2, admin_pb2_grpc
from service._gen.embeddings.v1 import embeddings_pb2 as pb
from service._gen.embeddings.v1 import embeddings_pb2_grpc as pb_grpc
from tests.serving import EnvoyProcess, ServerProcess, http
from tests.test_access import admin_cli, create_key, metadata, wait_for

MINILM, PRICED, OVERRIDDEN, FREE = "all-minilm-l6-v2", "priced-null", "overridden-null", "free-null"
PRICES = {MINILM: Decimal("0.02"), PRICED: Decimal("0.5"), OVERRIDDEN: Decimal("0.25")}
CURRENCY = "EUR"
MILLION = Decimal(1_000_000)
KEYS = {
    "admin": ("--tenant", "ops", "--admin"),
    "billed": ("--tenant", "billing"),
    "per-user": ("--tenant", "users", "--user-rpm", "1"),
    "user-tokens": ("--tenant", "users", "--user-tpm", "10"),
    "by-user": ("--tenant", "grouped", "--user-rpm", "1000"),
}


def null_model(repo: Path, tokenizer: Path, model_id: str, price: str | None) -> None:
    """A null-backend model (fixed vectors, real tokenizer), priced by its manifest when `price` is given."""
    target = repo / model_id
    target.mkdir()
    shutil.copy(tokenizer, target / "tokenizer.json")
    manifest: dict[str, object] = {"id": model_id, "dimensions": 8, "max_input_tokens": 256, "backend": "null"}
    if price is not None:
        manifest["price_per_million_tokens"] = price
    (target / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture(scope="module")
def billing_repo(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("billing-models")
    (repo / MINILM).symlink_to(model_repo / MINILM)
    tokenizer = model_repo / MINILM / "tokenizer.json"
    null_model(repo, tokenizer, PRICED, "0.5")
    null_model(repo, tokenizer, OVERRIDDEN, "9")  # the server's setting says 0.25
    null_model(repo, tokenizer, FREE, None)
    return repo


@pytest.fixture(scope="module")
def stack(billing_repo: Path, tmp_path_factory: pytest.TempPathFactory):
    data_dir = tmp_path_factory.mktemp("billing-data")
    keys = {name: create_key(data_dir, name, *flags) for name, flags in KEYS.items()}
    args = (
        *("--data-dir", str(data_dir), "--job-chunk-size", "2", "--currency", CURRENCY),
        *("--model-prices", f"{MINILM}=0.02,{OVERRIDDEN}=0.25"),
    )
    with (
        ServerProcess(billing_repo, *args) as server,
        EnvoyProcess(server.port, tmp_path_factory.mktemp("envoy-billing")) as envoy,
    ):
        yield server, envoy, keys, data_dir


def rest(stack, method: str, path: str, key: str, body: dict | None = None):
    status, headers, raw = http(stack[1], method, path, body, {"authorization": f"Bearer {key}"})
    return status, headers, json.loads(raw) if raw else None


def embed(stack, key: str, user: str | None = None, text: str = "hello world", model: str = MINILM):
    body = {"model": model, "input": text, **({"user": user} if user is not None else {})}
    return rest(stack, "POST", "/v1/embeddings", key, body)


def grpc_embed(stack, key: str, user: str = "", model: str = MINILM, text: str = "over grpc"):
    """(reply, initial metadata) of one gRPC Embed call."""
    with grpc.insecure_channel(stack[0].address) as channel:
        reply, call = pb_grpc.EmbeddingServiceStub(channel).Embed.with_call(
            pb.EmbedRequest(model=model, inputs=[text], user=user), metadata=metadata(key), timeout=30
        )
        return reply, dict(call.initial_metadata())


def grpc_usage(stack, **fields) -> admin_pb2.GetUsageResponse:
    with grpc.insecure_channel(stack[0].address) as channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        return stub.GetUsage(admin_pb2.GetUsageRequest(**fields), metadata=metadata(stack[2]["admin"]), timeout=30)


def run_job(stack, key: str, model: str, inputs: list[str], user: str = "") -> dict:
    body = {"model": model, "input": inputs, **({"user": user} if user else {})}
    status, _, job = rest(stack, "POST", "/v1/async/embeddings", key, body)
    assert status == 200, job
    return wait_for(
        lambda: (j := rest(stack, "GET", f"/v1/async/jobs/{job['id']}", key)[2])["status"] == "completed" and j,
        timeout=60,
    )


def cost(tokens: int, model: str) -> Decimal:
    return Decimal(tokens) * PRICES[model] / MILLION if model in PRICES else Decimal(0)


# --- prices -------------------------------------------------------------------------------------------------------


def test_models_show_their_price_and_currency_over_rest_and_grpc(stack):
    key = stack[2]["billed"]
    status, _, listed = rest(stack, "GET", "/v1/models", key)
    assert status == 200
    by_id = {m["id"]: m for m in listed["data"]}
    for model, price in PRICES.items():  # the setting first (overriding a manifest's 9), else the manifest
        assert by_id[model]["price_per_million_tokens"] == float(price) and by_id[model]["currency"] == CURRENCY
    assert "price_per_million_tokens" not in by_id[FREE] and by_id[FREE]["currency"] == CURRENCY  # unpriced
    status, _, one = rest(stack, "GET", f"/v1/models/{PRICED}", key)
    assert status == 200 and one["price_per_million_tokens"] == 0.5

    sdk = OpenAI(base_url=f"{stack[1].base_url}/v1", api_key=key, max_retries=0)
    models = {m.id: m for m in sdk.models.list()}
    assert models[OVERRIDDEN].model_extra["price_per_million_tokens"] == 0.25

    with grpc.insecure_channel(stack[0].address) as channel:
        stub = pb_grpc.EmbeddingServiceStub(channel)
        grpc_models = {m.id: m for m in stub.ListModels(pb.ListModelsRequest(), metadata=metadata(key)).data}
        assert grpc_models[MINILM].price_per_million_tokens == 0.02 and grpc_models[MINILM].currency == CURRENCY
        assert not grpc_models[FREE].HasField("price_per_million_tokens")
        model = stub.GetModel(pb.GetModelRequest(model=OVERRIDDEN), metadata=metadata(key)).model
        assert model.HasField("price_per_million_tokens") and model.price_per_million_tokens == 0.25


def test_usage_reports_cost_per_key_model_and_day_through_rest_grpc_and_the_cli(stack):
    _, _, keys, data_dir = stack
    key = keys["billed"]
    sdk = OpenAI(base_url=f"{stack[1].base_url}/v1", api_key=key, max_retries=0)
    tokens = {MINILM: 0, PRICED: 0, FREE: 0}
    for model in tokens:
        tokens[model] += sdk.embeddings.create(model=model, input=["charged by the token", "twice"]).usage.total_tokens
    tokens[MINILM] += grpc_embed(stack, key)[0].usage.total_tokens
    job = run_job(stack, key, PRICED, ["a job's tokens cost", "the same", "as a call's"])
    job_tokens = job["usage"]["total_tokens"]

    status, _, report = rest(stack, "GET", "/v1/admin/usage?tenant=billing", keys["admin"])
    assert status == 200 and report["currency"] == CURRENCY
    rows = {row["model"]: row for row in report["data"]}
    assert set(rows) == set(tokens)
    expected = {model: cost(n + (job_tokens if model == PRICED else 0), model) for model, n in tokens.items()}
    for model, row in rows.items():
        assert row["tokens"] == tokens[model] and row["cost"] == pytest.approx(float(expected[model]), rel=1e-12)
    assert rows[PRICED]["job_tokens"] == job_tokens and rows[FREE]["cost"] == 0
    assert report["total_cost"] == pytest.approx(float(sum(expected.values())), rel=1e-12)

    over_grpc = grpc_usage(stack, tenant="billing")
    assert over_grpc.currency == CURRENCY and over_grpc.total_cost == pytest.approx(report["total_cost"], rel=1e-12)
    assert {r.model: r.cost for r in over_grpc.data} == {m: r["cost"] for m, r in rows.items()}

    # The CLI reads the store (written within a second): exact decimals.
    cli = wait_for(
        lambda: (
            (
                out := json.loads(
                    admin_cli(data_dir, "--json", "--currency", CURRENCY, "usage", "--tenant", "billing").stdout
                )
            )
            and out["totals"]["tokens"] == sum(tokens.values())
            and out["totals"]["job_tokens"] == job_tokens
            and out
        )
    )
    assert cli["currency"] == CURRENCY and cli["totals"]["cost"] == format(sum(expected.values()), "f")
    assert {row["model"]: row["cost"] for row in cli["data"]} == {m: format(c, "f") for m, c in expected.items()}
    text = admin_cli(data_dir, "--currency", CURRENCY, "usage", "--tenant", "billing").stdout
    assert f"cost ({CURRENCY})" in text and format(sum(expected.values()), "f") in text.splitlines()[-1]


def test_usage_is_costed_at_the_price_of_the_time_of_use(billing_repo: Path, tmp_path: Path):
    """A price changed between two runs of the server: the report costs each run's tokens at its own price."""
    data_dir = tmp_path / "data"
    admin = create_key(data_dir, "admin", "--tenant", "ops", "--admin")
    told = []
    for price in ("1", "3"):
        with ServerProcess(billing_repo, "--data-dir", str(data_dir), "--models", PRICED,
                           "--model-prices", f"{PRICED}={price}") as server:  # fmt: skip
            reply = grpc_embed((server, None, {"admin": admin}), admin, model=PRICED, text="a price per period")[0]
            told.append(reply.usage.total_tokens)
            with grpc.insecure_channel(server.address) as channel:
                model = pb_grpc.EmbeddingServiceStub(channel).GetModel(
                    pb.GetModelRequest(model=PRICED), metadata=metadata(admin), timeout=30
                )
            assert model.model.price_per_million_tokens == float(price)
    report = json.loads(admin_cli(data_dir, "--json", "usage").stdout)
    assert report["totals"]["tokens"] == sum(told)
    assert report["totals"]["cost"] == format(Decimal(told[0]) * 1 / MILLION + Decimal(told[1]) * 3 / MILLION, "f")


# --- per-user limits ----------------------------------------------------------------------------------------------


def test_each_end_user_of_a_key_has_its_own_requests_limit_over_rest(stack):
    keys = stack[2]
    key, key_id = keys["per-user"], keys["per-user"].split("-")[1]
    status, headers, _ = embed(stack, key, user="alice")
    assert status == 200
    # The tightest limit that applies: the user's 1 a minute, not the key's 3000.
    assert headers["x-ratelimit-limit-requests"] == "1" and headers["x-ratelimit-remaining-requests"] == "0"
    status, headers, body = embed(stack, key, user="alice")
    assert status == 429 and body["error"]["code"] == "rate_limit_exceeded"
    assert f"on user 'alice' of key {key_id}" in body["error"]["message"] and "Limit 1" in body["error"]["message"]
    assert headers["x-ratelimit-limit-requests"] == "1" and int(headers["retry-after-ms"]) > 0
    status, headers, _ = embed(stack, key, user="bob")  # another user of the key: a bucket of its own
    assert status == 200 and headers["x-ratelimit-remaining-requests"] == "0"
    status, headers, _ = embed(stack, key)  # no user: no per-user limit
    assert status == 200 and headers["x-ratelimit-limit-requests"] == "3000"

    sdk = OpenAI(base_url=f"{stack[1].base_url}/v1", api_key=key, max_retries=0)
    assert len(sdk.embeddings.create(model=MINILM, input="x", user="erin").data) == 1
    with pytest.raises(openai.RateLimitError) as caught:
        sdk.embeddings.create(model=MINILM, input="x", user="erin")
    assert caught.value.code == "rate_limit_exceeded"


def test_each_end_user_of_a_key_has_its_own_requests_limit_over_grpc(stack):
    key = stack[2]["per-user"]
    reply, headers = grpc_embed(stack, key, user="carol")
    assert len(reply.embeddings) == 1
    assert headers["x-ratelimit-limit-requests"] == "1" and headers["x-ratelimit-remaining-requests"] == "0"
    with pytest.raises(grpc.RpcError) as caught:
        grpc_embed(stack, key, user="carol")
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "on user 'carol'" in caught.value.details()
    refused = dict(caught.value.initial_metadata())
    assert int(refused["retry-after-ms"]) > 0 and refused["x-ratelimit-limit-requests"] == "1"
    assert len(grpc_embed(stack, key, user="dora")[0].embeddings) == 1


def test_each_end_user_has_its_own_tokens_limit(stack):
    key = stack[2]["user-tokens"]  # 10 tokens a minute per user
    status, _, body = embed(stack, key, user="dan", text="word " * 20)
    assert status == 400 and body["error"]["code"] == "max_tokens_per_request"
    assert "Limit 10, Requested 22" in body["error"]["message"]
    for _ in range(10):
        status, headers, body = embed(stack, key, user="dan")  # 4 tokens
        if status == 429:
            break
        assert status == 200 and headers["x-ratelimit-limit-tokens"] == "10"
    assert status == 429 and "tokens per min (TPM) on user 'dan'" in body["error"]["message"]
    assert int(headers["x-ratelimit-remaining-tokens"]) < 4
    assert embed(stack, key, user="eve")[0] == 200
    with grpc.insecure_channel(stack[0].address) as channel, pytest.raises(grpc.RpcError) as caught:
        pb_grpc.EmbeddingServiceStub(channel).Embed(
            pb.EmbedRequest(model=MINILM, inputs=["word " * 20], user="eve"), metadata=metadata(key), timeout=30
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "Limit 10" in caught.value.details()


def test_a_tenant_sets_per_user_limits_for_its_keys_and_a_key_may_set_its_own(stack):
    admin = stack[2]["admin"]
    status, _, tenant = rest(stack, "PUT", "/v1/admin/tenants/teamco", admin, {"user_rpm": 1})
    assert status == 200 and tenant == {"name": "teamco", "user_rpm": 1}
    status, _, made = rest(stack, "POST", "/v1/admin/keys", admin, {"tenant": "teamco", "name": "team"})
    assert status == 200 and "user_rpm" not in made["key"]
    team = made["token"]
    with grpc.insecure_channel(stack[0].address) as channel:
        created = admin_pb2_grpc.AdminServiceStub(channel).CreateKey(
            admin_pb2.CreateKeyRequest(tenant="teamco", name="exempt", user_rpm=0, user_tpm=50),
            metadata=metadata(admin),
            timeout=30,
        )
    assert created.key.HasField("user_rpm") and created.key.user_rpm == 0 and created.key.user_tpm == 50
    exempt = created.token

    assert embed(stack, team, user="u1")[0] == 200
    status, _, body = embed(stack, team, user="u1")  # the tenant's default applies to its key
    assert status == 429 and "on user 'u1'" in body["error"]["message"]
    for _ in range(3):  # the key's own 0: no per-user requests limit (its 50 tokens a minute per user remain)
        status, headers, _ = embed(stack, exempt, user="u1")
        assert status == 200 and headers["x-ratelimit-limit-tokens"] == "50"
    status, _, listed = rest(stack, "GET", "/v1/admin/keys?tenant=teamco", admin)
    assert [(k["name"], k.get("user_rpm"), k.get("user_tpm")) for k in listed["data"]] == [
        ("team", None, None),
        ("exempt", 0, 50),
    ]


def test_a_user_longer_than_256_characters_is_refused(stack):
    key = stack[2]["billed"]
    assert embed(stack, key, user="u" * 256)[0] == 200
    status, _, body = embed(stack, key, user="u" * 257)
    assert status == 400 and body["error"]["param"] == "user" and "at most 256" in body["error"]["message"]
    with pytest.raises(grpc.RpcError) as caught:
        grpc_embed(stack, key, user="u" * 257)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status, _, body = rest(
        stack, "POST", "/v1/async/embeddings", key, {"model": MINILM, "input": ["x"], "user": "u" * 300}
    )
    assert status == 400 and body["error"]["param"] == "user"


# --- usage by user ------------------------------------------------------------------------------------------------


def test_usage_can_be_grouped_by_user(stack):
    _, _, keys, data_dir = stack
    key = keys["by-user"]  # has per-user limits: its usage records users
    told: dict[str, int] = {}
    for user in ("alice", "alice", "bob", None):
        status, _, body = embed(stack, key, user=user)
        assert status == 200
        told[user or ""] = told.get(user or "", 0) + body["usage"]["total_tokens"]
    told["alice"] += grpc_embed(stack, key, user="alice")[0].usage.total_tokens
    job = run_job(stack, key, MINILM, ["a job", "for one user"], user="jobber")
    assert embed(stack, keys["billed"], user="not-recorded")[0] == 200  # a key without per-user limits

    status, _, grouped = rest(stack, "GET", "/v1/admin/usage?tenant=grouped&group_by_user=true", keys["admin"])
    assert status == 200
    by_user = {row["user"]: row for row in grouped["data"]}
    assert {u: r["tokens"] for u, r in by_user.items() if r["tokens"]} == told
    assert (by_user["alice"]["requests"], by_user["bob"]["requests"], by_user[""]["requests"]) == (3, 1, 1)
    assert by_user["jobber"]["job_requests"] == 1 and by_user["jobber"]["job_tokens"] == job["usage"]["total_tokens"]
    assert by_user["alice"]["cost"] == pytest.approx(float(cost(told["alice"], MINILM)), rel=1e-12)

    status, _, summed = rest(stack, "GET", "/v1/admin/usage?tenant=grouped", keys["admin"])
    assert [(r["user"], r["requests"], r["tokens"]) for r in summed["data"]] == [("", 5, sum(told.values()))]
    assert summed["total_cost"] == pytest.approx(grouped["total_cost"], rel=1e-12)

    over_grpc = grpc_usage(stack, tenant="grouped", group_by_user=True)
    assert {r.user: r.tokens for r in over_grpc.data if r.tokens} == told
    status, _, other = rest(stack, "GET", "/v1/admin/usage?tenant=billing&group_by_user=true", keys["admin"])
    assert {row["user"] for row in other["data"]} == {""}  # not recorded for a key without per-user limits

    cli = wait_for(
        lambda: (
            (out := json.loads(admin_cli(data_dir, "--json", "usage", "--tenant", "grouped", "--by-user").stdout))
            and out["totals"]["job_tokens"] == job["usage"]["total_tokens"]
            and out
        )
    )
    assert {row["user"]: row["tokens"] for row in cli["data"] if row["tokens"]} == told
    text = admin_cli(data_dir, "usage", "--tenant", "grouped", "--by-user").stdout
    assert "jobber" in text and "alice" in text


# --- configuration ------------------------------------------------------------------------------------------------


def test_a_manifest_price_is_an_exact_non_negative_decimal():
    from service.engine.manifest import ManifestError, ModelManifest

    base = {"id": "m", "dimensions": 4, "max_input_tokens": 8}
    assert ModelManifest.from_dict({**base, "price_per_million_tokens": 0.02}).price == Decimal("0.02")  # a number
    priced = ModelManifest.from_dict({**base, "price_per_million_tokens": "0.10"})
    assert priced.price == Decimal("0.1") and json.loads(priced.to_json())["price_per_million_tokens"] == "0.10"
    assert "price_per_million_tokens" not in json.loads(ModelManifest.from_dict(base).to_json())
    for bad in ("-1", "cheap", "NaN", True):
        with pytest.raises(ManifestError, match="price_per_million_tokens"):
            ModelManifest.from_dict({**base, "price_per_million_tokens": bad})


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--model-prices", "all-minilm-l6-v2"), "must look like 'model-id=price'"),
        (("--model-prices", "all-minilm-l6-v2=-0.5"), "0 or more"),
        (("--currency", "U S D"), "currency must be a short code"),
    ],
)
def test_bad_prices_or_currency_stop_the_server_at_start(billing_repo: Path, flags: tuple[str, ...], message: str):
    server = ServerProcess(billing_repo, *flags)
    with pytest.raises(RuntimeError, match="did not start listening"):  # refused before it listens
        server.start(timeout=120)
    assert server.proc is not None and server.proc.returncode == 2 and message in server.log
