"""The null backend: fixed, deterministic vectors at next to no cost, for measuring the serving path (tokenizing,
batching, the API) without a network's compute. A model directory needs only its manifest (`"backend": "null"`)
and tokenizer.json.

Every input's vector is the unit vector along the first axis (before shortening and normalization); the backend
returns it as pooled (see Backend.pools): no token embeddings are made, no pooling or Dense layer runs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from service.engine.backends import PaddedBatch, RuntimeOptions
from service.engine.manifest import ModelManifest


class NullBackend:
    pools = True

    def __init__(self, model_dir: Path, manifest: ModelManifest, options: RuntimeOptions) -> None:
        self.vector = np.zeros(manifest.dimensions, dtype=np.float32)
        self.vector[0] = 1.0

    def run(self, batch: PaddedBatch, solo: bool = False) -> np.ndarray:
        """A read-only view repeating the one vector: nothing is computed or allocated per input."""
        return np.broadcast_to(self.vector, (batch.input_ids.shape[0], self.vector.shape[0]))
