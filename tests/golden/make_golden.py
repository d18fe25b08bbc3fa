"""Write tests/golden/<model>.json: reference vectors from sentence-transformers itself.

The server must reproduce these (ONNX export, tokenizer.json, truncation and pooling all included), so they come from
the reference implementation, not from our own pipeline. The source directories are the ones tools.modelrepo builds
from (the packages of tools/modelrepo/defaults.py; all-mpnet-base-v2 is downloaded with pip if not cached). Run from
the repository root:

    python tests/golden/make_golden.py [all-minilm-l6-v2] [all-mpnet-base-v2]     # default: both
"""

from __future__ import annotations

import base64
import importlib.metadata
import json
import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import numpy as np

HERE = Path(__file__).resolve().parent
# Model id -> (upstream name, max tokens).
MODELS = {
    "all-minilm-l6-v2": ("sentence-transformers/all-MiniLM-L6-v2", 256),
    "all-mpnet-base-v2": ("sentence-transformers/all-mpnet-base-v2", 384),
}

_PARAGRAPH = (
    "Embeddings map text to points in a vector space so that texts with similar meaning land close together. "
    "A search system embeds every document once, stores the vectors in an index, and at query time embeds the "
    "question and returns the nearest documents by cosine similarity. Batching many short requests together keeps "
    "the accelerator busy, while padding each batch only to its longest member avoids wasting work on empty tokens."
)
_STORY = (
    "On a cold morning in February, the harbour master of a small fishing town noticed that the tide had not come "
    "in as expected. The boats sat tilted in the mud, their ropes slack, and the gulls walked where water should have "
    "been. By noon a crowd had gathered along the sea wall, trading theories: a storm far out at sea, a shift in the "
    "currents, or simply a mistake in the printed tables that everyone had trusted for forty years. "
)

TEXTS: list[str] = [
    # short
    "hello",
    "Hello, world!",
    "a",
    "OK",
    "The cat sat on the mat.",
    "What is the capital of France?",
    "Paris is the capital of France.",
    "How do I reset my password?",
    # medium
    "The quick brown fox jumps over the lazy dog while the farmer watches from the porch.",
    "Machine learning models can be exported to ONNX and served with a runtime that does not depend on Python.",
    "Please summarise the quarterly report and highlight any risks to the delivery schedule.",
    # unicode: accents, other scripts, emoji, CJK
    "Crème brûlée à la française, s'il vous plaît.",
    "Ünïcödé çhäràctérs ñ ø å ß",
    "Москва — столица России.",
    "東京は日本の首都です。",
    "我喜欢学习自然语言处理。",
    "서울은 한국의 수도입니다.",
    "مرحبا بالعالم",
    "I love pizza 🍕🍕 and tacos 🌮! 😀👍",
    "🙂",
    "naïve café résumé coöperate",
    # punctuation only, symbols
    "!!!",
    "?!.,;:-()[]{}",
    "...",
    "@#$%^&*",
    # whitespace inside
    "tabs\tand\tnewlines\nin the\n\nmiddle",
    "  leading and trailing spaces  ",
    "multiple     spaces     between     words",
    # numbers
    "3.14159 2.71828 1.41421",
    "Call 555-0199 before 10:30 on 2024-03-15.",
    "The invoice total is $1,234,567.89 (incl. 20% VAT).",
    "0",
    # mixed case, code, urls
    "SHOUTING IN ALL CAPS IS STILL THE SAME WORDS",
    "def add(a: int, b: int) -> int: return a + b",
    "See https://example.com/path?query=1&x=y#frag for details.",
    # roughly 100-250 tokens
    _PARAGRAPH,
    _STORY * 2,
    (_PARAGRAPH + " ") * 2,
    # longer than either limit: sentence-transformers truncates
    _STORY * 5,
    (_PARAGRAPH + " 12345 ünïcödé 東京 🙂 ") * 6,
]


def texts_for(max_tokens: int) -> list[str]:
    """The texts, with three at the model's limit: one token under, at, and over it with the two special tokens
    ("word" is one token in both vocabularies; the last one loses one word)."""
    at_limit = ["word " * (max_tokens - 3 + extra) for extra in range(3)]
    return [*TEXTS[:-2], *at_limit, *TEXTS[-2:]]


def _versions(package: str) -> str:
    packages = ("sentence-transformers", "transformers", "torch", "tokenizers")
    found = ", ".join(f"{p} {importlib.metadata.version(p)}" for p in packages)
    return f"{found}, source {package}"


def _source(model_id: str) -> tuple[Path, str]:
    """The sentence-transformers directory tools.modelrepo builds `model_id` from, and where it came from."""
    from tools.modelrepo.common import DEFAULT_CACHE
    from tools.modelrepo.defaults import FAMILIES

    family = next(f for f in FAMILIES if f.id == model_id)
    return family.locate(DEFAULT_CACHE), family.source_label()


def write_golden(model_id: str) -> None:
    from sentence_transformers import SentenceTransformer
    from tokenizers import Tokenizer

    upstream, max_tokens = MODELS[model_id]
    model_dir, label = _source(model_id)
    model = SentenceTransformer(str(model_dir), device="cpu")
    if model.max_seq_length != max_tokens:
        raise SystemExit(f"expected max_seq_length {max_tokens}, got {model.max_seq_length}")
    texts = texts_for(max_tokens)
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    counts = [len(tokenizer.encode(text).ids) for text in texts]
    vectors = model.encode(texts, normalize_embeddings=True, convert_to_numpy=True, batch_size=8)
    vectors = np.asarray(vectors, dtype="<f4")
    golden = {
        "model": upstream,
        "generator": f"tests/golden/make_golden.py: SentenceTransformer.encode(normalize_embeddings=True), cpu; "
        f"{_versions(label)}",
        "dimensions": int(vectors.shape[1]),
        "max_tokens": max_tokens,
        "texts": texts,
        "token_counts": counts,
        "truncated": [n > max_tokens for n in counts],
        "embeddings_f32_base64": [base64.b64encode(v.tobytes()).decode("ascii") for v in vectors],
    }
    out = HERE / f"{model_id}.json"
    out.write_text(json.dumps(golden, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {out}: {len(texts)} texts, {sum(golden['truncated'])} truncated, {min(counts)}..{max(counts)} tokens")


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(HERE.parent.parent))  # the repository root, for tools.modelrepo
    for model_id in argv or list(MODELS):
        if model_id not in MODELS:
            raise SystemExit(f"unknown model {model_id!r}; known: {', '.join(MODELS)}")
        write_golden(model_id)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
