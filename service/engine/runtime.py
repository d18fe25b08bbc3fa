"""The backend: one ONNX Runtime session per model, created once, turning token batches into pooled vectors."""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.engine.pooling import EmbeddingHead
from service.engine.tokenize import TokenizedInput

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
# What a model graph may take: int64 [batch, seq] each (token_type_ids only if the network has them).
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")


@dataclass(frozen=True)
class RuntimeOptions:
    """How sessions are built; shared by every model of a server."""

    # Execution providers in preference order (see choose_providers).
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    intra_op_threads: int = 0
    inter_op_threads: int = 1
    # Threads of a second session for a batch that runs alone (nothing else queued or running); 0: no such session.
    solo_threads: int = 0
    # Use the process's shared CPU arena (see share_cpu_arena) rather than one per session.
    shared_arena: bool = False


def plan_parallelism(providers: Sequence[str], workers: int, intra_op_threads: int) -> tuple[int, int, int]:
    """(batches run at once, ONNX Runtime threads per batch, threads for a lone batch); 0 means "choose".

    On the CPU the default is one single-threaded batch per core: small batches then stop paying for ONNX
    Runtime's per-operator thread synchronisation, and one batch's hand-off overlaps another's compute
    (measured on 2 cores: +20-30% throughput over one two-threaded batch). A batch that runs alone, as a single
    interactive request does on an idle server, gets a session using every core instead (measured: 5.1 -> 3.1 ms
    for one short text over gRPC). A GPU runs one batch at a time.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    on_gpu = providers[0] != CPU
    workers = workers if workers > 0 else (1 if on_gpu else cores)
    if intra_op_threads <= 0:
        intra_op_threads = 0 if workers == 1 else max(1, cores // workers)
    solo_threads = cores if workers > 1 and not on_gpu and cores > intra_op_threads else 0
    return workers, intra_op_threads, solo_threads


def _loadable(*libraries: str) -> bool:
    for name in libraries:
        try:
            ctypes.CDLL(name)
            return True
        except OSError:
            continue
    return False


def _cuda_device_count() -> int:
    """GPUs the CUDA driver sees; 0 without a driver. Asked directly so CPU hosts never try the CUDA provider."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


def choose_providers(requested: str) -> list[str]:
    """Execution providers in preference order: TensorRT/CUDA when a GPU is usable, else the CPU.

    onnxruntime-gpu lists CUDA and TensorRT as available even on hosts without a GPU and then logs errors
    while falling back; probing the driver first keeps CPU-only hosts quiet.
    """
    available = ort.get_available_providers()
    if requested != "auto":
        wanted = [p.strip() for p in requested.split(",") if p.strip()]
        missing = [p for p in wanted if p not in available]
        if missing:
            raise ValueError(f"execution provider(s) {missing} not available; available: {available}")
        return wanted if CPU in wanted else [*wanted, CPU]
    providers: list[str] = []
    if CUDA in available and _cuda_device_count() > 0:
        try:
            ort.preload_dlls()
        except Exception:
            log.debug("onnxruntime.preload_dlls failed", exc_info=True)
        if TENSORRT in available and _loadable("libnvinfer.so.10", "libnvinfer.so"):
            providers.append(TENSORRT)
        providers.append(CUDA)
    providers.append(CPU)
    return providers


def share_cpu_arena() -> None:
    """Give every session of the process one CPU memory arena instead of one each.

    An arena keeps the largest working set it has served. With one per session (two per model, each run by
    several threads) the service would hold that peak many times over; batches of all sessions together are
    bounded by the inference threads, so one shared arena holds only what can run at once.
    """
    info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
    ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, -1, -1, -1))


def _session(model_path: Path, options: RuntimeOptions, intra_op_threads: int) -> ort.InferenceSession:
    session_options = ort.SessionOptions()
    if options.shared_arena:
        session_options.add_session_config_entry("session.use_env_allocators", "1")
    session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session_options.intra_op_num_threads = intra_op_threads
    session_options.inter_op_num_threads = options.inter_op_threads
    session_options.log_severity_level = 3
    return ort.InferenceSession(str(model_path), sess_options=session_options, providers=list(options.providers))


class OnnxEncoder:
    """Runs a model's ONNX graph on padded batches and pools the token embeddings per its manifest.

    Batches are padded on the right. A causal (decoder) graph is unaffected by padding after a token, so every
    row's last real token sees exactly what it would alone; the head finds it from the mask.
    """

    def __init__(self, model_path: Path, head: EmbeddingHead, options: RuntimeOptions) -> None:
        self.session = _session(model_path, options, options.intra_op_threads)
        self._solo = _session(model_path, options, options.solo_threads) if options.solo_threads else self.session
        self.head = head
        self._input_names = {i.name for i in self.session.get_inputs()}
        unknown = sorted(self._input_names - set(INPUT_NAMES))
        if unknown or not {"input_ids", "attention_mask"} <= self._input_names:
            raise ValueError(f"{model_path}: inputs must be {INPUT_NAMES} (token_type_ids optional), got {unknown}")
        self._output_name = self.session.get_outputs()[0].name
        log.info("loaded %s with %s", model_path, ", ".join(self.session.get_providers()))

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def embed(self, batch: Sequence[TokenizedInput], solo: bool = False) -> np.ndarray:
        """Pooled, not yet normalized, float32 vectors [len(batch), hidden] for one padded batch.

        `solo`: the batch runs alone, so it may use the session that spreads it over every core.
        """
        padded = pad_batch(batch)
        feeds = {name: padded.feeds[name] for name in self._input_names}
        session = self._solo if solo else self.session
        (token_embeddings,) = session.run([self._output_name], feeds)
        return self.head(token_embeddings, padded.attention_mask, padded.prompt_lengths)


@dataclass(frozen=True)
class PaddedBatch:
    """A batch as the network takes it: right-padded int64 [batch, longest] arrays, and what pooling skips."""

    feeds: dict[str, np.ndarray]  # input_ids, attention_mask, token_type_ids
    prompt_lengths: np.ndarray  # [batch]

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
