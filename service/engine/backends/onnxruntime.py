"""The ONNX Runtime backend: a session per model (on the CPU also one for a batch that runs alone, see solo_threads,
and one of the model's offline-fused solo graph, see SoloGraph), built once, and the choice of execution providers
(TensorRT, CUDA, CPU) with their options."""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.engine.backends import INPUT_NAMES, PaddedBatch, RuntimeOptions
from service.engine.manifest import MODEL_FILE, ModelManifest, SoloGraph

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"


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
    providers = [(name, dict(options.provider_options.get(name, {}))) for name in options.providers]
    return ort.InferenceSession(str(model_path), sess_options=session_options, providers=providers)


class OnnxRuntimeBackend:
    """Runs a model's ONNX graph on padded batches: its first output, the token embeddings.

    Feeds are what the graph declares among INPUT_NAMES (read from the session, never assumed). A causal
    (decoder) graph is unaffected by padding after a token, so every row's last real token sees exactly what it
    would alone; pooling finds it from the mask.
    """

    def __init__(self, model_path: Path, options: RuntimeOptions, solo_graph: SoloGraph | None = None) -> None:
        """`solo_graph`: the model's fused graph (beside `model_path`) for the small batches that run alone; used
        on the CPU only (a GPU runs one batch at a time, from the plain graph)."""
        self.session = _session(model_path, options, options.intra_op_threads)
        self._solo = _session(model_path, options, options.solo_threads) if options.solo_threads else self.session
        self._input_names = tuple(i.name for i in self.session.get_inputs())
        unknown = sorted(set(self._input_names) - set(INPUT_NAMES))
        if unknown or not {"input_ids", "attention_mask"} <= set(self._input_names):
            raise ValueError(f"{model_path}: inputs must be {INPUT_NAMES} (token_type_ids optional), got {unknown}")
        self._output_name = self.session.get_outputs()[0].name
        self.solo_graph = solo_graph if solo_graph is not None and options.providers[0] == CPU else None
        self._fused: ort.InferenceSession | None = None
        self._fused_inputs: tuple[str, ...] = ()
        if self.solo_graph is not None:
            threads = options.solo_threads or options.intra_op_threads
            self._fused = _session(model_path.with_name(self.solo_graph.file), options, threads)
            self._fused_inputs = tuple(i.name for i in self._fused.get_inputs())
        # Batches the fused solo graph ran: which graph served is visible without timing anything (tests, debugging).
        self.fused_batches = 0
        log.info(
            "loaded %s with %s%s",
            model_path,
            ", ".join(self.session.get_providers()),
            self._describe_solo_graph(),
        )

    def _describe_solo_graph(self) -> str:
        solo = self.solo_graph
        if solo is None:
            return ""
        return f"; {solo.file} for lone batches of up to {solo.max_inputs} input(s) and {solo.max_tokens} tokens"

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def run(self, batch: PaddedBatch, solo: bool = False) -> np.ndarray:
        """Token embeddings [batch, seq, hidden]. `solo`: the batch runs alone, so it may use the session that
        spreads it over every core, or the fused graph's session when the batch is small enough for it."""
        session, names = (self._solo if solo else self.session), self._input_names
        if solo and self._fused is not None and self._serves_fused(batch):
            session, names = self._fused, self._fused_inputs
            self.fused_batches += 1
        (token_embeddings,) = session.run([self._output_name], {name: batch.feeds[name] for name in names})
        return token_embeddings

    def _serves_fused(self, batch: PaddedBatch) -> bool:
        rows, longest = batch.input_ids.shape
        return self.solo_graph is not None and self.solo_graph.serves(rows, rows * longest)


def load(model_dir: Path, manifest: ModelManifest, options: RuntimeOptions) -> OnnxRuntimeBackend:
    """The backend of a model directory holding `model.onnx` (and the solo graph its manifest names, if any)."""
    model_path = Path(model_dir) / MODEL_FILE
    if not model_path.is_file():
        raise ValueError(f"{model_dir} lacks {MODEL_FILE}")
    solo = manifest.solo_graph if options.solo_graph else None
    if solo is not None and not (Path(model_dir) / solo.file).is_file():
        raise ValueError(f"{model_dir} lacks {solo.file}, the solo graph its manifest names")
    return OnnxRuntimeBackend(model_path, options, solo)
