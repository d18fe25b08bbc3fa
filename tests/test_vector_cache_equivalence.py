"""The embedding cache changes nothing a caller gets: the same calls to a server with the cache (miss, then hit), one
without it (`--cache-bytes 0`) and one whose bound is smaller than one entry answer the same JSON, for every option
(shortened sizes, normalization, prompts, compact types, truncation, token ids, duplicates), and a model that leaves
its prompt out of pooling never gets the vector of the same token ids pooled with the prompt.

tiny-bert (CLS, unnormalized, prefixes, sizes 8 and 16) and tiny-noprompt (mean, prompts excluded from pooling) are
tiny random BERTs served from their plain graphs (`--solo-graph false`): vectors of one input then do not depend on
what they are batched with, so the answers are exact (the fused solo graph of lone batches differs from the plain
graph in the last float bits, and merging duplicates turns a call into a lone batch).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import bpe_openai
import pytest

from tests.serving import ROOT, EnvoyProcess, ServerProcess, http

TINY, NOPROMPT = "tiny-bert", "tiny-noprompt"
SENTENCE = "the quick brown fox jumps over the lazy dog"
LONG = " ".join(["the quick brown fox jumps over the lazy dog ."] * 12)  # over tiny-bert's 48 tokens


def import_without_prompt(source: Path, repo: Path, work: Path) -> None:
    """The tiny mean-pooled model with prompts, re-saved as sentence-transformers saves a model whose Pooling has
    include_prompt=false (as INSTRUCTOR-style models do), imported by the real tool."""
    copy = work / "tiny-noprompt-source"
    shutil.copytree(source, copy)
    config_path = next(copy.glob("*_Pooling/config.json"))
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config_path.write_text(json.dumps({**config, "include_prompt": False}), encoding="utf-8")
    command = [sys.executable, "-m", "tools.modelrepo", "import", str(copy), "--repo", str(repo), "--id", NOPROMPT]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads((repo / NOPROMPT / "manifest.json").read_text(encoding="utf-8"))["include_prompt"] is False


@pytest.fixture(scope="module")
def gateways(served_repo: Path, tiny_sources: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    """{name: Envoy} of three servers of the tiny models: the cache on, off, and bounded below one entry."""
    repo = tmp_path_factory.mktemp("equivalence-models")
    (repo / TINY).symlink_to((served_repo / TINY).resolve())
    import_without_prompt(tiny_sources["mean"], repo, tmp_path_factory.mktemp("noprompt"))
    flags = {"on": (), "off": ("--cache-bytes", "0"), "crumb": ("--cache-bytes", "100")}
    servers, envoys = [], {}
    try:
        for name, extra in flags.items():
            server = ServerProcess(repo, "--models", f"{TINY},{NOPROMPT}", "--solo-graph", "false", *extra).start()
            servers.append(server)
            envoys[name] = EnvoyProcess(server.port, tmp_path_factory.mktemp(f"envoy-{name}")).start()
        yield envoys
    finally:
        for envoy in envoys.values():
            envoy.stop()
        for server in servers:
            server.stop()


def call(envoy: EnvoyProcess, body: dict) -> tuple[int, dict, dict]:
    """(status, the cache's headers as ints, the answer less usage.prompt_tokens_details)."""
    status, headers, raw = http(envoy, "POST", "/v1/embeddings", body)
    answer = json.loads(raw)
    details = answer.get("usage", {}).pop("prompt_tokens_details", {"cached_tokens": 0})
    reuse = {name: int(headers.get(f"x-{name}-inputs", 0)) for name in ("cached", "deduplicated")}
    return status, {**reuse, "cached_tokens": details["cached_tokens"]}, answer


CASES = {
    "plain": {"model": TINY, "input": SENTENCE},
    "dimensions 8": {"model": TINY, "input": SENTENCE, "dimensions": 8},
    "dimensions 16 normalized": {"model": TINY, "input": SENTENCE, "dimensions": 16, "normalize": True},
    "normalize false": {"model": TINY, "input": SENTENCE, "normalize": False},
    "query prefix": {"model": TINY, "input": SENTENCE, "input_type": "query"},
    "document prefix": {"model": TINY, "input": SENTENCE, "input_type": "document"},
    "binary": {"model": TINY, "input": SENTENCE, "encoding_format": "binary"},
    "uint8 16 base64": {
        "model": TINY,
        "input": SENTENCE,
        "dimensions": 16,
        "encoding_format": "base64",
        "embedding_type": "uint8",
    },
    "truncated": {"model": TINY, "input": LONG, "truncate": True},
    "refused": {"model": TINY, "input": LONG, "truncate": False},
    "token ids": {"model": TINY, "input": bpe_openai.get_encoding("cl100k_base").encode(SENTENCE)},
    "prompt typed": {"model": NOPROMPT, "input": f"query: {SENTENCE}"},
    "prompt added": {"model": NOPROMPT, "input": SENTENCE, "input_type": "query"},
    "duplicates in order": {"model": TINY, "input": ["the cat", "a dog", "the cat", "the mat", "a dog"]},
    "duplicates int8": {
        "model": TINY,
        "input": ["the cat", "a dog", "the cat", "the mat", "a dog"],
        "encoding_format": "int8",
    },
}


def test_every_option_answers_what_the_uncached_server_answers(gateways):
    for name, body in CASES.items():
        status, _, expected = call(gateways["off"], body)
        for server in ("on", "crumb"):
            for attempt in range(2):  # a miss, then (cache on) a hit
                got_status, _, got = call(gateways[server], body)
                assert (got_status, got) == (status, expected), (name, server, attempt)
        assert status == (400 if name == "refused" else 200), (name, expected)


def test_what_each_server_says_it_reused(gateways):
    text = "what is the vector of the short sentence"
    body = {"model": TINY, "input": [text, text, "the mat", text]}
    tokens, mat = (
        call(gateways["off"], {"model": TINY, "input": t})[2]["usage"]["prompt_tokens"] for t in (text, "the mat")
    )
    assert call(gateways["off"], body)[1] == {"cached": 0, "deduplicated": 0, "cached_tokens": 0}  # off: all run
    assert call(gateways["crumb"], body)[1] == {"cached": 0, "deduplicated": 2, "cached_tokens": 0}  # nothing kept
    assert call(gateways["on"], body)[1]["deduplicated"] == 2
    assert call(gateways["on"], body)[1] == {"cached": 4, "deduplicated": 0, "cached_tokens": 3 * tokens + mat}
    # The same token ids reached as text or as LangChain's cl100k ids: one entry.
    assert call(gateways["on"], {"model": TINY, "input": text})[1]["cached"] == 1
    ids = bpe_openai.get_encoding("cl100k_base").encode(text)
    assert call(gateways["on"], {"model": TINY, "input": ids})[1]["cached"] == 1


def test_a_prompt_left_out_of_pooling_is_part_of_the_key(gateways):
    """'query: X' typed and X with input_type query run the same token ids; only the second pools without the
    prompt, so the second must not be served the first's vector."""
    typed = {"model": NOPROMPT, "input": "query: where is the cat"}
    added = {"model": NOPROMPT, "input": "where is the cat", "input_type": "query"}
    _, first, typed_answer = call(gateways["on"], typed)
    _, second, added_answer = call(gateways["on"], added)
    assert (first["cached"], second["cached"]) == (0, 0)
    assert typed_answer["usage"] == added_answer["usage"]  # the same tokens...
    assert typed_answer["data"] != added_answer["data"]  # ...pooled apart
    assert added_answer == call(gateways["off"], added)[2]


def test_the_most_inputs_a_call_may_carry_all_one_text(gateways):
    body = {"model": TINY, "input": ["the lazy dog sat on the mat"] * 2048, "encoding_format": "base64"}
    single = call(gateways["off"], {**body, "input": body["input"][0]})[2]
    for server in ("on", "crumb", "off"):
        status, reuse, answer = call(gateways[server], body)
        assert status == 200, answer
        assert reuse["deduplicated"] == (0 if server == "off" else 2047), server
        assert answer["usage"]["prompt_tokens"] == 2048 * single["usage"]["prompt_tokens"]  # every input counted
        assert [item["index"] for item in answer["data"]] == list(range(2048))
        assert {item["embedding"] for item in answer["data"]} == {single["data"][0]["embedding"]}
