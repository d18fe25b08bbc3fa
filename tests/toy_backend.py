"""A toy backend, added the way a user adds one: this file plus `"backend": "tests.toy_backend:ToyBackend"` in a
model's manifest. Its "network" is a fixed embedding table looked up per token id; the engine pools (mean, per
the manifest), normalizes and serves it like any model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

TABLE_FILE = "table.npy"


class ToyBackend:
    """Token embeddings = rows of `table.npy` ([vocabulary, hidden] float32) in the model directory."""

    def __init__(self, model_dir: Path, manifest: object, options: object) -> None:
        self.table = np.load(Path(model_dir) / TABLE_FILE, allow_pickle=False)

    def run(self, batch, solo: bool = False) -> np.ndarray:
        return self.table[batch.input_ids]
