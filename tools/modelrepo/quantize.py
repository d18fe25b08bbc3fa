"""Lower-precision variants of a verified fp32 graph: dynamic int8 (CPUs) and float16 (GPUs)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tools.modelrepo.common import say
from tools.modelrepo.export import save_onnx

PRECISIONS = ("fp32", "int8", "fp16")


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


def quantize_int8(fp32_path: Path, out: Path) -> dict[str, Any]:
    """Dynamic int8 weights; per-channel scales keep MiniLM's cosine to fp32 near 0.99 (per-tensor: ~0.89)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    say("  quantizing to int8 (dynamic, per-channel QInt8 weights)")
    with _quiet_root_logger():
        quantize_dynamic(
            str(fp32_path),
            str(out),
            weight_type=QuantType.QInt8,
            per_channel=True,
            use_external_data_format=_is_large(fp32_path),
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    return {"method": "onnxruntime.quantization.quantize_dynamic", "weight_type": "QInt8", "per_channel": True}


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
