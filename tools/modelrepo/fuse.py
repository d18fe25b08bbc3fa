"""The solo graph: a copy of the fp32 graph fused offline, for small batches that run alone on the CPU.

ONNX Runtime's own optimizer (run when a session loads) leaves each exported attention block as some twenty
operators: its attention fusion does not recognise the export's mask (a `Where` over the padding). Left that way,
all-MiniLM-L6-v2 runs 224 operators per batch. onnxruntime.transformers' offline fusion, once the mask is written
in a form it matches, makes each layer Attention + SkipLayerNormalization + BiasGelu (46 operators in all). A lone
short text on both cores pays per operator (each one hands work to the other thread and waits), so it runs faster
fused; batches large enough to keep both cores busy run slower fused. The manifest therefore says which batches
the solo graph serves (`SoloGraph`), measured with `python -m bench.lone_text`.

Only `opt_level` 0 fuses attention here: levels 1 and above first run ONNX Runtime's own passes, which rewrite the
subgraphs the fusion looks for (measured on all-MiniLM-L6-v2: no Attention fused at 1, 2 or 99).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.engine.manifest import SoloGraph
from tools.modelrepo.common import BuildError
from tools.modelrepo.quantize import _is_large, _quiet_root_logger

SOLO_GRAPH_FILE = "model.fused.onnx"
# The batches the solo graph serves, measured on the 2-core AMD EPYC machine with bench.lone_text (README,
# Performance; all-MiniLM-L6-v2 on both cores, fused / plain): one input of 8-16 tokens 0.78-0.88, 32 tokens
# 0.91-0.94, 64 tokens 0.97-0.98, 128 and 256 tokens 1.01-1.04; 2 and 4 inputs of 16 tokens 0.86-0.99, 32 inputs
# 1.05-1.09. So: up to 64 padded tokens, up to 4 inputs. Changing these needs a new TOOL_VERSION (they are written
# into the manifest at build time).
SOLO_MAX_INPUTS = 4
SOLO_MAX_TOKENS = 64
OPT_LEVEL = 0


class NotFusable(BuildError):
    """The graph cannot be fused as a whole: the model is served from its plain graph alone."""


@dataclass(frozen=True)
class AttentionShape:
    """What the fusion needs to know of the network (the export's reshapes are dynamic, so it cannot infer it)."""

    heads: int
    hidden_size: int
    layers: int
    bidirectional: bool  # no causal or sliding-window mask: the one mask form rewritten here

    @classmethod
    def of(cls, model: Any, causal: bool, windowed: bool) -> AttentionShape:
        config = model.config
        return cls(
            int(getattr(config, "num_attention_heads", 0) or 0),
            int(getattr(config, "hidden_size", 0) or 0),
            int(getattr(config, "num_hidden_layers", 0) or 0),
            not causal and not windowed,
        )


def solo_graph() -> SoloGraph:
    """The manifest entry of a solo graph written by `fuse`."""
    return SoloGraph(SOLO_GRAPH_FILE, SOLO_MAX_INPUTS, SOLO_MAX_TOKENS)


def fuse(plain: Path, out: Path, shape: AttentionShape) -> dict[str, Any]:
    """Write the fused graph of `plain` to `out`; returns the build record. NotFusable when some layer's attention
    (or anything else that makes it pay) does not fuse."""
    import onnx
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    if not shape.bidirectional:
        raise NotFusable("causal or windowed attention: its mask is not one the fusion matches")
    if _is_large(plain):
        raise NotFusable("weights kept beside the graph (over 2 GB): not fused")
    if min(shape.heads, shape.hidden_size, shape.layers) < 1:
        raise NotFusable("the model's config does not give its attention heads, hidden size and layers")
    model = onnx.load(str(plain))
    if not rewrite_padding_mask(model.graph):
        raise NotFusable("no padding mask of the exported form in the graph")
    with _quiet_root_logger():
        fused = optimize_model(
            model,
            model_type="bert",
            num_heads=shape.heads,
            hidden_size=shape.hidden_size,
            opt_level=OPT_LEVEL,
            use_gpu=False,
            optimization_options=FusionOptions("bert"),
        )
    counts = {op: n for op, n in fused.get_fused_operator_statistics().items() if n}
    if counts.get("Attention", 0) != shape.layers:
        raise NotFusable(f"attention fused in {counts.get('Attention', 0)} of {shape.layers} layers")
    fused.save_model_to_file(str(out))
    return {
        "file": out.name,
        "method": "onnxruntime.transformers.optimizer.optimize_model",
        "model_type": "bert",
        "opt_level": OPT_LEVEL,
        "fused_operators": counts,
        "operators": len(fused.model.graph.node),
    }


def rewrite_padding_mask(graph: Any) -> bool:
    """Rewrite the export's additive padding mask in the form the attention fusion matches; True if it was found.

    The export (export.token_embedding_module) computes it as Where(Cast<bool>(mask[:, None, None, :]), 0, lowest).
    The fusion knows the mask PyTorch's scaled-dot-product attention exports:
    Where(Cast<bool>(Sub(1, Expand(mask[:, None, None, :]))), lowest, 0), the same values; the fused Attention then
    takes the 2D attention_mask itself.
    """
    from onnx import TensorProto, helper

    producers = {output: node for node in graph.node for output in node.output}
    for index, where in enumerate(graph.node):
        if where.op_type != "Where" or len(where.input) != 3:
            continue
        cast = producers.get(where.input[0])
        allowed, blocked = _scalar(graph, producers, where.input[1]), _scalar(graph, producers, where.input[2])
        if cast is None or cast.op_type != "Cast" or allowed != 0.0 or blocked is None or blocked >= 0:
            continue
        unsqueezed = cast.input[0]
        if not _is_unsqueezed_input(producers, unsqueezed):
            continue
        name = where.output[0] + "/padding"
        nodes = [
            _constant(name + "/ones_shape", np.array([1], dtype=np.int64)),
            helper.make_node("Expand", [unsqueezed, name + "/ones_shape"], [name + "/expanded"]),
            _constant(name + "/one", np.array(1, dtype=np.int64)),
            helper.make_node("Sub", [name + "/one", name + "/expanded"], [name + "/padding"]),
            helper.make_node("Cast", [name + "/padding"], [name + "/is_padding"], to=TensorProto.BOOL),
            helper.make_node("Where", [name + "/is_padding", where.input[2], where.input[1]], [where.output[0]]),
        ]
        graph.node.remove(where)
        for offset, node in enumerate(nodes):
            graph.node.insert(index + offset, node)
        return True
    return False


def _is_unsqueezed_input(producers: dict[str, Any], name: str) -> bool:
    """`name` is attention_mask unsqueezed twice (mask[:, None, None, :])."""
    outer = producers.get(name)
    inner = producers.get(outer.input[0]) if outer is not None and outer.op_type == "Unsqueeze" else None
    return inner is not None and inner.op_type == "Unsqueeze" and inner.input[0] == "attention_mask"


def _scalar(graph: Any, producers: dict[str, Any], name: str) -> float | None:
    """The value of a one-element constant (a Constant node or an initializer), else None."""
    from onnx import numpy_helper

    node = producers.get(name)
    if node is not None and node.op_type == "Constant":
        value = next((numpy_helper.to_array(a.t) for a in node.attribute if a.name == "value"), None)
    else:
        value = next((numpy_helper.to_array(t) for t in graph.initializer if t.name == name), None)
    return float(value.reshape(())) if value is not None and value.size == 1 else None


def _constant(name: str, value: np.ndarray) -> Any:
    from onnx import helper, numpy_helper

    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value, name))
