"""`python -m tools.modelrepo import` on tiny random BERTs: manifests, tokenizer files and parity with
sentence-transformers, through the real command-line entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from tokenizers import Tokenizer

from service.engine.manifest import MODEL_FILE, TOKENIZER_FILE, ModelManifest
from tests.tiny_bert import HIDDEN

os.environ["HF_HUB_OFFLINE"] = "1"

REPO_ROOT = Path(__file__).resolve().parent.parent
TEXTS = [
    "hello world",
    "The quick brown fox jumps over the lazy dog.",
    "what is a vector embedding?",
    "unknown wörds becoming [UNK] tokens!",
    "the cat sat on the mat " * 20,  # longer than every limit here: exercises truncation
]


def run_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "tools.modelrepo", *map(str, args)]
    # The timeout is a hang guard only: a busy machine is slow.
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, env={**os.environ}, timeout=900)


def import_ok(*args: str | Path) -> subprocess.CompletedProcess[str]:
    done = run_cli("import", *args)
    assert done.returncode == 0, f"import failed:\n{done.stdout}\n{done.stderr}"
    return done


def onnx_embed(model_dir: Path, texts: list[str]) -> np.ndarray:
    """Tokenize, truncate to max_input_tokens, pad, run ORT and pool per the manifest: what the server does,
    written out independently of the engine (mean or cls pooling)."""
    manifest = ModelManifest.load(model_dir)
    tokenizer = Tokenizer.from_file(str(model_dir / TOKENIZER_FILE))
    tokenizer.enable_truncation(manifest.max_input_tokens)
    encodings = tokenizer.encode_batch(texts)
    length = max(len(e.ids) for e in encodings)
    session = ort.InferenceSession(str(model_dir / MODEL_FILE), providers=["CPUExecutionProvider"])
    feed = {i.name: np.zeros((len(texts), length), dtype=np.int64) for i in session.get_inputs()}
    for row, enc in enumerate(encodings):
        feed["input_ids"][row, : len(enc.ids)] = enc.ids
        feed["attention_mask"][row, : len(enc.ids)] = 1
    hidden = session.run(None, feed)[0]
    mask = feed["attention_mask"][..., None].astype(np.float32)
    pooled = hidden[:, 0] if manifest.pooling == "cls" else (hidden * mask).sum(1) / mask.sum(1)
    if manifest.normalize:
        pooled = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
    return pooled


def serve_like_engine(model_dir: Path) -> np.ndarray:
    """The engine's own path (every pooling mode, Dense, prompts): what the server computes for TEXTS."""
    from tools.modelrepo.verify import serve_like_engine as engine

    return engine(model_dir / MODEL_FILE, model_dir, ModelManifest.load(model_dir), TEXTS)


def reference_embed(source: Path, texts: list[str]) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(source), device="cpu").encode(texts, convert_to_numpy=True)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def summary(manifest: ModelManifest) -> tuple[str, bool, int, int]:
    return manifest.pooling, manifest.normalize, manifest.dimensions, manifest.max_input_tokens


def assert_tokenizer_does_not_pad_or_truncate(model_dir: Path) -> None:
    data = json.loads((model_dir / TOKENIZER_FILE).read_text(encoding="utf-8"))
    assert data["padding"] is None and data["truncation"] is None
    tokens = Tokenizer.from_file(str(model_dir / TOKENIZER_FILE)).encode("The quick brown fox").tokens
    assert tokens == ["[CLS]", "the", "quick", "brown", "fox", "[SEP]"]  # real word pieces, not all [UNK]


@pytest.fixture(scope="module")
def sources(tiny_sources: dict[str, Path]) -> dict[str, Path]:
    """The session's tiny sources (read here, never changed)."""
    return tiny_sources


def test_import_sentence_transformers_mean_normalize(sources: dict[str, Path], tmp_path: Path) -> None:
    options = ["--id", "tiny-mean", "--alias", "org/tiny", "--alias", "tiny", "--shortened-dimensions", "16,8"]
    done = import_ok(sources["mean"], "--repo", tmp_path, *options, "--owned-by", "tests")
    assert "max abs diff" in done.stdout
    model_dir = tmp_path / "tiny-mean"
    manifest = ModelManifest.load(model_dir)
    assert summary(manifest) == ("mean", True, 32, 40)
    assert manifest.aliases == ("org/tiny", "tiny") and manifest.shortened_dimensions == (8, 16)
    assert (manifest.query_prefix, manifest.document_prefix) == ("query: ", "passage: ")  # from the ST prompts
    assert manifest.owned_by == "tests" and manifest.provenance["precision"] == "fp32"
    assert manifest.provenance["source"] == str(sources["mean"].resolve())
    assert_tokenizer_does_not_pad_or_truncate(model_dir)
    assert cosines(onnx_embed(model_dir, TEXTS), reference_embed(sources["mean"], TEXTS)).min() >= 0.9999

    again = import_ok(sources["mean"], "--repo", tmp_path, *options, "--owned-by", "tests")
    assert "up to date" in again.stdout


def test_import_sentence_transformers_cls_without_normalize(sources: dict[str, Path], tmp_path: Path) -> None:
    import_ok(sources["cls"], "--repo", tmp_path, "--query-prefix", "q: ", "--document-prefix", "d: ")
    model_dir = tmp_path / "tiny-cls"  # id defaults to the source directory's name
    manifest = ModelManifest.load(model_dir)
    assert summary(manifest) == ("cls", False, 32, 48)
    assert (manifest.query_prefix, manifest.document_prefix) == ("q: ", "d: ")
    assert manifest.aliases == () and manifest.shortened_dimensions == ()
    assert_tokenizer_does_not_pad_or_truncate(model_dir)
    ours, reference = onnx_embed(model_dir, TEXTS), reference_embed(sources["cls"], TEXTS)
    assert cosines(ours, reference).min() >= 0.9999
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), np.linalg.norm(reference, axis=1), rtol=1e-4)


def test_import_plain_huggingface_directory_with_defaults(sources: dict[str, Path], tmp_path: Path) -> None:
    import_ok(sources["hf"], "--repo", tmp_path)
    model_dir = tmp_path / "tiny-hf"
    manifest = ModelManifest.load(model_dir)
    # No sentence-transformers config: mean + normalize, and the limit is the 64 position embeddings.
    assert summary(manifest) == ("mean", True, 32, 64)
    assert (manifest.query_prefix, manifest.document_prefix) == ("", "")
    assert_tokenizer_does_not_pad_or_truncate(model_dir)

    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    reference = SentenceTransformer(
        modules=[Transformer(str(sources["hf"]), max_seq_length=64), Pooling(HIDDEN, "mean"), Normalize()], device="cpu"
    ).encode(TEXTS, convert_to_numpy=True)
    assert cosines(onnx_embed(model_dir, TEXTS), reference).min() >= 0.9999


def test_import_quantized_int8(sources: dict[str, Path], tmp_path: Path) -> None:
    done = import_ok(sources["mean"], "--repo", tmp_path, "--quantize", "int8", "--max-input-tokens", "24")
    assert "min cosine" in done.stdout
    model_dir = tmp_path / "tiny-mean-int8"
    manifest = ModelManifest.load(model_dir)
    assert manifest.provenance["precision"] == "int8" and manifest.max_input_tokens == 24
    assert sorted(p.name for p in model_dir.iterdir()) == ["manifest.json", "model.onnx", "tokenizer.json"]
    vectors = onnx_embed(model_dir, TEXTS)
    assert vectors.shape == (len(TEXTS), HIDDEN) and np.isfinite(vectors).all()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_max_pooling_imports(sources: dict[str, Path], tmp_path: Path) -> None:
    import_ok(sources["max"], "--repo", tmp_path)
    model_dir = tmp_path / "tiny-max"
    assert ModelManifest.load(model_dir).pooling == "max"
    assert cosines(serve_like_engine(model_dir), reference_embed(sources["max"], TEXTS)).min() >= 0.9999


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("layernorm", "module 'sentence_transformers.sentence_transformer.modules.layer_norm.LayerNorm'"),
        ("gelu", "activation 'torch.nn.modules.activation.GELU'"),
    ],
)
def test_unsupported_modules_fail_clearly(sources: dict[str, Path], tmp_path: Path, source: str, message: str) -> None:
    done = run_cli("import", sources[source], "--repo", tmp_path)
    assert done.returncode != 0
    assert message in done.stderr and "is not supported" in done.stderr and "Traceback" not in done.stderr
    assert not [p for p in tmp_path.iterdir() if p.name != ".modelrepo.lock"]


def test_fp16_variant_stays_with_fp32(sources: dict[str, Path], tmp_path: Path) -> None:
    """fp16 is for GPUs; ONNX Runtime's CPU runs it too, so it is verified against fp32 here and served alike."""
    import onnx

    done = import_ok(sources["mean"], "--repo", tmp_path, "--precision", "fp16")
    assert "verified fp16 against fp32" in done.stdout
    model_dir = tmp_path / "tiny-mean-fp16"
    manifest = ModelManifest.load(model_dir)
    assert manifest.provenance["precision"] == "fp16" and manifest.provenance["verification"][-1]["min_cosine"] >= 0.99
    graph = onnx.load(str(model_dir / MODEL_FILE)).graph
    floats = [
        t.data_type for t in graph.initializer if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
    ]
    assert floats.count(onnx.TensorProto.FLOAT16) > 0.9 * len(floats)  # weights are half precision
    assert [i.name for i in graph.input] == ["input_ids", "attention_mask", "token_type_ids"]
    assert graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # float32 out, pooled as ever
    assert cosines(serve_like_engine(model_dir), reference_embed(sources["mean"], TEXTS)).min() >= 0.999


def test_large_model_keeps_weights_beside_the_graph(sources: dict[str, Path], tmp_path: Path, monkeypatch) -> None:
    """Past protobuf's 2 GB a graph keeps its weights in model.onnx.data (forced here by lowering the threshold)."""
    from tools.modelrepo import export
    from tools.modelrepo.cli import run

    monkeypatch.setattr(export, "EXTERNAL_DATA_BYTES", 0)
    assert run(["import", str(sources["cls"]), "--repo", str(tmp_path), "--id", "big"]) == 0
    assert run(["import", str(sources["cls"]), "--repo", str(tmp_path), "--id", "big-int8", "--precision", "int8"]) == 0
    graph = tmp_path / "big" / MODEL_FILE
    assert (tmp_path / "big" / "model.onnx.data").stat().st_size > graph.stat().st_size  # the weights moved out
    assert (tmp_path / "big-int8" / "model.onnx.data").stat().st_size > 0  # int8 writes its variant alike
    reference = reference_embed(sources["cls"], TEXTS)
    assert cosines(serve_like_engine(tmp_path / "big"), reference).min() >= 0.9999
    assert cosines(serve_like_engine(tmp_path / "big-int8"), reference).min() >= 0.9


def test_bad_arguments_fail_clearly(sources: dict[str, Path], tmp_path: Path) -> None:
    too_long = run_cli("import", sources["hf"], "--repo", tmp_path, "--max-input-tokens", "65")
    assert too_long.returncode != 0 and "exceeds the model's 64 positions" in too_long.stderr
    too_wide = run_cli("import", sources["hf"], "--repo", tmp_path, "--shortened-dimensions", "64")
    assert too_wide.returncode != 0 and "shortened_dimensions" in too_wide.stderr
    missing = run_cli("import", tmp_path / "nope", "--repo", tmp_path)
    assert missing.returncode != 0 and "not a directory" in missing.stderr


def test_the_built_default_models_stay_current(built_model_repo: Path) -> None:
    """A second build of the default models rebuilds nothing: manifest keys added later and left unset
    (auto_truncate) are not part of what decides a build is current."""
    done = run_cli("build-defaults", "--repo", built_model_repo)
    assert done.returncode == 0, done.stderr
    for model_id in ("all-minilm-l6-v2", "all-minilm-l6-v2-int8"):
        assert f"{model_id}: up to date" in done.stdout + done.stderr
    manifest = ModelManifest.load(built_model_repo / "all-minilm-l6-v2")
    assert manifest.auto_truncate is None and "auto_truncate" not in json.loads(manifest.to_json())
