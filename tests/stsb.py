"""The STS Benchmark (CC BY-SA 4.0; tests/data/stsbenchmark, with its license and attribution) and its standard
score."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

STSB_DIR = Path(__file__).resolve().parent / "data" / "stsbenchmark"


@dataclass(frozen=True)
class StsPairs:
    first: list[str]
    second: list[str]
    scores: np.ndarray

    @property
    def sentences(self) -> list[str]:
        return self.first + self.second


def load_pairs(split: str = "test") -> StsPairs:
    """Sentence pairs with gold similarity scores (tab-separated; fields 5-7 are score, sentence 1, sentence 2)."""
    first, second, scores = [], [], []
    for line in (STSB_DIR / f"sts-{split}.csv").read_text(encoding="utf-8").splitlines():
        parts = line.split("\t")
        if len(parts) < 7:
            continue
        scores.append(float(parts[4]))
        first.append(parts[5])
        second.append(parts[6])
    return StsPairs(first, second, np.array(scores))


def spearman_x100(pairs: StsPairs, first_vectors: np.ndarray, second_vectors: np.ndarray) -> float:
    """MTEB's STS main score: Spearman correlation of cosine similarity with the gold scores, x100."""
    a = first_vectors / np.linalg.norm(first_vectors, axis=1, keepdims=True)
    b = second_vectors / np.linalg.norm(second_vectors, axis=1, keepdims=True)
    cosine = (a * b).sum(axis=1)
    return float(spearmanr(cosine, pairs.scores).statistic * 100)
