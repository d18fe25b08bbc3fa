"""Backends: the runtimes that turn a padded batch of token ids into token embeddings.

A backend is chosen by a model's manifest (`"backend"`): a short name registered in `BACKENDS`, or an import path
`package.module:attr` naming a callable `(model_dir, manifest, options) -> Backend` (a class, usually). So a new
runtime is one new module plus a manifest value; the engine pads, pools, applies the Dense layers and normalizes
around it, whatever it is.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from service.engine.tokenize import TokenizedInput

if TYPE_CHECKING:
    from service.engine.manifest import ModelManifest

# The backends known by name; any other backend is named by its import path.
BACKENDS = {
    "onnxruntime": "service.engine.backends.onnxruntime:load",
    "null": "service.engine.backends.null:NullBackend",
}
_IMPORT_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
# The int64 [batch, seq] arrays a batch offers a network, by the names Hugging Face graphs give their inputs.
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")


@dataclass(frozen=True)
class RuntimeOptions:
    """How backends are built; shared by every model of a server (a backend uses what applies to it)."""

    # Execution providers in preference order (see onnxruntime.choose_providers).
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    intra_op_threads: int = 0
    inter_op_threads: int = 1
    # Threads of a second session for a batch that runs alone (nothing else queued or running); 0: no such session.
    solo_threads: int = 0
    # Use the process's shared CPU arena (see onnxruntime.share_cpu_arena) rather than one per session.
    shared_arena: bool = False
    # Options of an execution provider, by its name (e.g. {"CUDAExecutionProvider": {"device_id": "1"}}).
    provider_options: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    # Serve small lone batches from a model's offline-fused solo graph where it has one (faster for them; its
    # vectors differ from the plain graph's in the last float bits).
    solo_graph: bool = True


@dataclass(frozen=True)
class PaddedBatch:
    """A batch as a network takes it: right-padded int64 [batch, longest] arrays, and what pooling skips."""

    feeds: dict[str, np.ndarray]  # every name of INPUT_NAMES
    prompt_lengths: np.ndarray  # [batch]

    @property
    def input_ids(self) -> np.ndarray:
        return self.feeds["input_ids"]

    @property
    def attention_mask(self) -> np.ndarray:
        return self.feeds["attention_mask"]


def pad_batch(batch: Sequence[TokenizedInput]) -> PaddedBatch:
    """Pad a batch on the right to its longest input (the mask marks the real tokens)."""
    longest = max(item.length for item in batch)
    input_ids = np.zeros((len(batch), longest), dtype=np.int64)
    type_ids = np.zeros((len(batch), longest), dtype=np.int64)
    mask = np.zeros((len(batch), longest), dtype=np.int64)
    prompt_lengths = np.zeros(len(batch), dtype=np.int64)
    for row, item in enumerate(batch):
        input_ids[row, : item.length] = item.ids
        type_ids[row, : item.length] = item.type_ids
        mask[row, : item.length] = 1
        prompt_lengths[row] = item.prompt_length
    feeds = {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": type_ids}
    return PaddedBatch(feeds, prompt_lengths)


class Backend(Protocol):
    """What a runtime does: token embeddings for a padded batch. Called from several inference threads at once.

    A backend whose runtime pools by itself sets a class attribute `pools = True` (optional, false when absent):
    its `run` then returns sentence vectors [batch, dimensions], which the engine takes as they are (no pooling,
    no Dense layers; shortening and normalizing still apply).
    """

    def run(self, batch: PaddedBatch, solo: bool = False) -> np.ndarray:
        """float32 (or float16) token embeddings [batch, seq, hidden] for the batch's right-padded token ids.
        `solo`: the batch runs alone on the server, so it may spread over every core."""
        ...


# Builds a model's backend from its directory, its manifest and the server's runtime options; may raise
# ValueError or OSError for a model it cannot run.
BackendFactory = Callable[[Path, "ModelManifest", RuntimeOptions], Backend]


def is_backend_name(name: str) -> bool:
    """Whether a manifest's `backend` is well formed: a registered name or an import path."""
    return name in BACKENDS or bool(_IMPORT_PATH.match(name))


def backend_factory(name: str) -> BackendFactory:
    """The factory a manifest's `backend` names (imported on first use: a runtime is loaded only when served)."""
    module_name, _, attribute = BACKENDS.get(name, name).partition(":")
    if not attribute:
        raise ValueError(f"backend {name!r} is not one of {tuple(BACKENDS)} nor 'package.module:attr'")
    try:
        target = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"backend {name!r}: cannot import {module_name}: {exc}") from exc
    for part in attribute.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise ValueError(f"backend {name!r}: {module_name} has no {attribute}")
    if not callable(target):
        raise ValueError(f"backend {name!r}: {attribute} is not callable")
    return target
