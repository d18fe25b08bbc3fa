"""The engine's factory: discovers the model repository, plans the threads, builds each model's backend once (warmed
up), and resolves ids and aliases. It takes `EngineOptions`, never the server's settings: the server builds them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from service.engine.backends import RuntimeOptions, backend_factory
from service.engine.backends.onnxruntime import CPU, choose_providers, share_cpu_arena
from service.engine.batcher import Batcher, BatchLimits
from service.engine.cache import SharedVectors, VectorCache, model_digest
from service.engine.encoder import Encoder
from service.engine.errors import ModelNotFound, NotReady
from service.engine.manifest import MANIFEST_FILE, TOKENIZER_FILE, ManifestError, ModelManifest
from service.engine.model import INPUT_TYPES, ServedModel
from service.engine.pooling import EmbeddingHead
from service.engine.prompts import Prompts
from service.engine.threads import InferenceThreads
from service.engine.tokenize import TextTokenizer, TokenizedInput

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineOptions:
    """What the engine is told: where its models are, how to run them and how much a call may hold."""

    model_repo: Path
    # Model ids to load; empty loads every model in the repository.
    models: tuple[str, ...] = ()
    # Extra names, {alias: model id or manifest alias}.
    aliases: Mapping[str, str] = field(default_factory=dict)
    max_inputs_per_request: int = 2048
    # Cut inputs over a model's limit when a call does not say (a model's manifest may override it).
    auto_truncate: bool = True
    # "auto" (TensorRT/CUDA when usable, else CPU) or a comma-separated list of execution providers.
    providers: str = "auto"
    provider_options: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    # Batches run at once (0: one per core on the CPU, 1 on a GPU) and runtime threads (0: planned).
    inference_workers: int = 0
    intra_op_threads: int = 0
    inter_op_threads: int = 1
    tokenizer_threads: int = 2
    # Serve small lone batches from a model's fused solo graph, where it has one (see RuntimeOptions).
    solo_graph: bool = True
    # How inputs are batched; its concurrent_batches is planned from inference_workers.
    batching: BatchLimits = field(default_factory=BatchLimits)
    # The embedding cache's bound in this process (service/engine/cache.py); 0 turns the cache off (with a shared
    # tier: that tier alone).
    cache_bytes: int = 256 * 1024 * 1024


def plan_parallelism(providers: Sequence[str], workers: int, intra_op_threads: int) -> tuple[int, int, int]:
    """(batches run at once, ONNX Runtime threads per batch, threads for a lone batch); 0 means "choose".

    On the CPU the default is one single-threaded batch per core: small batches then stop paying for ONNX
    Runtime's per-operator thread synchronisation, and one batch's hand-off overlaps another's compute
    (measured on 2 cores: +20-30% throughput over one two-threaded batch). A batch that runs alone, as a single
    interactive request does on an idle server, gets a session using every core instead (measured: 5.1 -> 3.1 ms
    for one short text over gRPC). A GPU runs one batch at a time.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    on_gpu = providers[0] != CPU  # a backend without providers runs on the CPU
    workers = workers if workers > 0 else (1 if on_gpu else cores)
    if intra_op_threads <= 0:
        intra_op_threads = 0 if workers == 1 else max(1, cores // workers)
    solo_threads = cores if workers > 1 and not on_gpu and cores > intra_op_threads else 0
    return workers, intra_op_threads, solo_threads


@dataclass(frozen=True)
class _Loaded:
    manifest: ModelManifest
    tokenizer: TextTokenizer
    encoder: Encoder
    prompts: Prompts
    # The model's content digest (cache keys); empty when the cache is off.
    digest: bytes = b""


def discover(repo: Path, wanted: tuple[str, ...] = ()) -> list[Path]:
    """Model directories of the repository (those with a manifest), restricted to `wanted` ids if given."""
    if not repo.is_dir():
        raise ManifestError(f"model repository {repo} does not exist (build it with `make models`)")
    # Dot-entries are the build tool's work in progress (.build-*, .old-*): never serve them.
    dirs = sorted(p.parent for p in repo.glob(f"*/{MANIFEST_FILE}") if not p.parent.name.startswith("."))
    if wanted:
        by_id = {ModelManifest.load(d).id: d for d in dirs}
        missing = [m for m in wanted if m not in by_id]
        if missing:
            raise ManifestError(f"model(s) {missing} not found in {repo}; found {sorted(by_id)}")
        dirs = [by_id[m] for m in wanted]
    if not dirs:
        raise ManifestError(f"no models in {repo} (build them with `make models`)")
    return dirs


def _load_model(model_dir: Path, options: RuntimeOptions, limits: BatchLimits, cached: bool) -> _Loaded:
    manifest = ModelManifest.load(model_dir)
    if not (model_dir / TOKENIZER_FILE).is_file():
        raise ManifestError(f"{model_dir} lacks {TOKENIZER_FILE}")
    try:
        head = EmbeddingHead.from_manifest(manifest, model_dir)
    except (OSError, KeyError, ValueError) as exc:
        raise ManifestError(f"{model_dir}: cannot load its dense layers: {exc}") from exc
    try:
        backend = backend_factory(manifest.backend)(model_dir, manifest, options)
    except (OSError, ValueError) as exc:
        raise ManifestError(f"{model_dir}: backend {manifest.backend!r}: {exc}") from exc
    encoder = Encoder(backend, head)
    tokenizer = TextTokenizer(model_dir / TOKENIZER_FILE, manifest.max_input_tokens)
    prompts = Prompts.load(manifest, model_dir / TOKENIZER_FILE, INPUT_TYPES)
    _warm_up(encoder, tokenizer, limits)
    digest = model_digest(model_dir, _vector_shape(manifest)) if cached else b""
    return _Loaded(manifest, tokenizer, encoder, prompts, digest)


def _vector_shape(manifest: ModelManifest) -> bytes:
    """The manifest fields that shape a pooled vector beside the model's files (prices or aliases do not)."""
    fields = (manifest.id, manifest.backend, manifest.architecture, manifest.pooling, manifest.include_prompt)
    return repr((fields, [asdict(layer) for layer in manifest.dense], manifest.dimensions)).encode()


def _warm_up(encoder: Encoder, tokenizer: TextTokenizer, limits: BatchLimits) -> None:
    """Run the largest batches the batcher can form, as many at once as will ever run, before serving.

    A runtime's memory arena (ONNX Runtime's) grows to the largest working set it has served and keeps it. The
    longest inputs make the largest one (attention grows with length squared); reaching it at start-up keeps
    allocation out of the first long calls and the service's memory flat under any load that follows (the token
    budget, `max_batch_tokens`, bounds it).
    """
    sample = tokenizer.encode(["warm-up"])[0]
    for solo in (False, True):
        encoder.embed([sample], solo=solo)
    length = max(1, min(tokenizer.max_tokens, limits.max_batch_tokens))
    count = max(1, min(limits.max_batch_size, limits.max_batch_tokens // length))
    longest = TokenizedInput(np.resize(sample.ids, length), np.resize(sample.type_ids, length), length)
    encoder.embed([longest], solo=True)  # a lone long input: the plain graph's solo session beside a solo graph
    with ThreadPoolExecutor(max_workers=limits.concurrent_batches) as pool:
        list(pool.map(encoder.embed, [[longest] * count] * limits.concurrent_batches))


class ModelRegistry:
    """Owns the served models and the threads they share (inference, tokenizing).

    `load()` (blocking: backends are built) runs once at start-up, off the event loop; `start()` then creates the
    batchers on the loop. Until both are done, `resolve` raises NotReady.
    """

    def __init__(self, options: EngineOptions, shared_cache: SharedVectors | None = None) -> None:
        """`shared_cache`: a tier of the embedding cache shared with other replicas (service/stores/redis_cache)."""
        self._options = options
        self.cache = VectorCache(options.cache_bytes, shared_cache)
        batching = options.batching
        if not 0 <= batching.background_min_share < 1:
            raise ValueError(f"job_min_share must be in [0, 1), got {batching.background_min_share}")
        providers = tuple(choose_providers(options.providers))
        self._workers, intra_op_threads, solo_threads = plan_parallelism(
            providers, options.inference_workers, options.intra_op_threads
        )
        on_cpu = providers[0] == CPU
        if on_cpu:
            share_cpu_arena()
        self._runtime = RuntimeOptions(
            providers,
            intra_op_threads,
            options.inter_op_threads,
            solo_threads,
            shared_arena=on_cpu,
            provider_options=options.provider_options,
            solo_graph=options.solo_graph,
        )
        # One thread per batch in flight, shared by all models: they compete for the same cores.
        self._inference = InferenceThreads(self._workers)
        self._tokenize = ThreadPoolExecutor(max_workers=max(1, options.tokenizer_threads), thread_name_prefix="tok")
        self._limits = replace(batching, concurrent_batches=self._workers)
        self._loaded: list[_Loaded] = []
        self._models: list[ServedModel] = []
        self._names: dict[str, ServedModel] = {}
        self._folded: dict[str, ServedModel] = {}

    @property
    def tokenize_executor(self) -> ThreadPoolExecutor:
        """Threads for CPU-bound request preparation (tokenizing, decoding token ids) off the event loop."""
        return self._tokenize

    @property
    def inference_workers(self) -> int:
        """Batches the engine runs at once."""
        return self._workers

    @property
    def ready(self) -> bool:
        return bool(self._models)

    def load(self) -> None:
        repo = Path(self._options.model_repo)
        cached = self.cache.enabled
        wanted = discover(repo, self._options.models)
        self._loaded = [_load_model(d, self._runtime, self._limits, cached) for d in wanted]
        log.info(
            "inference: %d batch(es) at once, %s thread(s) each (%s for a lone batch), on %s",
            self._workers,
            self._runtime.intra_op_threads or "auto",
            self._runtime.solo_threads or "same",
            self._runtime.providers[0],
        )

    def start(self) -> None:
        limits = self._limits
        models = []
        for loaded in self._loaded:
            batcher = Batcher(loaded.manifest.id, loaded.encoder, self._inference, limits)
            batcher.start()
            models.append(
                ServedModel(
                    loaded.manifest,
                    loaded.tokenizer,
                    batcher,
                    self._tokenize,
                    self._options.max_inputs_per_request,
                    loaded.prompts,
                    auto_truncate=_auto_truncate(loaded.manifest, self._options),
                    cache=self.cache,
                    digest=loaded.digest,
                )
            )
        self._names, self._folded = _name_index(models, dict(self._options.aliases))
        self._models = models

    def solo_graph_counters(self) -> dict[str, Callable[[], int]]:
        """Model id -> how many batches its backend ran from an offline-fused solo graph, for models that have one
        (the ONNX Runtime backend on the CPU: see SoloGraph)."""
        counters = {}
        for loaded in self._loaded:
            backend = loaded.encoder.backend
            if getattr(backend, "solo_graph", None) is not None:
                counters[loaded.manifest.id] = lambda backend=backend: backend.fused_batches
        return counters

    def models(self) -> list[ServedModel]:
        return list(self._models)

    def aliases_of(self, model: ServedModel) -> list[str]:
        """Every name besides the id that resolves to `model`: manifest aliases, then configured ones."""
        return [name for name, m in self._names.items() if m is model and name != model.id]

    def resolve(self, name: str) -> ServedModel:
        """The model called `name` (id or alias; exact match first, then case-insensitive)."""
        if not self._models:
            raise NotReady()
        model = self._names.get(name) or self._folded.get(name.casefold())
        if model is None:
            raise ModelNotFound(name)
        return model

    async def close(self) -> None:
        for model in self._models:
            await model.batcher.close()
        self._inference.shutdown(wait=True)
        self._tokenize.shutdown(wait=True, cancel_futures=True)
        await self.cache.close()


def _auto_truncate(manifest: ModelManifest, options: EngineOptions) -> bool:
    return options.auto_truncate if manifest.auto_truncate is None else manifest.auto_truncate


def _name_index(
    models: list[ServedModel], extra_aliases: dict[str, str]
) -> tuple[dict[str, ServedModel], dict[str, ServedModel]]:
    names: dict[str, ServedModel] = {}

    def add(name: str, model: ServedModel) -> None:
        other = names.get(name)
        if other is not None and other is not model:
            raise ManifestError(f"name {name!r} is claimed by both {other.id} and {model.id}")
        names[name] = model

    by_id = {m.id: m for m in models}
    for model in models:
        for name in model.manifest.names:
            add(name, model)
    for alias, target in extra_aliases.items():
        model = by_id.get(target) or names.get(target)
        if model is None:
            raise ManifestError(f"alias {alias!r} points at unknown model {target!r}")
        add(alias, model)
    folded: dict[str, ServedModel] = {}
    for name, model in names.items():
        folded.setdefault(name.casefold(), model)
    return names, folded
