"""From token embeddings to vectors: pooling, Dense layers, then shortening and normalization.

The one implementation of sentence-transformers' Pooling and Dense modules in this project: the server applies it
to every batch and tools.modelrepo verifies exported models with it. Each mode follows sentence-transformers'
`Pooling._forward_padded` (6.x) exactly, for right- or left-padded batches alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the manifest validates its fields against this module's modes and activations
    from service.engine.manifest import DenseLayer, ModelManifest

# Same floor as sentence-transformers' mean pooling (clamp of the token count).
_MIN_TOKENS = 1e-9
# Same floor as torch.nn.functional.normalize: a zero vector stays zero instead of becoming NaN.
_MIN_NORM = 1e-12


def _first_real(mask: np.ndarray) -> np.ndarray:
    """Index of each row's first real token: its left padding (0 when right-padded)."""
    return mask.argmax(axis=1)


def exclude_prompt(attention_mask: np.ndarray, prompt_lengths: np.ndarray) -> np.ndarray:
    """The mask without each row's first `prompt_lengths[row]` real tokens (include_prompt=false)."""
    positions = np.arange(attention_mask.shape[1])[None, :]
    start = _first_real(attention_mask) + prompt_lengths
    return np.where(positions < start[:, None], 0, attention_mask)


def _masked_sum(token_embeddings: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """sum_t weights[b, t] * token_embeddings[b, t, :] as one batched matmul."""
    return np.matmul(weights[:, None, :], token_embeddings)[:, 0, :]


def _gather(token_embeddings: np.ndarray, index: np.ndarray) -> np.ndarray:
    return token_embeddings[np.arange(token_embeddings.shape[0]), index]


def _cls(token_embeddings: np.ndarray, mask: np.ndarray, original_mask: np.ndarray) -> np.ndarray:
    return _gather(token_embeddings, _first_real(mask))


def _last_token(token_embeddings: np.ndarray, mask: np.ndarray, original_mask: np.ndarray) -> np.ndarray:
    seq = mask.shape[1]
    flipped = mask[:, ::-1]
    last = seq - 1 - flipped.argmax(axis=1)
    last = np.where(flipped.max(axis=1) == 0, seq - 1, last)
    return _gather(token_embeddings, last) * mask[np.arange(mask.shape[0]), last][:, None]


def _max(token_embeddings: np.ndarray, mask: np.ndarray, original_mask: np.ndarray) -> np.ndarray:
    return np.where(mask[:, :, None] > 0, token_embeddings, -np.inf).max(axis=1)


def _token_counts(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    weights = mask.astype(np.float32)
    return weights, np.maximum(weights.sum(axis=1, keepdims=True), _MIN_TOKENS)


def _mean(token_embeddings: np.ndarray, mask: np.ndarray, original_mask: np.ndarray) -> np.ndarray:
    weights, counts = _token_counts(mask)
    return _masked_sum(token_embeddings, weights) / counts


def _mean_sqrt_len(token_embeddings: np.ndarray, mask: np.ndarray, original_mask: np.ndarray) -> np.ndarray:
    weights, counts = _token_counts(mask)
    return _masked_sum(token_embeddings, weights) / np.sqrt(counts)


def _weighted_mean(token_embeddings: np.ndarray, mask: np.ndarray, original_mask: np.ndarray) -> np.ndarray:
    # Position weights 1, 2, ... from the first real token; prompt tokens left out keep the others' weights.
    positions = np.arange(1, mask.shape[1] + 1, dtype=np.float32)[None, :]
    weights = mask.astype(np.float32) * (positions - _first_real(original_mask)[:, None])
    total = np.maximum(weights.sum(axis=1, keepdims=True), _MIN_TOKENS)
    return _masked_sum(token_embeddings, weights) / total


# (token embeddings [batch, seq, hidden], mask of the tokens pooled, mask of the real tokens) -> [batch, hidden]
Pooler = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
# sentence-transformers' pooling modes by their names: a manifest's `pooling` names one or several of them.
POOLERS: dict[str, Pooler] = {
    "cls": _cls,
    "max": _max,
    "mean": _mean,
    "mean_sqrt_len_tokens": _mean_sqrt_len,
    "weightedmean": _weighted_mean,
    "lasttoken": _last_token,
}
POOLING_MODES = tuple(POOLERS)
# Several modes may be combined ("cls+mean"): their vectors are concatenated in that order.
POOLING_SEPARATOR = "+"


def pool_mode(token_embeddings: np.ndarray, mask: np.ndarray, original_mask: np.ndarray, mode: str) -> np.ndarray:
    """One pooling mode over [batch, seq, hidden]; `mask` marks the tokens pooled, `original_mask` the real ones."""
    pooler = POOLERS.get(mode)
    if pooler is None:
        raise ValueError(f"unknown pooling mode {mode!r}")
    return pooler(token_embeddings, mask, original_mask)


def pool(
    token_embeddings: np.ndarray,
    attention_mask: np.ndarray,
    modes: str | Sequence[str],
    prompt_lengths: np.ndarray | None = None,
) -> np.ndarray:
    """Reduce [batch, seq, hidden] token embeddings to [batch, hidden x modes] float32 sentence embeddings.

    `prompt_lengths`: per row, leading real tokens to leave out (the prompt, when include_prompt is false).
    """
    modes = (modes,) if isinstance(modes, str) else tuple(modes)
    if token_embeddings.dtype != np.float32:
        token_embeddings = token_embeddings.astype(np.float32)
    mask = attention_mask
    if prompt_lengths is not None and np.any(prompt_lengths):
        mask = exclude_prompt(attention_mask, prompt_lengths)
    vectors = [pool_mode(token_embeddings, mask, attention_mask, mode) for mode in modes]
    pooled = vectors[0] if len(vectors) == 1 else np.concatenate(vectors, axis=1)
    return np.ascontiguousarray(pooled, dtype=np.float32)


# A Dense layer's activations, by their lower-case torch.nn class name.
ACTIVATIONS = {
    "identity": lambda x: x,
    "tanh": np.tanh,
    "relu": lambda x: np.maximum(x, 0.0),
    "sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
    "silu": lambda x: x / (1.0 + np.exp(-x)),
}


@dataclass(frozen=True)
class Dense:
    """A loaded Dense layer (see service.engine.manifest.DenseLayer); weights stored transposed for x @ weight."""

    weight: np.ndarray  # [in, out]
    bias: np.ndarray | None
    activation: str
    residual: np.ndarray | None  # [in, out] projection, or None
    add_input: bool  # residual connection without projection

    @classmethod
    def load(cls, model_dir: Path, layer: DenseLayer) -> Dense:
        with np.load(Path(model_dir) / layer.file, allow_pickle=False) as data:
            weight = np.asarray(data["weight"], dtype=np.float32)
            bias = np.asarray(data["bias"], dtype=np.float32) if layer.bias else None
            projection = layer.residual and layer.in_features != layer.out_features
            residual = np.asarray(data["residual"], dtype=np.float32).T.copy() if projection else None
        if weight.shape != (layer.out_features, layer.in_features):
            raise ValueError(f"{layer.file}: weight {weight.shape} != ({layer.out_features}, {layer.in_features})")
        add_input = layer.residual and not projection
        return cls(np.ascontiguousarray(weight.T), bias, layer.activation, residual, add_input)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        out = x @ self.weight
        if self.bias is not None:
            out += self.bias
        out = ACTIVATIONS[self.activation](out)
        if self.residual is not None:
            out = out + x @ self.residual
        elif self.add_input:
            out = out + x
        return out.astype(np.float32, copy=False)


@dataclass(frozen=True)
class EmbeddingHead:
    """Everything between the network's token embeddings and a vector: pooling, then the Dense layers."""

    modes: tuple[str, ...]
    dense: tuple[Dense, ...] = ()

    @classmethod
    def from_manifest(cls, manifest: ModelManifest, model_dir: Path) -> EmbeddingHead:
        return cls(manifest.pooling_modes, tuple(Dense.load(model_dir, layer) for layer in manifest.dense))

    def __call__(
        self, token_embeddings: np.ndarray, attention_mask: np.ndarray, prompt_lengths: np.ndarray | None = None
    ) -> np.ndarray:
        vectors = pool(token_embeddings, attention_mask, self.modes, prompt_lengths)
        for layer in self.dense:
            vectors = layer(vectors)
        return vectors


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
