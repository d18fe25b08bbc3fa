"""The embedding cache end to end: the real server and Envoy, keys of two tenants, REST and gRPC, Redis for the
shared tier, and a model rebuilt with the real model tool.

What it promises: an input embedded once is served from the cache afterwards (bit-identical vectors, every
option applied after the lookup), identical inputs within a call are embedded once, usage and limits still count
every token (cached ones reported in `usage.prompt_tokens_details.cached_tokens`, inputs in `x-cached-inputs` and
`x-deduplicated-inputs`), tenants never see each other's entries, the in-process tier stays within its bytes, a
dead Redis costs nothing but its hits, and a rebuilt model never gets an old vector.
"""

from __future__ import annotations

import base64
import json
import shutil
import uuid
from pathlib import Path

import grpc
import numpy as np
import pytest
import redis

from service._gen.embeddings.v1 import embeddings_pb2 as pb
from service._gen.embeddings.v1 import embeddings_pb2_grpc as pb_grpc
from service.engine.cache import ENTRY_OVERHEAD_BYTES, LocalVectors, input_keys
from service.engine.tokenize import TokenizedInput
from tests.serving import EnvoyProcess, ServerProcess, free_port, http
from tests.shared_stores import REDIS_URL, temp_redis_prefix
from tests.test_access import admin_cli, create_key, metadata, wait_for
from tests.test_observability import parse_metrics, value

FP32 = "all-minilm-l6-v2"
KEYS = {
    "admin": ("--tenant", "ops", "--admin"),
    "acme": ("--tenant", "acme"),
    "acme-2": ("--tenant", "acme"),
    "globex": ("--tenant", "globex"),
    "counted": ("--tenant", "counted"),
}


def fresh(label: str = "text") -> str:
    """A sentence no earlier call embedded (the session's server caches what other tests sent)."""
    return f"{label} {uuid.uuid4().hex} about caching embeddings"


@pytest.fixture(scope="module")
def stack(model_repo: Path, tmp_path_factory: pytest.TempPathFactory):
    data_dir = tmp_path_factory.mktemp("cache-data")
    keys = {name: create_key(data_dir, name, *flags) for name, flags in KEYS.items()}
    with (
        ServerProcess(model_repo, "--data-dir", str(data_dir), "--models", FP32) as server,
        EnvoyProcess(server.port, tmp_path_factory.mktemp("envoy-cache")) as envoy,
    ):
        yield server, envoy, keys, data_dir


def rest(envoy: EnvoyProcess, key: str, body: dict) -> tuple[int, dict, dict]:
    status, headers, raw = http(envoy, "POST", "/v1/embeddings", body, {"authorization": f"Bearer {key}"})
    return status, headers, json.loads(raw)


def vectors(answer: dict) -> np.ndarray:
    return np.array([np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in answer["data"]])


def embed_b64(envoy: EnvoyProcess, key: str, texts: list[str], **options) -> tuple[dict, np.ndarray]:
    body = {"model": FP32, "input": texts, "encoding_format": "base64", **options}
    status, headers, answer = rest(envoy, key, body)
    assert status == 200, answer
    return headers, vectors(answer)


def cached(headers: dict) -> tuple[int, int]:
    return int(headers["x-cached-inputs"]), int(headers["x-deduplicated-inputs"])


def scrape(envoy: EnvoyProcess, key: str) -> dict:
    status, _, raw = http(envoy, "GET", "/metrics", headers={"authorization": f"Bearer {key}"})
    assert status == 200, raw
    return parse_metrics(raw)


# --- the engine's parts, directly -------------------------------------------------------------------------------


def tokens(ids: list[int], type_ids: list[int] | None = None, prompt_length: int = 0) -> TokenizedInput:
    array = np.array(ids, dtype=np.int64)
    types = np.array(type_ids or [0] * len(ids), dtype=np.int64)
    return TokenizedInput(array, types, len(ids), prompt_length=prompt_length)


def test_keys_name_the_model_the_scope_and_exactly_what_the_model_runs():
    base = tokens([101, 7592, 102])
    variants = [
        input_keys(b"model-a", "tenant:acme", [base]),
        input_keys(b"model-b", "tenant:acme", [base]),  # another model digest (a rebuilt model)
        input_keys(b"model-a", "tenant:globex", [base]),  # another tenant
        input_keys(b"model-a", "tenant:acme", [tokens([101, 7592, 102], [0, 1, 0])]),  # other type ids
        input_keys(b"model-a", "tenant:acme", [tokens([101, 7592, 102], prompt_length=1)]),  # prompt pooled apart
        input_keys(b"model-a", "tenant:acme", [tokens([101, 7592, 2088, 102])]),  # other tokens
    ]
    assert len({key[0] for key in variants}) == len(variants)
    assert input_keys(b"model-a", "tenant:acme", [tokens([101, 7592, 102])]) == variants[0]


def test_local_tier_evicts_least_recently_used_within_its_bytes():
    entry = bytes(1536)
    local = LocalVectors(3 * (len(entry) + ENTRY_OVERHEAD_BYTES))
    for key in (b"a", b"b", b"c"):
        local.put(key, entry)
    assert local.get(b"a") == entry  # a is now the most recently used
    local.put(b"d", entry)
    assert local.get(b"b") is None and local.get(b"a") == entry and local.get(b"d") == entry
    assert len(local) == 3 and local.bytes <= local.max_bytes and local.evictions == 1
    local.put(b"huge", bytes(local.max_bytes))  # larger than the whole bound: never stored, nothing evicted
    assert local.get(b"huge") is None and len(local) == 3


# --- through the server -----------------------------------------------------------------------------------------


def test_a_repeated_input_is_served_from_the_cache_bit_identical(stack):
    _, envoy, keys, _ = stack
    texts = [fresh("repeat")]
    status, first_headers, first = rest(envoy, keys["acme"], {"model": FP32, "input": texts})
    status2, second_headers, second = rest(envoy, keys["acme"], {"model": FP32, "input": texts})
    assert status == status2 == 200
    assert cached(first_headers) == (0, 0) and first["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}
    assert cached(second_headers) == (1, 0)
    tokens_used = first["usage"]["prompt_tokens"]
    assert second["usage"] == {  # every token still counted; the cached ones said apart
        "prompt_tokens": tokens_used,
        "total_tokens": tokens_used,
        "prompt_tokens_details": {"cached_tokens": tokens_used},
    }
    assert first["data"] == second["data"]  # the same float32 values, printed the same


def test_identical_inputs_in_one_call_are_embedded_once(stack):
    _, envoy, keys, _ = stack
    a, b = fresh("dup-a"), fresh("dup-b")
    before = scrape(envoy, keys["admin"])
    headers, got = embed_b64(envoy, keys["acme"], [a, b, a, a, b])
    after = scrape(envoy, keys["admin"])
    assert cached(headers) == (0, 3)
    assert np.array_equal(got[0], got[2]) and np.array_equal(got[0], got[3]) and np.array_equal(got[1], got[4])
    assert not np.array_equal(got[0], got[1])
    misses = value(after, "embeddings_cache_misses_total", model=FP32) - value(
        before, "embeddings_cache_misses_total", model=FP32
    )
    repeats = value(after, "embeddings_deduplicated_inputs_total", model=FP32) - value(
        before, "embeddings_deduplicated_inputs_total", model=FP32
    )
    assert (misses, repeats) == (2, 3)
    inputs_run = value(after, "embeddings_batch_size_sum", model=FP32) - value(
        before, "embeddings_batch_size_sum", model=FP32
    )
    assert inputs_run == 2  # what reached the model
    # The same call again: all five from the cache (two entries), each input's tokens counted.
    again, vectors_again = embed_b64(envoy, keys["acme"], [a, b, a, a, b])
    assert cached(again) == (5, 0) and np.array_equal(vectors_again, got)


def test_every_option_applies_to_a_cached_vector(stack):
    """The cache keeps the pooled vector: normalization, shortening and compact types are applied after it, so a
    hit equals what the model itself gives (a miss of another tenant) for every option."""
    _, envoy, keys, _ = stack
    text = fresh("options")
    assert cached(embed_b64(envoy, keys["acme"], [text])[0]) == (0, 0)  # fills acme's entry
    for number, options in enumerate(
        ({"normalize": False}, {"encoding_format": "int8"}, {"encoding_format": "ubinary"})
    ):
        body = {"model": FP32, "input": [text], **options}
        status, hit_headers, hit = rest(envoy, keys["acme"], body)
        status2, other_headers, other = rest(envoy, keys["globex"], body)  # globex's own entry, made the first time
        assert status == status2 == 200, (hit, other)
        assert cached(hit_headers) == (1, 0) and cached(other_headers) == (min(number, 1), 0), options
        assert hit["data"] == other["data"], options


def test_tenants_never_share_entries_but_keys_of_one_tenant_do(stack):
    _, envoy, keys, _ = stack
    text = fresh("tenant")
    assert cached(embed_b64(envoy, keys["acme"], [text])[0]) == (0, 0)
    assert cached(embed_b64(envoy, keys["globex"], [text])[0]) == (0, 0)  # another tenant: a miss
    assert cached(embed_b64(envoy, keys["acme-2"], [text])[0]) == (1, 0)  # another key of acme: a hit


def test_grpc_reports_cached_tokens_and_headers(stack):
    server, _, keys, _ = stack
    text = fresh("grpc")
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.EmbeddingServiceStub(channel)
        replies = []
        for _ in range(2):
            reply, call = stub.Embed.with_call(
                pb.EmbedRequest(model=FP32, inputs=[text, text]), metadata=metadata(keys["acme"]), timeout=30
            )
            replies.append((reply, dict(call.trailing_metadata())))
    (first, first_meta), (second, second_meta) = replies
    assert (first_meta["x-cached-inputs"], first_meta["x-deduplicated-inputs"]) == ("0", "1")
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    assert (second_meta["x-cached-inputs"], second_meta["x-deduplicated-inputs"]) == ("2", "0")
    assert second.usage.prompt_tokens_details.cached_tokens == second.usage.prompt_tokens == first.usage.prompt_tokens
    assert list(second.embeddings[0].values) == list(first.embeddings[0].values) == list(first.embeddings[1].values)


def test_usage_counts_every_token_cached_or_not(stack):
    _, envoy, keys, data_dir = stack
    text = fresh("usage")
    told = 0
    for _ in range(3):
        status, _, answer = rest(envoy, keys["counted"], {"model": FP32, "input": [text, text]})
        assert status == 200
        told += answer["usage"]["total_tokens"]
    usage = wait_for(
        lambda: (
            (out := json.loads(admin_cli(data_dir, "--json", "usage", "--tenant", "counted").stdout))
            and out["totals"]["tokens"] == told
            and out
        )
    )
    assert usage["totals"]["requests"] == 3


def test_the_cache_can_be_turned_off(model_repo: Path, tmp_path: Path):
    args = ("--models", FP32, "--cache-bytes", "0")
    with ServerProcess(model_repo, *args) as server, EnvoyProcess(server.port, tmp_path) as envoy:
        text = fresh("off")
        for _ in range(2):
            status, headers, answer = rest(envoy, "unused", {"model": FP32, "input": [text, text]})
            assert status == 200 and cached(headers) == (0, 0)
            assert answer["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}


def test_the_in_process_tier_stays_within_its_bytes(model_repo: Path, tmp_path: Path):
    bound = 20 * (384 * 4 + ENTRY_OVERHEAD_BYTES)
    args = ("--models", FP32, "--cache-bytes", str(bound))
    with ServerProcess(model_repo, *args) as server, EnvoyProcess(server.port, tmp_path) as envoy:
        texts = [fresh(f"bounded {i}") for i in range(50)]
        for start in range(0, 50, 10):
            embed_b64(envoy, "unused", texts[start : start + 10])
        _, _, raw = http(envoy, "GET", "/metrics")
        samples = parse_metrics(raw)
        assert samples[("embeddings_cache_bytes", frozenset())] <= bound
        assert samples[("embeddings_cache_entries", frozenset())] == 20
        assert samples[("embeddings_cache_evictions_total", frozenset())] == 30
        assert cached(embed_b64(envoy, "unused", texts[-1:])[0]) == (1, 0)  # the newest kept
        assert cached(embed_b64(envoy, "unused", texts[:1])[0]) == (0, 0)  # the oldest evicted


def test_a_dead_redis_costs_only_its_hits(model_repo: Path, tmp_path: Path):
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    args = ("--models", FP32, "--cache-shared", "true", "--redis-url", dead)
    with ServerProcess(model_repo, *args) as server, EnvoyProcess(server.port, tmp_path) as envoy:
        text = fresh("dead-redis")
        assert cached(embed_b64(envoy, "unused", [text])[0]) == (0, 0)
        assert cached(embed_b64(envoy, "unused", [text])[0]) == (1, 0)  # the in-process tier still works
        assert "embedding cache: Redis" in server.log


# --- the shared tier and a rebuilt model -------------------------------------------------------------------------


def perturb_weights(source: Path) -> None:
    """Change the source model's weights a little, as retraining would (the same architecture and tokenizer)."""
    from safetensors.numpy import load_file, save_file

    weights_file = next(source.rglob("*.safetensors"))
    weights = load_file(str(weights_file))
    name = next(n for n in weights if n.endswith("word_embeddings.weight"))
    weights[name] = (weights[name] * 1.5).astype(weights[name].dtype)
    save_file(weights, str(weights_file), metadata={"format": "pt"})


def import_model(source: Path, repo: Path) -> dict:
    import subprocess
    import sys

    from tests.serving import ROOT

    command = [sys.executable, "-m", "tools.modelrepo", "import", str(source), "--repo", str(repo), "--id", "tiny"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads((repo / "tiny" / "manifest.json").read_text())


def grpc_embed(server: ServerProcess, text: str) -> tuple[np.ndarray, str]:
    with grpc.insecure_channel(server.address) as channel:
        reply, call = pb_grpc.EmbeddingServiceStub(channel).Embed.with_call(
            pb.EmbedRequest(model="tiny", inputs=[text]), timeout=60
        )
    return np.array(reply.embeddings[0].values, dtype=np.float32), dict(call.trailing_metadata())["x-cached-inputs"]


def test_the_shared_tier_outlives_a_replica_and_a_rebuilt_model_misses(tiny_sources: dict[str, Path], tmp_path: Path):
    source = tmp_path / "source"
    shutil.copytree(tiny_sources["mean"], source)  # retrained below
    repo = tmp_path / "repo"
    before = import_model(source, repo)
    with temp_redis_prefix() as prefix:
        # A generous read deadline: a loaded test machine must not turn a hit into a miss.
        args = ("--cache-shared", "true", "--redis-url", REDIS_URL, "--cache-redis-prefix", prefix)
        args = (*args, "--cache-redis-timeout-s", "5")
        text = "the quick brown fox jumps over the lazy dog"
        with ServerProcess(repo, *args) as first:
            original, hit = grpc_embed(first, text)
            assert hit == "0"
            wait_for(lambda: redis.Redis.from_url(REDIS_URL).keys(f"{prefix}*"))  # written in the background
        with ServerProcess(repo, *args) as second:  # a new process: only Redis can know the vector
            again, hit = grpc_embed(second, text)
            assert hit == "1" and np.array_equal(again, original), second.log

        perturb_weights(source)
        after = import_model(source, repo)  # the real tool rebuilds it: same id, other weights
        assert after["provenance"]["fingerprint"] != before["provenance"]["fingerprint"]
        with ServerProcess(repo, *args) as third:
            rebuilt, hit = grpc_embed(third, text)
            assert hit == "0"  # never the old model's vector
            assert not np.allclose(rebuilt, original, atol=1e-3)
            assert grpc_embed(third, text)[1] == "1"
