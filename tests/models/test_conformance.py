"""Conformance: every architecture x every pooling mode, Dense, Normalize, prompts (with and without the prompt in
pooling), lower-casing and decoders, imported with tools.modelrepo, served by the real server, and compared with
sentence-transformers' own output for the same source directory.

Tiny random models are made here (transformers config classes, no downloads). All of them are imported once and
served by one server; its batching is set to put every input of a request into one batch, so each request is a
batch that mixes lengths (some inputs truncated) and, for decoders, is padded on the other side than
sentence-transformers pads.
"""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import numpy as np
import pytest
from service._gen.embeddings.v1 import embeddings_pb2 as pb
from service._gen.embeddings.v1 import embeddings_pb2_grpc as pb_grpc

from service.engine.manifest import ModelManifest
from tests.models.tiny import (
    ALL_MODES,
    FAMILIES,
    HIDDEN,
    QUERY_INSTRUCTION,
    Pipeline,
    save_network,
    save_pipeline,
)
from tests.serving import ServerProcess
from tools.modelrepo.cli import run as modelrepo

pytestmark = pytest.mark.slow  # every architecture x pooling, imported and served: ~1.5 minutes: `make test-slow`

os.environ["HF_HUB_OFFLINE"] = "1"

MIN_COSINE = 0.9999
TEXTS = [
    "hello world",
    "The Quick BROWN fox jumps over the lazy dog.",
    "what is a vector embedding?",
    "Unknown Wörds become unknown tokens!",
    "the cat sat on the mat " * 8,  # over every limit here: truncated
    "search",
    "how to batch long and short sentence text for the server ? " * 3,  # truncated
    "a",
]
ENCODER_PROMPTS = {"query": "query: ", "document": "passage: "}
DECODER_PROMPTS = {"query": QUERY_INSTRUCTION, "document": ""}
INPUT_TYPES = {"": pb.INPUT_TYPE_UNSPECIFIED, "query": pb.INPUT_TYPE_QUERY, "document": pb.INPUT_TYPE_DOCUMENT}


def pipelines(family: str) -> list[Pipeline]:
    """Per architecture: every pooling mode at once (without the prompt in pooling), and a head with Dense layers
    (a projected and an identity residual), Normalize, prompts and (encoders) do_lower_case."""
    decoder = family == "qwen3"
    prompts = DECODER_PROMPTS if decoder else ENCODER_PROMPTS
    return [
        Pipeline("modes", ALL_MODES, max_seq_length=20, include_prompt=False, prompts=prompts),
        Pipeline(
            "head",
            ("lasttoken",) if decoder else ("mean",),
            max_seq_length=24,
            dense=((16, "Tanh", True), (16, "Identity", True)),
            normalize=True,
            lowercase=not decoder,
            prompts=prompts,
        ),
    ]


CASES = [(family, pipeline) for family in FAMILIES for pipeline in pipelines(family)]


def case_id(family: str, pipeline: Pipeline) -> str:
    return f"{family}-{pipeline.name}"


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("conformance-sources")
    networks = {name: save_network(family, root) for name, family in FAMILIES.items()}
    return {
        case_id(family, pipeline): save_pipeline(FAMILIES[family], networks[family], pipeline, root)
        for family, pipeline in CASES
    }


@pytest.fixture(scope="module")
def repo(sources: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every case imported with the tool (its own verification against sentence-transformers included)."""
    repo = tmp_path_factory.mktemp("conformance-repo")
    for name, source in sources.items():
        assert modelrepo(["import", str(source), "--repo", str(repo), "--id", name]) == 0, name
    return repo


@pytest.fixture(scope="module")
def stub(repo: Path):
    # One batch per request, whatever the lengths: every request is a batch that mixes them.
    with (
        ServerProcess(repo, "--max-padding-ratio", "1000", "--inference-workers", "1") as server,
        grpc.insecure_channel(server.address) as channel,
    ):
        yield pb_grpc.EmbeddingServiceStub(channel)


@pytest.fixture(scope="module")
def references(sources: dict[str, Path]):
    from sentence_transformers import SentenceTransformer

    cache: dict[str, object] = {}

    def reference(name: str) -> object:
        if name not in cache:
            cache[name] = SentenceTransformer(str(sources[name]), device="cpu")
        return cache[name]

    return reference


def expected(model, input_type: str) -> np.ndarray:
    encode = {"": model.encode, "query": model.encode_query, "document": model.encode_document}[input_type]
    return encode(TEXTS, convert_to_numpy=True, show_progress_bar=False, batch_size=len(TEXTS))


def served(stub, name: str, input_type: str) -> pb.EmbedResponse:
    request = pb.EmbedRequest(model=name, inputs=TEXTS, truncate=True, input_type=INPUT_TYPES[input_type])
    return stub.Embed(request, timeout=120)


def assert_same_vectors(actual: np.ndarray, reference: np.ndarray, what: str) -> None:
    """Direction (cosine) and length of every row; vectors that are not normalized must match in size too."""
    norms = np.linalg.norm(actual, axis=1) * np.linalg.norm(reference, axis=1)
    cosine = (actual * reference).sum(axis=1) / np.maximum(norms, 1e-12)
    worst = int(cosine.argmin())
    assert cosine.min() >= MIN_COSINE, f"{what}: cosine {cosine.min():.6f} on {TEXTS[worst][:40]!r}"
    np.testing.assert_allclose(np.linalg.norm(actual, axis=1), np.linalg.norm(reference, axis=1), rtol=1e-3)


@pytest.mark.parametrize("input_type", ["", "query", "document"])
@pytest.mark.parametrize(("family", "pipeline"), CASES, ids=[case_id(f, p) for f, p in CASES])
def test_served_vectors_match_sentence_transformers(stub, references, family, pipeline, input_type) -> None:
    name = case_id(family, pipeline)
    model = references(name)
    response = served(stub, name, input_type)
    actual = np.array([list(e.values) for e in response.embeddings], dtype=np.float32)
    reference = expected(model, input_type)
    assert actual.shape == reference.shape
    if pipeline.dense:
        assert_same_vectors(actual, reference, name)
    else:  # every pooling mode, concatenated: each must match on its own
        for index, mode in enumerate(pipeline.modes):
            part = slice(index * HIDDEN, (index + 1) * HIDDEN)
            assert_same_vectors(actual[:, part], reference[:, part], f"{name} {mode}")
    # Token counts are the reference tokenizer's, prompt included, after truncation.
    prompt = model.prompts.get(input_type, "") if input_type else ""
    counts = [len(model.tokenizer(prompt + text, truncation=True)["input_ids"]) for text in TEXTS]
    assert [e.tokens for e in response.embeddings] == counts
    assert any(e.truncated for e in response.embeddings)


@pytest.mark.parametrize(("family", "pipeline"), CASES, ids=[case_id(f, p) for f, p in CASES])
def test_manifest_describes_the_pipeline(repo: Path, family: str, pipeline: Pipeline) -> None:
    manifest = ModelManifest.load(repo / case_id(family, pipeline))
    assert manifest.pooling_modes == pipeline.modes and manifest.include_prompt == pipeline.include_prompt
    assert [layer.out_features for layer in manifest.dense] == [out for out, _, _ in pipeline.dense]
    assert manifest.normalize == pipeline.normalize and manifest.max_input_tokens == pipeline.max_seq_length
    assert manifest.prompts == {k: v for k, v in (pipeline.prompts or {}).items() if v}
    assert manifest.backend == "onnxruntime" and manifest.architecture == family
    assert manifest.provenance["attention"] == ("causal" if family == "qwen3" else "bidirectional")


def test_decoder_truncation_keeps_the_appended_eos(references, repo: Path) -> None:
    """sentence-transformers truncates a decoder's input before the EOS its tokenizer appends, so the last token
    (the one pooled) is always EOS; the served tokenizer does the same."""
    from tokenizers import Tokenizer

    model = references("qwen3-head")
    eos = model.tokenizer.eos_token_id
    reference = model.tokenizer(TEXTS[4], truncation=True)["input_ids"]
    assert len(reference) == 24 and reference[-1] == eos
    served_tokenizer = Tokenizer.from_file(str(repo / "qwen3-head" / "tokenizer.json"))
    served_tokenizer.enable_truncation(24)
    assert served_tokenizer.encode(TEXTS[4]).ids == reference
