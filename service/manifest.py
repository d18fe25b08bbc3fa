"""The model manifest: what a model directory in the repository declares about itself.

A model repository is a directory with one sub-directory per model (Triton-style). Each holds
`model.onnx` (inputs `input_ids`, `attention_mask` and optionally `token_type_ids`, int64
[batch, seq]; first output the token embeddings [batch, seq, hidden]), `tokenizer.json` (padding
and truncation disabled: the engine does both) and `manifest.json`, described by `ModelManifest`.

This module has no heavy dependencies so that both the server and the offline build tools use it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MANIFEST_FILE = "manifest.json"
MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
POOLING_MODES = ("mean", "cls")


class ManifestError(ValueError):
    """A manifest is missing, malformed or inconsistent."""


@dataclass(frozen=True)
class ModelManifest:
    """Everything the server needs to know about a model besides its weights and tokenizer."""

    id: str
    dimensions: int
    max_input_tokens: int
    pooling: str = "mean"
    normalize: bool = True
    aliases: tuple[str, ...] = ()
    # Sizes a caller may shorten vectors to with `dimensions` (Matryoshka-style). Empty: no shortening.
    shortened_dimensions: tuple[int, ...] = ()
    query_prefix: str = ""
    document_prefix: str = ""
    owned_by: str = "organization-owner"
    created: int = 0
    # Where the weights came from and how they were built (source package, quantization, scores).
    provenance: dict[str, Any] = field(default_factory=dict)
    # Cut inputs over max_input_tokens when a call does not say `truncate`; None: the server's `auto_truncate`.
    auto_truncate: bool | None = None

    def __post_init__(self) -> None:
        if not self.id or "\n" in self.id:
            raise ManifestError("manifest: 'id' must be a non-empty single-line string")
        if self.pooling not in POOLING_MODES:
            raise ManifestError(f"manifest {self.id}: pooling must be one of {POOLING_MODES}, got {self.pooling!r}")
        if self.dimensions < 1 or self.max_input_tokens < 2:
            raise ManifestError(f"manifest {self.id}: dimensions and max_input_tokens must be positive")
        if self.auto_truncate is not None and not isinstance(self.auto_truncate, bool):
            raise ManifestError(f"manifest {self.id}: auto_truncate must be true, false or absent")
        bad = [d for d in self.shortened_dimensions if not 1 <= d <= self.dimensions]
        if bad:
            raise ManifestError(f"manifest {self.id}: shortened_dimensions {bad} outside 1..{self.dimensions}")

    @property
    def names(self) -> tuple[str, ...]:
        """The id followed by every alias: all the names a caller may use."""
        return (self.id, *self.aliases)

    def allows_dimensions(self, dimensions: int) -> bool:
        return dimensions == self.dimensions or dimensions in self.shortened_dimensions

    def to_json(self) -> str:
        data = asdict(self)
        data["aliases"] = list(self.aliases)
        data["shortened_dimensions"] = list(self.shortened_dimensions)
        if self.auto_truncate is None:
            del data["auto_truncate"]  # the server's setting applies
        return json.dumps(data, indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelManifest:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ManifestError(f"manifest {data.get('id', '?')}: unknown keys {unknown}")
        try:
            values = dict(data)
            values["aliases"] = tuple(values.get("aliases", ()))
            values["shortened_dimensions"] = tuple(int(d) for d in values.get("shortened_dimensions", ()))
            return cls(**values)
        except TypeError as exc:
            raise ManifestError(f"manifest {data.get('id', '?')}: {exc}") from exc

    @classmethod
    def load(cls, model_dir: Path) -> ModelManifest:
        path = Path(model_dir) / MANIFEST_FILE
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ManifestError(f"cannot read {path}: {exc}") from exc
        return cls.from_dict(data)

    def save(self, model_dir: Path) -> Path:
        path = Path(model_dir) / MANIFEST_FILE
        path.write_text(self.to_json())
        return path
