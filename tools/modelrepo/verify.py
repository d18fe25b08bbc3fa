"""Checks a build must pass before it is placed: the tokenizer, the graph against torch, the whole pipeline against
sentence-transformers, and each lower-precision variant against fp32.

Vectors are computed by the engine's own code (service.engine: padding, ONNX Runtime session, pooling, Dense,
prompts, normalization), so what is verified here is what the server will serve.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from service.engine.backends import RuntimeOptions, pad_batch
from service.engine.backends.onnxruntime import OnnxRuntimeBackend
from service.engine.encoder import Encoder
from service.engine.manifest import ModelManifest
from service.engine.model import INPUT_TYPES
from service.engine.pooling import EmbeddingHead, finalize
from service.engine.prompts import Prompts
from service.engine.tokenize import TextTokenizer, TokenizedInput
from tools.modelrepo.common import BuildError, say
from tools.modelrepo.sources import Source

FP32_MAX_ABS_DIFF = 1e-3  # ORT vs torch on token embeddings; float32 re-association stays far below this
REFERENCE_MIN_COSINE = 0.9999  # the served pipeline vs sentence-transformers
# int8's first plan is kept when every verification text stays this close to fp32 (MiniLM: 0.98), else the
# outlier-aware plan is used (quantize.quantize_int8).
INT8_MIN_COSINE = 0.97
SOLO_MIN_COSINE = 0.9999  # the fused solo graph vs the plain one: the same float32 math, operators merged
FP16_MIN_COSINE = 0.99  # float16 vs float32 (measured ~0.99999 on MiniLM); below it the conversion broke something
# Traced once: two lengths, so the exported graph is built with padding present.
EXPORT_TEXTS = ("hello world", "a somewhat longer sentence to trace the export with padding present")
# Checked after export: varied lengths, unicode, upper case, and one text longer than any model's limit
# (exercises truncation).
VERIFY_TEXTS = (
    "The quick brown fox jumps over the lazy dog.",
    "hi",
    "Ünïcödé àccents, emoji 🙂 and 日本語のテキスト.",
    "How do I configure DYNAMIC BATCHING for an embeddings server?",
    "!!! ... ???",
    " ".join(f"token{i} word" for i in range(600)),
)


def tokenize(
    tokenizer_path: Path, texts: Sequence[str], max_tokens: int, prompt_length: int = 0
) -> list[TokenizedInput]:
    """Token ids as the server makes them for a call with `truncate` (the engine's tokenizer): cut to max_tokens,
    special tokens kept."""
    tokens = TextTokenizer(tokenizer_path, max_tokens).encode(texts, truncate=True)
    return [dataclasses.replace(item, prompt_length=prompt_length) for item in tokens]


def sample_batch(tokenizer_path: Path, max_tokens: int) -> dict[str, np.ndarray]:
    """The padded example the export is traced with."""
    return pad_batch(tokenize(tokenizer_path, EXPORT_TEXTS, max_tokens)).feeds


def verification_feeds(tokenizer_path: Path, max_tokens: int) -> dict[str, np.ndarray]:
    """The verification texts as one padded batch (int8 calibrates on it)."""
    return pad_batch(tokenize(tokenizer_path, VERIFY_TEXTS, max_tokens)).feeds


def serve_like_engine(
    model_path: Path, model_dir: Path, manifest: ModelManifest, texts: Sequence[str], input_type: str = ""
) -> np.ndarray:
    """Vectors as the server computes them: prompt, tokenize, pad, run, pool, Dense, normalize."""
    return _engine_vectors(model_path, model_dir, manifest, [texts], input_type)[0]


def _engine_vectors(
    model_path: Path, model_dir: Path, manifest: ModelManifest, batches: Sequence[Sequence[str]], input_type: str = ""
) -> list[np.ndarray]:
    """serve_like_engine for several batches on one session."""
    tokenizer_path = model_dir / "tokenizer.json"
    prompts = Prompts.load(manifest, tokenizer_path, INPUT_TYPES)
    backend = OnnxRuntimeBackend(model_path, RuntimeOptions())
    encoder = Encoder(backend, EmbeddingHead.from_manifest(manifest, model_dir))
    vectors = []
    for texts in batches:
        batch = tokenize(
            tokenizer_path, prompts.prepend(texts, input_type), manifest.max_input_tokens, prompts.excluded(input_type)
        )
        vectors.append(finalize(encoder.embed(batch), None, manifest.normalize))
    return vectors


def check_tokenizer(source: Source, reference: Any, tokenizer_path: Path, max_tokens: int) -> None:
    """The written tokenizer.json must give the ids of transformers' tokenizer (the one sentence-transformers uses;
    with do_lower_case, on lower-cased text)."""
    texts = [text.lower() for text in VERIFY_TEXTS] if source.lowercase else list(VERIFY_TEXTS)
    expected = reference(texts, truncation=True, max_length=max_tokens)["input_ids"]
    for text, ids, item in zip(VERIFY_TEXTS, expected, tokenize(tokenizer_path, VERIFY_TEXTS, max_tokens), strict=True):
        if item.ids.tolist() != list(ids):
            raise BuildError(f"tokenizer.json disagrees with transformers' tokenizer on {text[:40]!r}")


def against_torch(model: Any, names: Sequence[str], onnx_path: Path, tokenizer_path: Path, max_tokens: int) -> dict:
    """Token embeddings of the graph vs the torch model on the verification texts (real tokens only)."""
    import torch

    feeds = pad_batch(tokenize(tokenizer_path, VERIFY_TEXTS, max_tokens)).feeds
    feed = {n: feeds[n] for n in names}
    with torch.no_grad():  # transformers' own forward, with its own (causal, padding) masks
        expected = model(**{n: torch.from_numpy(v) for n, v in feed.items()}).last_hidden_state.numpy()
    (actual,) = OnnxRuntimeBackend(onnx_path, RuntimeOptions()).session.run(None, feed)
    if actual.shape != expected.shape:
        raise BuildError(f"ONNX output shape {actual.shape} != torch {expected.shape}")
    valid = feed["attention_mask"].astype(bool)
    diff = float(np.abs(actual - expected)[valid].max())
    if not np.isfinite(diff) or diff > FP32_MAX_ABS_DIFF:
        raise BuildError(f"ONNX export does not match torch: max abs diff {diff:.3g} > {FP32_MAX_ABS_DIFF}")
    say(f"  verified against torch on {len(VERIFY_TEXTS)} texts (seq {actual.shape[1]}): max abs diff {diff:.2e}")
    return {"against": "torch", "texts": len(VERIFY_TEXTS), "max_abs_diff": diff}


def _reference_model(source: Source, manifest: ModelManifest) -> Any:
    """sentence-transformers' own pipeline for the source (a plain HF directory: mean pooling and Normalize)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    if source.kind == "sentence-transformers":
        model = SentenceTransformer(str(source.root), device="cpu")
    else:
        transformer = Transformer(str(source.model_dir), max_seq_length=manifest.max_input_tokens)
        model = SentenceTransformer(
            modules=[transformer, Pooling(source.hidden_size, "mean"), Normalize()], device="cpu"
        )
    model.max_seq_length = manifest.max_input_tokens
    return model


def against_sentence_transformers(source: Source, model_path: Path, model_dir: Path, manifest: ModelManifest) -> dict:
    """The served pipeline vs sentence-transformers' encode, per input type with a prompt of its own."""
    reference = _reference_model(source, manifest)
    kinds = {manifest.prompt(kind): kind for kind in INPUT_TYPES}  # one check per distinct prompt
    worst = 1.0
    for prompt, kind in kinds.items():
        expected = reference.encode(
            list(VERIFY_TEXTS), prompt=prompt or None, convert_to_numpy=True, show_progress_bar=False
        )
        actual = serve_like_engine(model_path, model_dir, manifest, VERIFY_TEXTS, kind)
        if not manifest.normalize:
            ratio = np.linalg.norm(actual, axis=1) / np.maximum(np.linalg.norm(expected, axis=1), 1e-12)
            if not np.allclose(ratio, 1.0, rtol=1e-3):
                raise BuildError(f"vector norms differ from sentence-transformers' (ratios {ratio.round(4)})")
        cosine = _cosines(actual, expected)
        if cosine.min() < REFERENCE_MIN_COSINE:
            text = VERIFY_TEXTS[int(cosine.argmin())][:40]
            raise BuildError(
                f"the served pipeline differs from sentence-transformers on {text!r} ({kind or 'no'} input type): "
                f"cosine {cosine.min():.6f} < {REFERENCE_MIN_COSINE}"
            )
        worst = min(worst, float(cosine.min()))
    say(f"  verified against sentence-transformers ({len(kinds)} prompt(s)): min cosine {worst:.6f}")
    return {
        "against": "sentence-transformers",
        "texts": len(VERIFY_TEXTS),
        "prompts": len(kinds),
        "min_cosine": round(worst, 6),
    }


def against_fp32(
    variant: Path, fp32: Path, model_dir: Path, manifest: ModelManifest, precision: str, min_cosine: float | None
) -> dict:
    """A lower-precision graph vs its fp32 source through the served pipeline: it must load and stay finite; the
    cosine is recorded, and enforced where given."""
    actual = serve_like_engine(variant, model_dir, manifest, VERIFY_TEXTS)
    expected = serve_like_engine(fp32, model_dir, manifest, VERIFY_TEXTS)
    if actual.shape != expected.shape or not np.isfinite(actual).all():
        raise BuildError(f"{precision} model output is broken: shape {actual.shape} vs {expected.shape} or not finite")
    cosine = float(_cosines(actual, expected).min())
    say(f"  verified {precision} against fp32 on {len(VERIFY_TEXTS)} texts: min cosine {cosine:.4f}")
    if min_cosine is not None and cosine < min_cosine:
        raise BuildError(f"{precision} model strays from fp32: min cosine {cosine:.4f} < {min_cosine}")
    return {"against": "fp32 onnx", "texts": len(VERIFY_TEXTS), "min_cosine": round(cosine, 6)}


def against_plain(fused: Path, plain: Path, model_dir: Path, manifest: ModelManifest) -> dict:
    """The fused solo graph vs the plain graph through the served pipeline: the verification texts as one padded
    batch and each alone (what it serves). BuildError below SOLO_MIN_COSINE."""
    batches = [VERIFY_TEXTS, *([text] for text in VERIFY_TEXTS)]
    actual = np.concatenate(_engine_vectors(fused, model_dir, manifest, batches))
    expected = np.concatenate(_engine_vectors(plain, model_dir, manifest, batches))
    if actual.shape != expected.shape or not np.isfinite(actual).all():
        raise BuildError(f"the fused graph's output is broken: shape {actual.shape} vs {expected.shape} or not finite")
    cosine = float(_cosines(actual, expected).min())
    if cosine < SOLO_MIN_COSINE:
        raise BuildError(f"the fused graph strays from the plain one: min cosine {cosine:.6f} < {SOLO_MIN_COSINE}")
    say(
        f"  verified the fused solo graph against the plain one ({len(VERIFY_TEXTS)} texts, batched and alone): "
        f"min cosine {cosine:.6f}"
    )
    return {
        "against": "plain onnx",
        "texts": len(VERIFY_TEXTS),
        "alone_and_batched": True,
        "min_cosine": round(cosine, 6),
    }


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    norms = np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return (a * b).sum(axis=1) / norms
