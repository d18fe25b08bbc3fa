"""Benchmark texts: the STS-B test sentences (short) and passages of 200-500 tokens made from the dev sentences.

Only the STS-B dev and test splits are on disk; the long set is built from the dev split so that it shares no
sentence with the short set. It is deterministic (same sentences, same order, same length targets every run), so
figures of different runs compare.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from service.engine.tokenize import TextTokenizer
from tests.stsb import load_pairs

LONG_PASSAGES = 200
LONG_MIN_TOKENS = 200
LONG_MAX_TOKENS = 500
LONG_SEED = 20240601


@dataclass(frozen=True)
class TextSet:
    """Texts with their token counts as the model processes them (special tokens in, after truncation)."""

    name: str
    texts: list[str]
    tokens: list[int]

    def head(self, n: int) -> TextSet:
        return TextSet(self.name, self.texts[:n], self.tokens[:n])


def long_passages(
    tokenizer: TextTokenizer,
    sentences: Sequence[str],
    count: int = LONG_PASSAGES,
    low: int = LONG_MIN_TOKENS,
    high: int = LONG_MAX_TOKENS,
) -> list[str]:
    """`count` passages of `low`-`high` tokens (untruncated count, special tokens included), each made by joining
    consecutive `sentences` (cycling through them) until a length target drawn uniformly in the range is reached.

    Lengths are spread over the range rather than all near one value, as documents of a real corpus are.
    """
    targets = np.random.default_rng(LONG_SEED).integers(low, high - 40, size=count, endpoint=True)
    passages: list[str] = []
    cursor = 0
    for target in targets:
        parts: list[str] = []
        while _tokens(tokenizer, parts) < target:
            parts.append(sentences[cursor % len(sentences)].strip())
            cursor += 1
        while _tokens(tokenizer, parts) > high:  # one long last sentence may overshoot
            parts.pop()
        passages.append(" ".join(parts))
    lengths = [_tokens(tokenizer, [p]) for p in passages]
    if min(lengths) < low or max(lengths) > high:
        raise RuntimeError(f"long passages span {min(lengths)}-{max(lengths)} tokens, not {low}-{high}")
    return passages


def _tokens(tokenizer: TextTokenizer, parts: Sequence[str]) -> int:
    return tokenizer.encode([" ".join(parts)])[0].original_length if parts else 0


def load_text_sets(tokenizer: TextTokenizer) -> tuple[TextSet, TextSet]:
    """(STS-B test sentences, long passages from STS-B dev), with model-side token counts."""

    def counted(name: str, texts: list[str]) -> TextSet:
        encoded = tokenizer.encode(texts, truncate=True)  # cut as the server cuts them
        return TextSet(name, texts, [item.length for item in encoded])

    short = counted("stsb", load_pairs("test").sentences)
    long = counted("long", long_passages(tokenizer, load_pairs("dev").sentences))
    return short, long
