"""The engine on ONNX Runtime's GPU providers, in process: CUDA and TensorRT, fp32 and fp16, with and without IO
binding, against the CPU, on the same texts (`bench/gpu.sh` runs it, then the serving path on a GPU server).

Per (model variant, providers, IO binding) and batch size: sentences/s over the STS-B test sentences (sorted by
length, fixed batches: the in-process limit's batching), the median time of one batch, and the lowest cosine of
its vectors against fp32 on the CPU. With IO binding the inputs are copied to the device once and the output is
bound to a device buffer that is copied back once per batch (`run_with_iobinding`), instead of the session copying
every feed and fetch itself.

On a machine without a GPU only the CPU rows run (the code path of IO binding included, on the CPU device), which
keeps this script tested where no GPU is (tests/test_gpu_path.py).

    python -m bench.gpu [--model-repo models] [--models all-minilm-l6-v2,all-minilm-l6-v2-fp16] [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from bench.common import machine_facts, min_cosine
from bench.report import RESULTS
from service.engine.backends import INPUT_NAMES, RuntimeOptions, pad_batch
from service.engine.backends.onnxruntime import CPU, CUDA, TENSORRT, OnnxRuntimeBackend
from service.engine.manifest import MODEL_FILE, TOKENIZER_FILE, ModelManifest
from service.engine.pooling import EmbeddingHead, finalize
from service.engine.registry import discover
from service.engine.tokenize import TextTokenizer, TokenizedInput
from tests.stsb import load_pairs

DEVICE = {CPU: "cpu", CUDA: "cuda", TENSORRT: "cuda"}


@dataclass(frozen=True)
class Setup:
    """One way to run a model: its variant, the providers in order, their options, IO binding or not."""

    model: str
    providers: tuple[str, ...]
    options: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ()
    io_binding: bool = False

    @property
    def name(self) -> str:
        binding = ", IO binding" if self.io_binding else ""
        return f"{self.model} on {self.providers[0].removesuffix('ExecutionProvider')}{binding}"

    def runtime(self) -> RuntimeOptions:
        return RuntimeOptions(self.providers, provider_options={name: dict(opts) for name, opts in self.options})


def setups(models: Sequence[str], gpu: bool) -> list[Setup]:
    """The CPU reference (fp32 only: fp16 is for GPUs), then CUDA and TensorRT for every variant, each with and
    without IO binding. TensorRT builds engines for fp16 itself when asked (trt_fp16_enable) and caches them."""
    fp32 = models[0]
    out = [Setup(fp32, (CPU,)), Setup(fp32, (CPU,), io_binding=True)]
    if not gpu:
        return out
    trt = (TENSORRT, (("trt_fp16_enable", "True"), ("trt_engine_cache_enable", "True"),
                      ("trt_engine_cache_path", "build/trt-cache")))  # fmt: skip
    for model in models:
        for binding in (False, True):
            out.append(Setup(model, (CUDA, CPU), io_binding=binding))
            out.append(Setup(model, (TENSORRT, CUDA, CPU), (trt,), io_binding=binding))
    return out


class Runner:
    """A model's session and head, run on padded batches with or without IO binding."""

    def __init__(self, model_dir: Path, setup: Setup) -> None:
        manifest = ModelManifest.load(model_dir)
        self.backend = OnnxRuntimeBackend(model_dir / MODEL_FILE, setup.runtime())
        self.head = EmbeddingHead.from_manifest(manifest, model_dir)
        self.normalize = manifest.normalize
        self.session = self.backend.session
        self.device = DEVICE[self.session.get_providers()[0]]
        self.io_binding = setup.io_binding
        self.inputs = tuple(i.name for i in self.session.get_inputs())
        self.output = self.session.get_outputs()[0].name

    def token_embeddings(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        if not self.io_binding:
            return self.session.run([self.output], {name: feeds[name] for name in self.inputs})[0]
        binding = self.session.io_binding()
        for name in self.inputs:
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(feeds[name], self.device, 0))
        binding.bind_output(self.output, self.device)
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    def embed(self, batch: Sequence[TokenizedInput]) -> np.ndarray:
        padded = pad_batch(batch)
        feeds = {name: padded.feeds[name] for name in INPUT_NAMES}
        pooled = self.head(self.token_embeddings(feeds), padded.attention_mask, padded.prompt_lengths)
        return finalize(pooled, None, self.normalize)


@dataclass
class Row:
    setup: str
    active_provider: str
    batch_size: int
    sentences_per_s: float
    batch_ms_p50: float
    min_cosine_vs_cpu_fp32: float


def run_batches(runner: Runner, tokens: list[TokenizedInput], batch_size: int) -> tuple[np.ndarray, float, float]:
    """Vectors in input order, sentences/s, and the median ms of one batch (length-sorted fixed batches)."""
    order = sorted(range(len(tokens)), key=lambda i: tokens[i].length)
    vectors = np.empty((len(tokens), 0), dtype=np.float32)
    times = []
    started = time.perf_counter()
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        began = time.perf_counter()
        out = runner.embed([tokens[i] for i in rows])
        times.append(time.perf_counter() - began)
        if vectors.shape[1] == 0:
            vectors = np.empty((len(tokens), out.shape[1]), dtype=np.float32)
        vectors[rows] = out
    return vectors, len(tokens) / (time.perf_counter() - started), 1000 * statistics.median(times)


def best_rate(model_dir: Path, model: str, providers: Sequence[str], texts: list[str]) -> tuple[str, float]:
    """The in-process limit on a device: the best of a few batch sizes, IO binding on (bench.serving_path's limit
    when its server runs on a GPU)."""
    runner = Runner(model_dir, Setup(model, tuple(providers), io_binding=True))
    manifest = ModelManifest.load(model_dir)
    tokens = TextTokenizer(model_dir / TOKENIZER_FILE, manifest.max_input_tokens).encode(texts, truncate=True)
    run_batches(runner, tokens[:256], 128)
    rates = {f"in-process {providers[0]} batch={size}": run_batches(runner, tokens, size)[1] for size in (32, 64, 128)}
    best = max(rates, key=rates.__getitem__)
    return best, rates[best]


def measure(model_repo: Path, models: Sequence[str], batch_sizes: Sequence[int], texts: list[str]) -> list[Row]:
    gpu = CUDA in ort.get_available_providers() and _has_gpu()
    dirs = {model: discover(model_repo, (model,))[0] for model in models}
    tokenizer = TextTokenizer(dirs[models[0]] / TOKENIZER_FILE, ModelManifest.load(dirs[models[0]]).max_input_tokens)
    tokens = tokenizer.encode(texts, truncate=True)
    reference: np.ndarray | None = None
    rows = []
    for setup in setups(models, gpu):
        runner = Runner(dirs[setup.model], setup)
        run_batches(runner, tokens[:256], max(batch_sizes))  # warm-up: first shapes, TensorRT's engine build
        for batch_size in batch_sizes:
            vectors, rate, batch_ms = run_batches(runner, tokens, batch_size)
            if reference is None:
                reference = vectors
            cosine = min_cosine(vectors, reference)
            rows.append(Row(setup.name, runner.session.get_providers()[0], batch_size, rate, batch_ms, cosine))
            print(f"{setup.name} batch={batch_size}: {rate:.0f}/s, cosine {cosine:.5f}", file=sys.stderr, flush=True)
    return rows


def _has_gpu() -> bool:
    from service.engine.backends.onnxruntime import _cuda_device_count

    return _cuda_device_count() > 0


def markdown(rows: Sequence[Row], facts: dict[str, object], texts: int) -> str:
    lines = [
        "# The engine on GPU providers (in process)",
        "",
        f"{facts['date']}; {facts['cpu']}; onnxruntime {facts['onnxruntime']}; {texts} STS-B test sentences, sorted "
        "by length, fixed batches. Cosine: lowest against fp32 on the CPU.",
        "",
        "| setup | provider that ran | batch | sentences/s | ms per batch (p50) | lowest cosine |",
        "|---|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r.setup} | {r.active_provider} | {r.batch_size} | {r.sentences_per_s:.0f} | {r.batch_ms_p50:.2f} | "
        f"{r.min_cosine_vs_cpu_fp32:.5f} |"
        for r in rows
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.split("\n")[0])
    parser.add_argument("--model-repo", type=Path, default=Path("models"))
    parser.add_argument("--models", default="all-minilm-l6-v2,all-minilm-l6-v2-fp16", help="fp32 first")
    parser.add_argument("--batch-sizes", default="1,32,128")
    parser.add_argument("--quick", action="store_true", help="512 sentences")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    texts = load_pairs("test").sentences[: 512 if args.quick else None]
    models = [m for m in args.models.split(",") if m]
    rows = measure(args.model_repo.resolve(), models, [int(b) for b in args.batch_sizes.split(",")], texts)
    text = markdown(rows, machine_facts(), len(texts))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu.md").write_text(text)
    (args.out / "gpu.json").write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
