"""The null backend: fixed, deterministic token embeddings at next to no cost, for measuring the serving path
(tokenizing, batching, pooling, the API) without a network's compute. A model directory needs only its manifest
(`"backend": "null"`) and tokenizer.json.

Every token of every input gets the same embedding, so every input's vector is that embedding (pooled, through the
Dense layers if any, normalized as the manifest says): a unit vector along the first axis, before the Dense layers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from service.engine.backends import PaddedBatch, RuntimeOptions
from service.engine.manifest import ModelManifest


class NullBackend:
    def __init__(self, model_dir: Path, manifest: ModelManifest, options: RuntimeOptions) -> None:
        hidden = manifest.dense[0].in_features if manifest.dense else manifest.dimensions
        hidden //= len(manifest.pooling_modes)  # several modes concatenate a vector each
        self.embedding = np.zeros(hidden, dtype=np.float32)
        self.embedding[0] = 1.0

    def run(self, batch: PaddedBatch, solo: bool = False) -> np.ndarray:
        """A read-only view repeating the one embedding: nothing is computed or allocated per token."""
        rows, tokens = batch.input_ids.shape
        return np.broadcast_to(self.embedding, (rows, tokens, self.embedding.shape[0]))
