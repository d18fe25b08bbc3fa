"""The model registry: discovers the model repository, loads each model once, resolves ids and aliases."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service import errors
from service.config import Settings
from service.engine.batcher import Batcher, BatchLimits
from service.engine.model import INPUT_TYPES, ServedModel
from service.engine.pooling import EmbeddingHead
from service.engine.prompts import Prompts
from service.engine.runtime import (
    CPU,
    OnnxEncoder,
    RuntimeOptions,
    choose_providers,
    plan_parallelism,
    share_cpu_arena,
)
from service.engine.tokenize import TextTokenizer, TokenizedInput
from service.manifest import MANIFEST_FILE, MODEL_FILE, TOKENIZER_FILE, ManifestError, ModelManifest

log = logging.getLogger(__name__)


# The runtime behind each manifest `backend`; every one takes (model file, embedding head, runtime options).
BACKENDS = {"onnxruntime": OnnxEncoder}


@dataclass(frozen=True)
class _Loaded:
    manifest: ModelManifest
    tokenizer: TextTokenizer
    encoder: OnnxEncoder
    prompts: Prompts


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


def _load_model(model_dir: Path, options: RuntimeOptions, limits: BatchLimits) -> _Loaded:
    manifest = ModelManifest.load(model_dir)
    for required in (MODEL_FILE, TOKENIZER_FILE):
        if not (model_dir / required).is_file():
            raise ManifestError(f"{model_dir} lacks {required}")
    backend = BACKENDS.get(manifest.backend)
    if backend is None:
        raise ManifestError(f"{model_dir}: backend {manifest.backend!r} is not available; known: {sorted(BACKENDS)}")
    try:
        head = EmbeddingHead.from_manifest(manifest, model_dir)
    except (OSError, KeyError, ValueError) as exc:
        raise ManifestError(f"{model_dir}: cannot load its dense layers: {exc}") from exc
    encoder = backend(model_dir / MODEL_FILE, head, options)
    tokenizer = TextTokenizer(model_dir / TOKENIZER_FILE, manifest.max_input_tokens)
    prompts = Prompts.load(manifest, model_dir / TOKENIZER_FILE, INPUT_TYPES)
    _warm_up(encoder, tokenizer, limits)
    return _Loaded(manifest, tokenizer, encoder, prompts)


def _warm_up(encoder: OnnxEncoder, tokenizer: TextTokenizer, limits: BatchLimits) -> None:
    """Run the largest batches the batcher can form, as many at once as will ever run, before serving.

    ONNX Runtime's memory arena grows to the largest working set it has served and keeps it. The longest inputs
    make the largest one (attention grows with length squared); reaching it at start-up keeps allocation out of
    the first long calls and the service's memory flat under any load that follows (the token budget,
    `max_batch_tokens`, bounds it).
    """
    sample = tokenizer.encode(["warm-up"])[0]
    for solo in (False, True):
        encoder.embed([sample], solo=solo)
    length = max(1, min(tokenizer.max_tokens, limits.max_batch_tokens))
    count = max(1, min(limits.max_batch_size, limits.max_batch_tokens // length))
    longest = TokenizedInput(np.resize(sample.ids, length), np.resize(sample.type_ids, length), length)
    with ThreadPoolExecutor(max_workers=limits.concurrent_batches) as pool:
        list(pool.map(encoder.embed, [[longest] * count] * limits.concurrent_batches))


class ModelRegistry:
    """Owns the served models and the executors they share.

    `load()` (blocking: sessions are built) runs once at start-up, off the event loop; `start()` then creates the
    batchers on the loop. Until both are done, `resolve` answers UNAVAILABLE.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        if not 0 <= settings.job_min_share < 1:
            raise ValueError(f"job_min_share must be in [0, 1), got {settings.job_min_share}")
        providers = tuple(choose_providers(settings.providers))
        self._workers, intra_op_threads, solo_threads = plan_parallelism(
            providers, settings.inference_workers, settings.intra_op_threads
        )
        on_cpu = providers[0] == CPU
        if on_cpu:
            share_cpu_arena()
        self._runtime = RuntimeOptions(
            providers, intra_op_threads, settings.inter_op_threads, solo_threads, shared_arena=on_cpu
        )
        # One thread per batch in flight, shared by all models: they compete for the same cores.
        self._inference = ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix="inference")
        self._tokenize = ThreadPoolExecutor(max_workers=max(1, settings.tokenizer_threads), thread_name_prefix="tok")
        self._limits = BatchLimits(
            max_batch_tokens=settings.max_batch_tokens,
            max_batch_size=settings.max_batch_size,
            max_queued_inputs=settings.max_queued_inputs,
            max_padding_ratio=settings.max_padding_ratio,
            padding_slack_tokens=settings.padding_slack_tokens,
            concurrent_batches=self._workers,
            background_min_share=settings.job_min_share,
        )
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
        repo = Path(self._settings.model_repo)
        self._loaded = [_load_model(d, self._runtime, self._limits) for d in discover(repo, self._settings.models)]
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
                    self._settings.max_inputs_per_request,
                    loaded.prompts,
                    auto_truncate=_auto_truncate(loaded.manifest, self._settings),
                )
            )
        self._names, self._folded = _name_index(models, self._settings.alias_map())
        self._models = models

    def models(self) -> list[ServedModel]:
        return list(self._models)

    def aliases_of(self, model: ServedModel) -> list[str]:
        """Every name besides the id that resolves to `model`: manifest aliases, then configured ones."""
        return [name for name, m in self._names.items() if m is model and name != model.id]

    def resolve(self, name: str) -> ServedModel:
        """The model called `name` (id or alias; exact match first, then case-insensitive)."""
        if not self._models:
            raise errors.unavailable("The server is starting: models are still loading. Retry shortly.")
        model = self._names.get(name) or self._folded.get(name.casefold())
        if model is None:
            raise errors.model_not_found(name)
        return model

    async def close(self) -> None:
        for model in self._models:
            await model.batcher.close()
        self._inference.shutdown(wait=True, cancel_futures=True)
        self._tokenize.shutdown(wait=True, cancel_futures=True)


def _auto_truncate(manifest: ModelManifest, settings: Settings) -> bool:
    return settings.auto_truncate if manifest.auto_truncate is None else manifest.auto_truncate


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
