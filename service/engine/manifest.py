"""The model manifest: what a model directory in the repository declares about itself.

A model repository is a directory with one sub-directory per model (Triton-style). Each holds
`manifest.json` (described by `ModelManifest`), `tokenizer.json` (padding and truncation disabled: the
engine does both), `dense_<i>.npz` for each Dense layer applied after pooling, and what its backend
reads: for ONNX Runtime (the default) `model.onnx` (int64 [batch, seq] inputs among `input_ids`,
`attention_mask`, `token_type_ids`; first output the token embeddings [batch, seq, hidden]; a model
over 2 GB keeps its weights beside it in `model.onnx.data`; `solo_graph` may name a second, offline-fused graph
for small batches that run alone). See service/engine/backends.

This module needs no runtime (only numpy, through pooling) so that the offline build tools use it too.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from service.engine.backends import BACKENDS, is_backend_name
from service.engine.pooling import ACTIVATIONS, POOLING_MODES, POOLING_SEPARATOR
from service.engine.prices import parse_price

MANIFEST_FILE = "manifest.json"
MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
# Prompt names the API's input_type selects; a manifest may hold other names (kept from the source model).
INPUT_TYPE_PROMPTS = ("query", "document")


class ManifestError(ValueError):
    """A manifest is missing, malformed or inconsistent."""


@dataclass(frozen=True)
class DenseLayer:
    """A sentence-transformers Dense module after pooling: y = activation(x @ W.T + b) (+ x, or x @ R.T).

    Its weights are in `file` (an .npz beside the model: `weight` [out, in], `bias` [out] if `bias`, `residual`
    [out, in] if a residual connection changes the size).
    """

    file: str
    in_features: int
    out_features: int
    activation: str = "identity"
    bias: bool = True
    residual: bool = False

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DenseLayer:
        return cls(**data)


@dataclass(frozen=True)
class SoloGraph:
    """A second graph of the same network, fused offline (attention, LayerNorm, GELU as single operators), for
    batches that run alone on the CPU and are small: it runs one short text faster than the plain graph, and large
    batches slower, so it serves batches of at most `max_inputs` inputs and `max_tokens` padded tokens (inputs x
    longest). Written and verified against the plain graph by the build (tools/modelrepo/fuse.py)."""

    file: str
    max_inputs: int = 1
    max_tokens: int = 0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SoloGraph:
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ManifestError(f"solo_graph: unknown keys {unknown}")
        return cls(**data)

    def serves(self, inputs: int, padded_tokens: int) -> bool:
        return inputs <= self.max_inputs and padded_tokens <= self.max_tokens


@dataclass(frozen=True)
class ModelManifest:
    """Everything the server needs to know about a model besides its weights and tokenizer."""

    id: str
    dimensions: int
    max_input_tokens: int
    # One of POOLING_MODES, or several joined by "+" (concatenated in that order).
    pooling: str = "mean"
    # False: the prompt's tokens are left out of pooling (sentence-transformers' include_prompt).
    include_prompt: bool = True
    # Dense layers applied after pooling, in order; the last one's out_features is `dimensions`.
    dense: tuple[DenseLayer, ...] = ()
    normalize: bool = True
    aliases: tuple[str, ...] = ()
    # Sizes a caller may shorten vectors to with `dimensions` (Matryoshka-style). Empty: no shortening.
    shortened_dimensions: tuple[int, ...] = ()
    # Text prepended to inputs, by prompt name: "query" and "document" are the API's input types.
    prompts: dict[str, str] = field(default_factory=dict)
    # The prompt of calls that name no input type ("" for none), as sentence-transformers' default_prompt_name.
    default_prompt_name: str = ""
    # The runtime that turns token ids into token embeddings: a name of BACKENDS, or "package.module:attr".
    backend: str = "onnxruntime"
    # The network, as Hugging Face names it (config.json model_type: "bert", "qwen3", ...). ONNX Runtime does not
    # need it (the graph is self-contained); a backend that builds the network itself does.
    architecture: str = ""
    owned_by: str = "organization-owner"
    created: int = 0
    # Where the weights came from and how they were built (source package, quantization, scores).
    provenance: dict[str, Any] = field(default_factory=dict)
    # Cut inputs over max_input_tokens when a call does not say `truncate`; None: the server's `auto_truncate`.
    auto_truncate: bool | None = None
    # Per-dimension {"min": [...], "max": [...]} of the model's vectors over a fixed corpus, by
    # service.engine.quantize.ranges_key(dimensions, normalized): what the int8 and uint8 types scale by. Written at
    # build time (tools.modelrepo calibrate); empty: those two types are unavailable for the model.
    quantization_ranges: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    # What a million of the model's tokens cost (in the server's currency), a decimal written as a string ("0.02")
    # or a number; None: unpriced. The server may override it per model (its `model_prices` setting).
    price_per_million_tokens: str | None = None
    # The offline-fused graph for small batches that run alone (ONNX Runtime on the CPU); None: the plain graph
    # serves every batch (models built before it existed).
    solo_graph: SoloGraph | None = None

    def __post_init__(self) -> None:
        if not self.id or "\n" in self.id:
            raise ManifestError("manifest: 'id' must be a non-empty single-line string")
        unknown = [mode for mode in self.pooling_modes if mode not in POOLING_MODES]
        if not self.pooling_modes or unknown:
            raise ManifestError(
                f"manifest {self.id}: pooling must be one of {POOLING_MODES} (or several joined by "
                f"'{POOLING_SEPARATOR}'), got {self.pooling!r}"
            )
        if self.dimensions < 1 or self.max_input_tokens < 2:
            raise ManifestError(f"manifest {self.id}: dimensions and max_input_tokens must be positive")
        if self.auto_truncate is not None and not isinstance(self.auto_truncate, bool):
            raise ManifestError(f"manifest {self.id}: auto_truncate must be true, false or absent")
        bad = [d for d in self.shortened_dimensions if not 1 <= d <= self.dimensions]
        if bad:
            raise ManifestError(f"manifest {self.id}: shortened_dimensions {bad} outside 1..{self.dimensions}")
        if not is_backend_name(self.backend):
            raise ManifestError(
                f"manifest {self.id}: backend {self.backend!r} is neither one of {tuple(BACKENDS)} "
                "nor an import path 'package.module:attr'"
            )
        if self.default_prompt_name and self.default_prompt_name not in self.prompts:
            raise ManifestError(f"manifest {self.id}: default_prompt_name {self.default_prompt_name!r} is not a prompt")
        self._check_dense()
        self._check_solo_graph()
        if self.price_per_million_tokens is not None:
            try:
                parse_price(self.price_per_million_tokens)
            except ValueError as exc:
                raise ManifestError(f"manifest {self.id}: price_per_million_tokens: {exc}") from None

    def _check_dense(self) -> None:
        for index, layer in enumerate(self.dense):
            where = f"manifest {self.id}: dense[{index}]"
            if layer.activation not in ACTIVATIONS:
                raise ManifestError(f"{where}: activation {layer.activation!r} is not one of {tuple(ACTIVATIONS)}")
            if min(layer.in_features, layer.out_features) < 1 or "/" in layer.file or layer.file.startswith("."):
                raise ManifestError(f"{where}: needs positive sizes and a file name inside the model directory")
            if index and self.dense[index - 1].out_features != layer.in_features:
                raise ManifestError(f"{where}: in_features {layer.in_features} != previous out_features")
        if self.dense and self.dense[-1].out_features != self.dimensions:
            raise ManifestError(
                f"manifest {self.id}: the last dense layer gives {self.dense[-1].out_features} "
                f"dimensions, the manifest says {self.dimensions}"
            )

    def _check_solo_graph(self) -> None:
        solo = self.solo_graph
        if solo is None:
            return
        if not solo.file or "/" in solo.file or solo.file.startswith(".") or solo.file == MODEL_FILE:
            raise ManifestError(f"manifest {self.id}: solo_graph.file must name another file in the model directory")
        if solo.max_inputs < 1 or solo.max_tokens < 1:
            raise ManifestError(f"manifest {self.id}: solo_graph needs positive max_inputs and max_tokens")

    @property
    def pooling_modes(self) -> tuple[str, ...]:
        return tuple(mode for mode in self.pooling.split(POOLING_SEPARATOR) if mode)

    @property
    def names(self) -> tuple[str, ...]:
        """The id followed by every alias: all the names a caller may use."""
        return (self.id, *self.aliases)

    @property
    def query_prefix(self) -> str:
        return self.prompts.get("query", "")

    @property
    def document_prefix(self) -> str:
        return self.prompts.get("document", "")

    def prompt(self, input_type: str) -> str:
        """The text prepended to an input of `input_type`; a type without a prompt of its own (or "", for calls
        naming none) gets the default prompt, as sentence-transformers' encode_query/encode_document do."""
        name = input_type if input_type in self.prompts else self.default_prompt_name
        return self.prompts.get(name, "")

    @property
    def price(self) -> Decimal | None:
        """The price per million tokens the manifest declares, if any."""
        return None if self.price_per_million_tokens is None else parse_price(self.price_per_million_tokens)

    def allows_dimensions(self, dimensions: int) -> bool:
        return dimensions == self.dimensions or dimensions in self.shortened_dimensions

    def to_json(self) -> str:
        data = asdict(self)
        data["aliases"] = list(self.aliases)
        data["shortened_dimensions"] = list(self.shortened_dimensions)
        if self.auto_truncate is None:
            del data["auto_truncate"]  # the server's setting applies
        if not self.quantization_ranges:
            del data["quantization_ranges"]  # not calibrated
        if self.price_per_million_tokens is None:
            del data["price_per_million_tokens"]  # unpriced
        if self.solo_graph is None:
            del data["solo_graph"]  # built before it existed, or not fused
        data["dense"] = [asdict(layer) for layer in self.dense]
        return json.dumps(data, indent=2, sort_keys=False, ensure_ascii=False) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelManifest:
        values = _upgrade(dict(data))
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(values) - known)
        if unknown:
            raise ManifestError(f"manifest {data.get('id', '?')}: unknown keys {unknown}")
        try:
            values["aliases"] = tuple(values.get("aliases", ()))
            values["shortened_dimensions"] = tuple(int(d) for d in values.get("shortened_dimensions", ()))
            values["dense"] = tuple(DenseLayer.from_dict(layer) for layer in values.get("dense", ()))
            if values.get("solo_graph") is not None:
                values["solo_graph"] = SoloGraph.from_dict(values["solo_graph"])
            values["prompts"] = {str(k): str(v) for k, v in values.get("prompts", {}).items()}
            if values.get("price_per_million_tokens") is not None:
                values["price_per_million_tokens"] = str(values["price_per_million_tokens"])
            return cls(**values)
        except (TypeError, AttributeError) as exc:
            raise ManifestError(f"manifest {data.get('id', '?')}: {exc}") from exc

    @classmethod
    def load(cls, model_dir: Path) -> ModelManifest:
        path = Path(model_dir) / MANIFEST_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ManifestError(f"cannot read {path}: {exc}") from exc
        return cls.from_dict(data)

    def save(self, model_dir: Path) -> Path:
        path = Path(model_dir) / MANIFEST_FILE
        path.write_text(self.to_json(), encoding="utf-8")
        return path


def _upgrade(values: dict[str, Any]) -> dict[str, Any]:
    """Manifests written before `prompts` existed name their two prompts query_prefix and document_prefix."""
    legacy = {name: values.pop(f"{name}_prefix", "") for name in INPUT_TYPE_PROMPTS}
    prompts = dict(values.get("prompts") or {})
    for name, text in legacy.items():
        if text:
            prompts.setdefault(name, text)
    values["prompts"] = prompts
    return values
