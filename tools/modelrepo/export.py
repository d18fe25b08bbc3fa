"""From a source directory to the served files: tokenizer.json, model.onnx (token embeddings) and Dense weights.

torch and transformers are imported lazily: only building needs them, and a bad source fails before paying for them.
"""

from __future__ import annotations

import inspect
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.engine.backends import INPUT_NAMES
from service.engine.manifest import MODEL_FILE, DenseLayer
from tools.modelrepo.common import BuildError, offline, say
from tools.modelrepo.sources import Source, SourceDense

OPSET = 17
OUTPUT_NAME = "last_hidden_state"
# Protobuf cannot hold a model over 2 GiB: past this, weights go to model.onnx.data beside the graph.
EXTERNAL_DATA_BYTES = 1_800_000_000
EXTERNAL_DATA_FILE = MODEL_FILE + ".data"


@dataclass(frozen=True)
class Exported:
    """What the export made: the graph's inputs, and whether the network is causal (a decoder)."""

    input_names: tuple[str, ...]
    causal: bool


# ---------------------------------------------------------------------------------------------------------------
# Tokenizer


def write_tokenizer(source: Source, out: Path) -> None:
    """The tokenizer sentence-transformers uses (transformers' fast tokenizer), with padding and truncation off: the
    server pads per batch and truncates itself. do_lower_case is baked in as sentence-transformers does it: a
    Lowercase normalizer first, unless the tokenizer already lower-cases."""
    from tokenizers import normalizers

    tokenizer = load_reference_tokenizer(source).backend_tokenizer
    tokenizer.no_padding()
    tokenizer.no_truncation()
    if source.lowercase and not _has_lowercase(tokenizer.normalizer):
        current = tokenizer.normalizer
        steps: list[Any] = [normalizers.Lowercase()]
        if isinstance(current, normalizers.Sequence):
            steps += list(current)
        elif current is not None:
            steps.append(current)
        tokenizer.normalizer = normalizers.Sequence(steps)
    tokenizer.save(str(out))


def _has_lowercase(normalizer: Any) -> bool:
    from tokenizers import normalizers

    if isinstance(normalizer, normalizers.Lowercase):
        return True
    return isinstance(normalizer, normalizers.Sequence) and any(
        isinstance(n, normalizers.Lowercase) for n in normalizer
    )


def load_reference_tokenizer(source: Source) -> Any:
    offline()
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source.model_dir), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise BuildError(f"{source.model_dir}: transformers cannot load the tokenizer: {exc}") from exc
    if getattr(tokenizer, "backend_tokenizer", None) is None:
        raise BuildError(f"{source.model_dir}: no fast (tokenizers) tokenizer can be built for this model")
    return tokenizer


# ---------------------------------------------------------------------------------------------------------------
# The network


def load_torch_model(source: Source) -> Any:
    """Float32, eval mode, eager attention: the plainest graph to trace."""
    offline()
    import torch
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        model = AutoModel.from_pretrained(
            str(source.model_dir), dtype=torch.float32, attn_implementation="eager", local_files_only=True
        )
    except (OSError, ValueError) as exc:
        raise BuildError(f"{source.model_dir}: transformers cannot load the model: {exc}") from exc
    return model.eval()


def is_causal(model: Any) -> bool:
    """A decoder: its attention layers mask future tokens (Qwen3, Llama, ...)."""
    return any(getattr(module, "is_causal", False) is True for module in model.modules())


def input_names(model: Any) -> tuple[str, ...]:
    accepts_types = "token_type_ids" in inspect.signature(model.forward).parameters
    return INPUT_NAMES if accepts_types and not is_causal(model) else INPUT_NAMES[:2]


def token_embedding_module(model: Any) -> Any:
    """Wrap the model so it returns only last_hidden_state and takes a ready-made 4D additive attention mask.

    transformers builds its own mask from the 2D one with Python-level shape logic that tracing freezes to the
    example's shapes; a 4D mask is passed through untouched, so the traced graph stays valid for any batch/length.
    A decoder's mask is causal as well, and its positions count from 0 (the server pads on the right).
    """
    import torch

    causal = is_causal(model)
    window = sliding_window(model)

    class TokenEmbeddings(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any = None) -> Any:
            dtype = self.model.dtype
            allowed = attention_mask[:, None, None, :].bool()  # [batch, 1, query (broadcast), key]
            positions = torch.arange(input_ids.shape[1], device=input_ids.device)
            offset = positions[None, :] - positions[:, None]  # key - query
            extra: dict[str, Any] = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
            if causal:
                allowed = allowed & (offset <= 0)[None, None, :, :]
                extra.update(position_ids=positions[None, :].expand(input_ids.shape[0], -1), use_cache=False)
            blocked = torch.full((), torch.finfo(dtype).min, dtype=dtype)
            zero = torch.zeros((), dtype=dtype)
            mask: Any = torch.where(allowed, zero, blocked)
            if window is not None:  # local layers see only their window: one mask per layer type
                near = (offset > -window) if causal else (offset.abs() <= window)
                local = torch.where(allowed & near[None, None, :, :], zero, blocked)
                mask = {"full_attention": mask, "sliding_attention": local}
            return self.model(input_ids=input_ids, attention_mask=mask, **extra).last_hidden_state

    return TokenEmbeddings().eval()


def sliding_window(model: Any) -> int | None:
    """The window of the model's local-attention layers, if some layers have one (ModernBERT, Gemma, ...)."""
    config = model.config
    layer_types = set(getattr(config, "layer_types", None) or ())
    window = getattr(config, "sliding_window", None)
    return int(window) if "sliding_attention" in layer_types and window else None


def export_onnx(model: Any, out: Path, sample: dict[str, np.ndarray]) -> Exported:
    """Trace the token-embedding network to `out` (weights in model.onnx.data beside it when over 2 GB)."""
    import onnx
    import torch

    names = input_names(model)
    causal = is_causal(model)
    axes = {name: {0: "batch", 1: "sequence"} for name in [*names, OUTPUT_NAME]}
    say(f"  exporting ONNX (opset {OPSET}, inputs {', '.join(names)}{', causal attention' if causal else ''})")
    # The exporter writes a large model's weights as one file per tensor beside the graph: export into a scratch
    # directory, then save once, as one graph (and one data file if needed).
    with tempfile.TemporaryDirectory(prefix=".export-", dir=out.parent) as scratch:
        traced = Path(scratch) / MODEL_FILE
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                token_embedding_module(model),
                tuple(torch.from_numpy(sample[n]) for n in names),
                str(traced),
                dynamo=False,
                opset_version=OPSET,
                input_names=list(names),
                output_names=[OUTPUT_NAME],
                dynamic_axes=axes,
            )
        size = sum(p.stat().st_size for p in Path(scratch).iterdir())
        save_onnx(onnx.load(str(traced)), out, large=size > EXTERNAL_DATA_BYTES)
    onnx.checker.check_model(str(out))
    return Exported(names, causal)


def save_onnx(model: Any, path: Path, large: bool) -> None:
    """Save a graph, its weights inline or (large) in one `<name>.data` file beside it."""
    import onnx

    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)
    if large:
        onnx.save_model(
            model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=data.name,
            size_threshold=1024,
        )
    else:
        onnx.save_model(model, str(path))


def model_files(model_dir: Path) -> list[Path]:
    """The graph and, for a large model, its weights file."""
    path = model_dir / MODEL_FILE
    return [p for p in (path, path.with_name(EXTERNAL_DATA_FILE)) if p.is_file()]


def copy_model(src_dir: Path, dst: Path) -> None:
    """Copy a graph (and its data file) from one model directory to `dst` (a graph path)."""
    for path in model_files(src_dir):
        shutil.copyfile(path, dst.with_name(dst.name + path.name.removeprefix(MODEL_FILE)))


# ---------------------------------------------------------------------------------------------------------------
# Dense layers


def write_dense(source: Source, out_dir: Path) -> tuple[DenseLayer, ...]:
    """Each Dense module's weights as dense_<i>.npz (weight [out, in], bias, residual projection) for the engine."""
    layers = []
    for index, dense in enumerate(source.dense):
        tensors = _dense_tensors(dense)
        arrays = {"weight": tensors["linear.weight"]}
        if dense.bias:
            arrays["bias"] = tensors["linear.bias"]
        if dense.residual and dense.in_features != dense.out_features:
            arrays["residual"] = tensors["residual.weight"]
        name = f"dense_{index}.npz"
        np.savez(out_dir / name, **{k: np.asarray(v, dtype=np.float32) for k, v in arrays.items()})
        layers.append(
            DenseLayer(name, dense.in_features, dense.out_features, dense.activation, dense.bias, dense.residual)
        )
    return tuple(layers)


def _dense_tensors(dense: SourceDense) -> dict[str, np.ndarray]:
    safetensors = dense.path / "model.safetensors"
    if safetensors.is_file():
        from safetensors.numpy import load_file

        return load_file(str(safetensors))
    import torch

    for name in ("pytorch_model.bin", "model.pt", "model.pth"):
        if (dense.path / name).is_file():
            state = torch.load(str(dense.path / name), map_location="cpu", weights_only=True)
            return {key: value.float().numpy() for key, value in state.items()}
    raise BuildError(f"{dense.path}: no Dense weights (model.safetensors or pytorch_model.bin)")
