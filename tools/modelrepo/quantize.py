"""Lower-precision variants of a verified fp32 graph: dynamic int8 (CPUs) and float16 (GPUs)."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from tools.modelrepo.common import say
from tools.modelrepo.export import save_onnx

PRECISIONS = ("fp32", "int8", "fp16")
# Share of weight MatMuls int8 leaves in float32: those whose inputs have the widest outliers.
FP32_SHARE = 1 / 3


@contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """onnxruntime's tools log hints on the root logger."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _is_large(fp32_path: Path) -> bool:
    """The fp32 graph keeps its weights in a data file: so do its variants (int8 to be safe, fp16 at 1 GB+)."""
    return fp32_path.with_name(fp32_path.name + ".data").is_file()


def quantize_int8(fp32_path: Path, out: Path, feeds: dict[str, np.ndarray], keep_outliers: bool) -> dict[str, Any]:
    """Dynamic int8: per-channel 8-bit weights, activations quantized per tensor at run time.

    First plan (`keep_outliers` false): signed weights on every weight MatMul; MiniLM keeps a cosine to fp32 near
    0.98 (per-tensor scales: ~0.89). It fails some models: CPUs without VNNI (AVX2) multiply u8 x s8 pairs into
    saturating 16-bit sums, and a per-tensor activation scale cannot hold a layer input with outliers
    (all-mpnet-base-v2: cosine to fp32 ~0). The second plan uses unsigned weights (no saturation) and keeps in
    float32 the third of the MatMuls whose inputs, measured on `feeds`, spread widest relative to their deviation.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    kept: list[str] = []
    total = None
    if keep_outliers:
        spread = _input_spread(fp32_path, feeds)
        kept, total = (
            sorted(spread, key=spread.__getitem__, reverse=True)[: round(len(spread) * FP32_SHARE)],
            len(spread),
        )
    weight_type = QuantType.QUInt8 if keep_outliers else QuantType.QInt8
    kept_note = f"; {len(kept)} of {total} MatMuls kept in float32" if keep_outliers else ""
    say(f"  quantizing to int8 (dynamic, per-channel {weight_type.name} weights{kept_note})")
    with _quiet_root_logger():
        quantize_dynamic(
            str(fp32_path),
            str(out),
            weight_type=weight_type,
            per_channel=True,
            nodes_to_exclude=kept,
            use_external_data_format=_is_large(fp32_path),
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    record: dict[str, Any] = {
        "method": "onnxruntime.quantization.quantize_dynamic",
        "weight_type": weight_type.name,
        "per_channel": True,
    }
    if keep_outliers:
        record["float32_matmuls"] = f"{len(kept)} of {total}"
    return record


def _input_spread(fp32_path: Path, feeds: dict[str, np.ndarray]) -> dict[str, float]:
    """(max - min) / standard deviation of each weight MatMul's input over the real tokens of `feeds`."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(fp32_path))
    weights = {init.name for init in model.graph.initializer}
    inputs = {
        node.name: node.input[0] for node in model.graph.node if node.op_type == "MatMul" and node.input[1] in weights
    }
    for name in sorted(set(inputs.values())):
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    with tempfile.TemporaryDirectory(prefix=".probe-", dir=fp32_path.parent) as scratch:
        probe = Path(scratch) / "probe.onnx"
        onnx.save_model(model, str(probe), save_as_external_data=_is_large(fp32_path), location="probe.onnx.data")
        session = ort.InferenceSession(str(probe), options, providers=["CPUExecutionProvider"])
        names = [output.name for output in session.get_outputs()]
        feed = {i.name: feeds[i.name] for i in session.get_inputs()}
        values = dict(zip(names, session.run(None, feed), strict=True))
    real = feeds["attention_mask"].astype(bool)
    spread = {}
    for node, name in inputs.items():
        x = values[name][real] if values[name].shape[:2] == real.shape else values[name]
        spread[node] = float((x.max() - x.min()) / max(float(x.std()), 1e-12))
    return spread


def convert_fp16(fp32_path: Path, out: Path) -> dict[str, Any]:
    """float16 weights and activations inside the graph; inputs and the output stay as they were (int64 ids in,
    float32 token embeddings out), so the engine feeds and pools every precision alike."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    say("  converting to float16 (weights and activations; float32 output)")
    model = onnx.load(str(fp32_path))
    with _quiet_root_logger():
        half = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=_is_large(fp32_path))
    save_onnx(half, out, large=_is_large(fp32_path))
    onnx.checker.check_model(str(out))
    return {"method": "onnxruntime.transformers.float16.convert_float_to_float16", "keep_io_types": True}
