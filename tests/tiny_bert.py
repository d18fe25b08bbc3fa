"""A tiny randomly initialised BERT, made inside the tests, saved the ways real models are published.

It proves the generic import path (and serves as a model with prefixes and shortened dimensions) without a network.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from service.engine.manifest import TOKENIZER_FILE

HIDDEN = 32
WORDS = [
    *("the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "hello", "world", "a", "an", "is", "of", "and"),
    *("to", "in", "what", "how", "why", "where", "search", "vector", "embedding", "model", "server", "batch", "token"),
    *("text", "query", "document", "short", "long", "sentence", "cat", "sat", "on", "mat"),
]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, "##s", "##ing", "##ed", ".", ",", "?", "!", ":"]


def build_tiny_sources(root: Path) -> dict[str, Path]:
    """Tiny random BERT saved as: ST mean+Normalize (with prompts), ST cls, ST max, two pipelines the server
    refuses (LayerNorm after pooling, a GELU Dense layer), and a plain HF directory."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, LayerNorm, Normalize, Pooling, Transformer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    (root / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(VOCAB),
        hidden_size=HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    hf = root / "tiny-hf"
    BertModel(config).eval().save_pretrained(hf)
    # transformers 5 ignores `vocab_file` here (every word becomes [UNK]); the vocab mapping works.
    BertTokenizerFast(vocab={word: i for i, word in enumerate(VOCAB)}).save_pretrained(hf)

    def st(name: str, pooling: str, normalize: bool, max_seq_length: int | None, *extra, **kwargs: object) -> Path:
        modules = [Transformer(str(hf), max_seq_length=max_seq_length), Pooling(HIDDEN, pooling), *extra]
        model = SentenceTransformer(modules=[*modules, *([Normalize()] if normalize else [])], **kwargs)
        model.save(str(root / name), create_model_card=False)
        return root / name

    paths = {
        "mean": st("tiny-mean", "mean", True, 40, prompts={"query": "query: ", "document": "passage: "}),
        "cls": st("tiny-cls", "cls", False, 48),
        "max": st("tiny-max", "max", True, None),
        # What the server refuses: a module that is not plain math it applies, and a Dense activation it lacks.
        "layernorm": st("tiny-layernorm", "mean", False, None, LayerNorm(HIDDEN)),
        "gelu": st("tiny-gelu", "mean", True, None, Dense(HIDDEN, 8, activation_function=torch.nn.GELU())),
        "hf": hf,
    }
    # The plain HF directory keeps only vocab.txt: the tool must build tokenizer.json with transformers.
    (hf / TOKENIZER_FILE).unlink()
    shutil.copy(root / "vocab.txt", hf / "vocab.txt")
    return paths
