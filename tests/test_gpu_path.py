"""The GPU path as far as a machine without a GPU can take it: provider selection, the plan for a GPU, and the GPU
benchmark's code (IO binding included) on the CPU device. bench/gpu.sh itself needs a GPU: here it must say so."""

from __future__ import annotations

import subprocess

import numpy as np
import onnxruntime as ort
import pytest

from bench.gpu import Runner, Setup, measure, run_batches, setups
from service.engine.backends.onnxruntime import CPU, CUDA, TENSORRT, _cuda_device_count, choose_providers
from service.engine.registry import discover, plan_parallelism
from service.engine.tokenize import TextTokenizer
from tests.serving import ROOT
from tests.stsb import load_pairs

MODEL = "all-minilm-l6-v2"
NO_GPU = _cuda_device_count() == 0


@pytest.mark.skipif(not NO_GPU, reason="a GPU is present")
def test_auto_keeps_a_host_without_a_gpu_on_the_cpu():
    assert choose_providers("auto") == [CPU]


def test_named_gpu_providers_are_chosen_in_order_with_the_cpu_last():
    available = ort.get_available_providers()
    if CUDA not in available:
        with pytest.raises(ValueError, match="not available"):
            choose_providers(CUDA)
        return
    assert choose_providers(CUDA) == [CUDA, CPU]
    if TENSORRT in available:
        assert choose_providers(f"{TENSORRT},{CUDA}") == [TENSORRT, CUDA, CPU]


def test_a_gpu_runs_one_batch_at_a_time_with_the_runtimes_threads():
    assert plan_parallelism((CUDA, CPU), 0, 0) == (1, 0, 0)
    assert plan_parallelism((TENSORRT, CUDA, CPU), 0, 0)[0] == 1


def test_the_gpu_benchmark_plans_every_provider_with_and_without_io_binding():
    names = [s.name for s in setups([MODEL, f"{MODEL}-fp16"], gpu=True)]
    assert len(names) == 2 + 2 * 2 * 2 and len(set(names)) == len(names)
    assert [s.providers[0] for s in setups([MODEL], gpu=False)] == [CPU, CPU]


def test_io_binding_gives_the_vectors_of_a_plain_run(model_repo):
    model_dir = discover(model_repo, (MODEL,))[0]
    texts = load_pairs("test").sentences[:48]
    tokens = TextTokenizer(model_dir / "tokenizer.json", 256).encode(texts, truncate=True)
    plain, _, _ = run_batches(Runner(model_dir, Setup(MODEL, (CPU,))), tokens, 16)
    bound_runner = Runner(model_dir, Setup(MODEL, (CPU,), io_binding=True))
    assert bound_runner.device == "cpu"
    bound, rate, batch_ms = run_batches(bound_runner, tokens, 16)
    np.testing.assert_allclose(bound, plain, atol=1e-6)
    assert rate > 0 and batch_ms > 0


def test_the_benchmark_measures_the_cpu_rows_without_a_gpu(model_repo):
    if not NO_GPU:
        pytest.skip("a GPU is present: bench/gpu.sh measures it")
    rows = measure(model_repo, [MODEL], [8], load_pairs("test").sentences[:32])
    assert [r.active_provider for r in rows] == [CPU, CPU]
    assert all(r.min_cosine_vs_cpu_fp32 > 0.99999 for r in rows)


@pytest.mark.skipif(not NO_GPU, reason="a GPU is present")
def test_gpu_sh_says_there_is_no_gpu():
    done = subprocess.run(["bash", "bench/gpu.sh"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "no NVIDIA GPU" in done.stderr
