"""The solo graph: an offline-fused copy of a model's graph that the build writes and verifies, and that the ONNX
Runtime backend runs for small batches that run alone (tools/modelrepo/fuse.py, SoloGraph).

Which graph ran is read from the backend's count (in process) and from the server's
`embeddings_solo_graph_batches_total` metric, never from timings.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest

from service._gen.embeddings.v1 import embeddings_pb2 as pb
from service._gen.embeddings.v1 import embeddings_pb2_grpc as pb_grpc
from service._gen.embeddings.v1 import ops_pb2, ops_pb2_grpc
from service.engine.backends import RuntimeOptions
from service.engine.backends.onnxruntime import OnnxRuntimeBackend, load
from service.engine.encoder import Encoder
from service.engine.manifest import MANIFEST_FILE, MODEL_FILE, ManifestError, ModelManifest, SoloGraph
from service.engine.pooling import EmbeddingHead
from service.engine.tokenize import TextTokenizer
from tests.serving import ServerProcess
from tests.test_observability import parse_metrics, value
from tools.modelrepo.cli import run
from tools.modelrepo.fuse import SOLO_GRAPH_FILE, SOLO_MAX_INPUTS, SOLO_MAX_TOKENS
from tools.modelrepo.verify import SOLO_MIN_COSINE, serve_like_engine

MINILM = "all-minilm-l6-v2"
# The server's CPU plan on two cores: one single-threaded batch per core, a lone batch on both.
OPTIONS = RuntimeOptions(intra_op_threads=1, solo_threads=2)
SHORT = "how do I configure dynamic batching"
LONG = "a sentence long enough to pass the solo graph's token limit on its own " * 8


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def tiny_dir(tiny_sources: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny BERT (mean pooling, prompts) imported with the real command line."""
    repo = tmp_path_factory.mktemp("solo-graph-repo")
    assert run(["import", str(tiny_sources["mean"]), "--repo", str(repo), "--id", "tiny"]) == 0
    return repo / "tiny"


def encoder_of(model_dir: Path, options: RuntimeOptions = OPTIONS) -> tuple[Encoder, TextTokenizer]:
    manifest = ModelManifest.load(model_dir)
    backend = load(model_dir, manifest, options)
    tokenizer = TextTokenizer(model_dir / "tokenizer.json", manifest.max_input_tokens)
    return Encoder(backend, EmbeddingHead.from_manifest(manifest, model_dir)), tokenizer


def test_the_build_writes_and_verifies_a_fused_solo_graph(tiny_dir: Path) -> None:
    manifest = ModelManifest.load(tiny_dir)
    assert manifest.solo_graph == SoloGraph(SOLO_GRAPH_FILE, SOLO_MAX_INPUTS, SOLO_MAX_TOKENS)
    record = manifest.provenance["solo_graph"]
    assert record["verification"]["against"] == "plain onnx"
    assert record["verification"]["min_cosine"] >= SOLO_MIN_COSINE
    fused = [node.op_type for node in onnx.load(str(tiny_dir / SOLO_GRAPH_FILE)).graph.node]
    plain = [node.op_type for node in onnx.load(str(tiny_dir / MODEL_FILE)).graph.node]
    assert fused.count("Attention") == 2 and "Attention" not in plain  # every layer's attention is one operator
    assert "SkipLayerNormalization" in fused and len(fused) < len(plain) / 4


def test_lone_small_batches_run_the_solo_graph_and_give_the_plain_vectors(tiny_dir: Path) -> None:
    encoder, tokenizer = encoder_of(tiny_dir)
    backend = encoder.backend
    assert isinstance(backend, OnnxRuntimeBackend) and backend.fused_batches == 0
    limit = ModelManifest.load(tiny_dir).solo_graph
    assert limit is not None
    tokens = tokenizer.encode(["hello world"] * (limit.max_inputs + 1))
    lone = encoder.embed(tokens[:1], solo=True)
    assert backend.fused_batches == 1
    plain = encoder.embed(tokens[:1])  # not alone: the plain graph's session
    assert backend.fused_batches == 1
    assert cosines(lone, plain).min() >= 1 - 1e-4
    encoder.embed(tokens[:-1], solo=True)  # as many inputs as it serves
    assert backend.fused_batches == 2
    encoder.embed(tokens, solo=True)  # alone but more inputs than the solo graph serves
    assert backend.fused_batches == 2


def test_a_long_lone_text_and_32_texts_run_the_plain_graph(model_repo: Path) -> None:
    """all-MiniLM-L6-v2 as `make models` builds it: a lone short text from the solo graph; a lone text over its token
    limit and 32 texts from the plain graph; every vector within 1e-4 cosine of the plain graph's."""
    model_dir = model_repo / MINILM
    manifest = ModelManifest.load(model_dir)
    assert manifest.solo_graph is not None and manifest.provenance["solo_graph"]["fused_operators"]["Attention"] == 6
    encoder, tokenizer = encoder_of(model_dir)
    backend = encoder.backend
    assert isinstance(backend, OnnxRuntimeBackend)
    short, long = tokenizer.encode([SHORT, LONG])
    assert short.length <= manifest.solo_graph.max_tokens < long.length
    fused_short = encoder.embed([short], solo=True)
    assert backend.fused_batches == 1
    encoder.embed([long], solo=True)
    batch = encoder.embed([short] * 32, solo=True)
    assert backend.fused_batches == 1
    expected = serve_like_engine(model_dir / MODEL_FILE, model_dir, manifest, [SHORT])
    assert cosines(fused_short, expected).min() >= 1 - 1e-4 and cosines(batch, expected).min() >= 1 - 1e-4


def test_models_built_before_solo_graphs_are_served_from_their_plain_graph(tiny_dir: Path, tmp_path: Path) -> None:
    old = tmp_path / "old"
    shutil.copytree(tiny_dir, old)
    (old / SOLO_GRAPH_FILE).unlink()
    data = json.loads((old / MANIFEST_FILE).read_text())
    del data["solo_graph"]
    (old / MANIFEST_FILE).write_text(json.dumps(data))
    encoder, tokenizer = encoder_of(old)
    assert encoder.backend.solo_graph is None
    encoder.embed(tokenizer.encode([SHORT]), solo=True)
    assert encoder.backend.fused_batches == 0
    data["solo_graph"] = {"file": SOLO_GRAPH_FILE, "max_inputs": 1, "max_tokens": 64}  # named, but not there
    (old / MANIFEST_FILE).write_text(json.dumps(data))
    with pytest.raises(ValueError, match=f"lacks {SOLO_GRAPH_FILE}"):
        encoder_of(old)


@pytest.mark.parametrize(
    "solo_graph",
    [{"file": MODEL_FILE}, {"file": "../x.onnx"}, {"file": "f.onnx", "max_tokens": 0}, {"file": "f.onnx", "extra": 1}],
)
def test_a_bad_solo_graph_entry_is_refused(tiny_dir: Path, solo_graph: dict) -> None:
    data = json.loads((tiny_dir / MANIFEST_FILE).read_text())
    with pytest.raises(ManifestError, match="solo_graph"):
        ModelManifest.from_dict({**data, "solo_graph": {"max_tokens": 64, **solo_graph}})


def test_the_server_answers_a_lone_short_text_from_the_solo_graph(model_repo: Path) -> None:
    """A real server on an idle machine state (its own, cache off so that 32 equal texts run as 32 inputs): a lone
    short text runs from the solo graph; 32 texts and a long text from the plain graph; vectors as the plain graph's."""
    model_dir = model_repo / MINILM
    with (
        ServerProcess(model_repo, "--models", MINILM, "--cache-bytes", "0") as server,
        grpc.insecure_channel(server.address) as channel,
    ):
        stub, ops = pb_grpc.EmbeddingServiceStub(channel), ops_pb2_grpc.OpsServiceStub(channel)

        def fused_batches() -> float:
            samples = parse_metrics(ops.GetMetrics(ops_pb2.GetMetricsRequest(), timeout=30).data)
            return value(samples, "embeddings_solo_graph_batches_total", model=MINILM)

        start = fused_batches()
        lone = stub.Embed(pb.EmbedRequest(model=MINILM, inputs=[SHORT]), timeout=60)
        assert fused_batches() == start + 1
        many = stub.Embed(pb.EmbedRequest(model=MINILM, inputs=[SHORT] * 32), timeout=60)
        stub.Embed(pb.EmbedRequest(model=MINILM, inputs=[LONG]), timeout=60)
        assert fused_batches() == start + 1
    expected = serve_like_engine(model_dir / MODEL_FILE, model_dir, ModelManifest.load(model_dir), [SHORT])
    got = np.array([list(lone.embeddings[0].values), list(many.embeddings[31].values)], dtype=np.float32)
    assert cosines(got, np.repeat(expected, 2, axis=0)).min() >= 1 - 1e-4


def test_the_solo_graph_can_be_turned_off(model_repo: Path) -> None:
    """`--solo-graph false`: every batch from the plain graph (none counted as fused), a lone text's vector the one
    it gets inside a batch."""
    args = ("--models", MINILM, "--cache-bytes", "0", "--solo-graph", "false")
    with ServerProcess(model_repo, *args) as server, grpc.insecure_channel(server.address) as channel:
        stub, ops = pb_grpc.EmbeddingServiceStub(channel), ops_pb2_grpc.OpsServiceStub(channel)
        lone = stub.Embed(pb.EmbedRequest(model=MINILM, inputs=[SHORT]), timeout=60)
        batched = stub.Embed(pb.EmbedRequest(model=MINILM, inputs=[LONG, SHORT]), timeout=60)
        samples = parse_metrics(ops.GetMetrics(ops_pb2.GetMetricsRequest(), timeout=30).data)
    assert value(samples, "embeddings_solo_graph_batches_total", model=MINILM) == 0
    assert np.allclose(list(lone.embeddings[0].values), list(batched.embeddings[1].values), atol=1e-6)
