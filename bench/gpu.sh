#!/usr/bin/env bash
# One shot on a machine with an NVIDIA GPU and onnxruntime-gpu (the project's default on Linux x86_64): builds the
# fp16 variant, measures the engine on the CUDA and TensorRT providers in process (fp32 and fp16, with and without
# IO binding: bench/gpu.py), then the serving path against a server on the GPU (bench/serving_path.py: the same
# table as on the CPU, its in-process limit on the same provider) for CUDA and for TensorRT. Results go to
# bench/results/gpu/ (OUT=... to change). Nothing here has been run on a GPU yet: see README, "Performance".
#
#   bash bench/gpu.sh            # MODEL=all-minilm-l6-v2-fp16 by default; QUICK=1 for a short pass
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-bench/results/gpu}
MODEL=${MODEL:-all-minilm-l6-v2-fp16}
QUICK_FLAG=$([ -n "${QUICK:-}" ] && echo --quick || true)

if ! nvidia-smi -L; then
  echo "bench/gpu.sh: no NVIDIA GPU here (nvidia-smi failed); bench.gpu alone runs its CPU rows" >&2
  exit 2
fi
"$PY" - <<'PY'
import onnxruntime as ort
from service.engine.backends.onnxruntime import choose_providers
available = ort.get_available_providers()
assert "CUDAExecutionProvider" in available, f"onnxruntime without CUDA: {available} (install onnxruntime-gpu)"
print("onnxruntime", ort.__version__, "providers available:", available, "chosen by auto:", choose_providers("auto"))
PY
mkdir -p "$OUT"
# fp32 and fp16 of MiniLM (the fp16 build is verified against fp32 on the CPU: cosine >= 0.99).
"$PY" -m tools.modelrepo build-defaults --repo models --models all-minilm-l6-v2,all-minilm-l6-v2-fp16
"$PY" -m bench.gpu --model-repo models --models all-minilm-l6-v2,all-minilm-l6-v2-fp16 --out "$OUT" $QUICK_FLAG
for providers in CUDAExecutionProvider TensorrtExecutionProvider,CUDAExecutionProvider; do
  name=$(echo "${providers%%,*}" | sed 's/ExecutionProvider//' | tr '[:upper:]' '[:lower:]')
  # TensorRT builds its engines on first use: the warm-up pass of serving_path absorbs it.
  "$PY" -m bench.serving_path --model-repo models --model "$MODEL" --providers "$providers" \
    --out "$OUT/$name" $QUICK_FLAG
done
echo "results: $OUT/gpu.md, $OUT/cuda/serving_path.md, $OUT/tensorrt/serving_path.md"
