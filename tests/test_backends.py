"""Backends chosen by the manifest alone: a toy backend defined in tests/ and the built-in null backend, each
served by the real server, over gRPC and over REST through the real Envoy; and the engine stays transport-free."""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import grpc
import numpy as np
import pytest
from tokenizers import Tokenizer

from service._gen.embeddings.v1 import embeddings_pb2 as pb
from service._gen.embeddings.v1 import embeddings_pb2_grpc as pb_grpc
from service.engine.backends import backend_factory
from tests.serving import EnvoyProcess, ServerProcess, http
from tests.toy_backend import TABLE_FILE

ROOT = Path(__file__).resolve().parent.parent
ENGINE = ROOT / "service" / "engine"
TEXTS = ["The quick brown fox", "jumps over the lazy dog", "a"]
HIDDEN = 8


def _model_dir(repo: Path, model_repo: Path, model_id: str, backend: str, dimensions: int) -> Path:
    """A model directory with the real tokenizer of all-minilm-l6-v2 and a manifest naming `backend`."""
    target = repo / model_id
    target.mkdir()
    shutil.copy(model_repo / "all-minilm-l6-v2" / "tokenizer.json", target / "tokenizer.json")
    manifest = {"id": model_id, "dimensions": dimensions, "max_input_tokens": 256, "backend": backend}
    (target / "manifest.json").write_text(json.dumps(manifest))
    return target


@pytest.fixture(scope="module")
def backend_repo(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    repo = tmp_path_factory.mktemp("backend-models")
    toy = _model_dir(repo, model_repo, "toy", "tests.toy_backend:ToyBackend", HIDDEN)
    vocabulary = Tokenizer.from_file(str(toy / "tokenizer.json")).get_vocab_size()
    table = np.random.default_rng(7).normal(size=(vocabulary, HIDDEN)).astype(np.float32)
    np.save(toy / TABLE_FILE, table)
    _model_dir(repo, model_repo, "null-model", "null", 384)
    return repo, table


@pytest.fixture(scope="module")
def backend_server(backend_repo: tuple[Path, np.ndarray]):
    with ServerProcess(backend_repo[0]) as server:
        yield server


def toy_reference(repo: Path, table: np.ndarray, texts: list[str]) -> np.ndarray:
    """numpy alone: the tokenizer's ids, the mean of their table rows, scaled to unit length."""
    tokenizer = Tokenizer.from_file(str(repo / "toy" / "tokenizer.json"))
    vectors = np.stack([table[encoding.ids].mean(axis=0) for encoding in tokenizer.encode_batch(texts)])
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_a_toy_backend_named_in_the_manifest_serves_over_grpc_and_rest(backend_repo, backend_server, tmp_path):
    repo, table = backend_repo
    expected = toy_reference(repo, table, TEXTS)
    with grpc.insecure_channel(backend_server.address) as channel:
        response = pb_grpc.EmbeddingServiceStub(channel).Embed(pb.EmbedRequest(model="toy", inputs=TEXTS), timeout=30)
    grpc_vectors = np.array([list(e.values) for e in response.embeddings], dtype=np.float32)
    np.testing.assert_allclose(grpc_vectors, expected, atol=1e-6)
    assert response.dimensions == HIDDEN

    with EnvoyProcess(backend_server.port, tmp_path) as envoy:
        status, _, raw = http(envoy, "POST", "/v1/embeddings", {"model": "toy", "input": TEXTS})
    assert status == 200, raw
    body = json.loads(raw)
    rest_vectors = np.array([item["embedding"] for item in body["data"]], dtype=np.float32)
    np.testing.assert_allclose(rest_vectors, expected, atol=1e-6)
    assert body["usage"]["prompt_tokens"] == sum(len(e.ids) for e in Tokenizer.from_file(
        str(repo / "toy" / "tokenizer.json")).encode_batch(TEXTS))  # fmt: skip


def test_the_null_backend_serves_fixed_vectors(backend_server):
    with grpc.insecure_channel(backend_server.address) as channel:
        stub = pb_grpc.EmbeddingServiceStub(channel)
        response = stub.Embed(pb.EmbedRequest(model="null-model", inputs=TEXTS), timeout=30)
        models = stub.ListModels(pb.ListModelsRequest(), timeout=30)
    expected = np.zeros(384, dtype=np.float32)
    expected[0] = 1.0
    for embedding in response.embeddings:
        np.testing.assert_array_equal(np.array(embedding.values, dtype=np.float32), expected)
    assert response.usage.prompt_tokens > len(TEXTS)  # tokenized for real
    assert sorted(m.id for m in models.data) == ["null-model", "toy"]


def test_an_unknown_backend_is_refused_with_its_name():
    with pytest.raises(ValueError, match="no_such_module"):
        backend_factory("no_such_module:Backend")
    with pytest.raises(ValueError, match="is not one of"):
        backend_factory("tensorflow")


def _imports(path: Path) -> set[str]:
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
            modules.update(f"{node.module}.{alias.name}" for alias in node.names)
    return modules


def test_the_engine_imports_no_transport():
    """service/engine is a library: no gRPC, no protobuf messages, no API errors, nothing outside the engine of the
    service package."""
    offending = {}
    for path in sorted(ENGINE.rglob("*.py")):
        bad = sorted(
            name
            for name in _imports(path)
            if name.split(".")[0] in ("grpc", "grpc_status", "google", "embeddings")
            or (name.startswith("service") and not name.startswith("service.engine"))
            or name == "service.errors"
        )
        if bad:
            offending[str(path.relative_to(ROOT))] = bad
    assert not offending
    assert len(list(ENGINE.rglob("*.py"))) >= 10  # the walk saw the engine


def test_no_engine_module_is_over_500_lines():
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in ENGINE.rglob("*.py")}
    assert max(sizes.values()) <= 500, sizes
