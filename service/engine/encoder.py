"""A model's encoder: pad a batch, run its backend, pool the token embeddings and apply the Dense layers."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from service.engine.backends import Backend, pad_batch
from service.engine.pooling import EmbeddingHead
from service.engine.tokenize import TokenizedInput


class Encoder:
    """Pooled, not yet normalized, float32 vectors for batches of tokenized inputs: what the batcher runs."""

    def __init__(self, backend: Backend, head: EmbeddingHead) -> None:
        self.backend = backend
        self.head = head
        # The backend returns sentence vectors itself (see Backend).
        self._pooled = bool(getattr(backend, "pools", False))

    def embed(self, batch: Sequence[TokenizedInput], solo: bool = False) -> np.ndarray:
        """Vectors [len(batch), dimensions] for one batch, padded on the right to its longest input.

        `solo`: the batch runs alone, so the backend may spread it over every core.
        """
        padded = pad_batch(batch)
        output = self.backend.run(padded, solo=solo)
        if self._pooled:
            return output
        return self.head(output, padded.attention_mask, padded.prompt_lengths)
