"""Pooling of token embeddings and the exact post-processing of vectors (shorten, normalize)."""

from __future__ import annotations

import numpy as np

# Same floor as sentence-transformers' mean pooling (clamp of the token count).
_MIN_TOKENS = 1e-9
# Same floor as torch.nn.functional.normalize: a zero vector stays zero instead of becoming NaN.
_MIN_NORM = 1e-12


def pool(token_embeddings: np.ndarray, attention_mask: np.ndarray, mode: str) -> np.ndarray:
    """Reduce [batch, seq, hidden] token embeddings to [batch, hidden] float32 sentence embeddings."""
    if mode == "cls":
        return np.ascontiguousarray(token_embeddings[:, 0, :], dtype=np.float32)
    if mode == "mean":
        mask = attention_mask.astype(np.float32)
        summed = np.matmul(mask[:, None, :], token_embeddings)[:, 0, :]
        counts = np.maximum(mask.sum(axis=1, keepdims=True), _MIN_TOKENS)
        return (summed / counts).astype(np.float32, copy=False)
    raise ValueError(f"unknown pooling mode {mode!r}")


def finalize(vectors: np.ndarray, dimensions: int | None, normalize: bool) -> np.ndarray:
    """Shorten to `dimensions` (Matryoshka), then scale to unit length when asked."""
    if dimensions is not None and dimensions < vectors.shape[1]:
        vectors = vectors[:, :dimensions]
    if normalize:
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors = vectors / np.maximum(norms, _MIN_NORM)
    return np.ascontiguousarray(vectors, dtype=np.float32)


def non_finite_rows(vectors: np.ndarray) -> np.ndarray:
    """Indices of vectors holding NaN or Inf, which must never leave the service."""
    return np.flatnonzero(~np.isfinite(vectors).all(axis=1))
