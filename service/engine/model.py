"""A served model: the engine's one entry point (validate -> tokenize -> batch -> run -> pool -> finalize)."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from service.engine.batcher import Batcher, BatchFailed, CallTimings
from service.engine.cache import CacheCounters, VectorCache, input_keys
from service.engine.errors import ContextLengthExceeded, DimensionsNotSupported, InferenceFailed, InvalidInput
from service.engine.manifest import ModelManifest
from service.engine.pooling import finalize, non_finite_rows
from service.engine.prompts import Prompts
from service.engine.quantize import EMBEDDING_TYPES, FLOAT, SCALAR_TYPES, ScalarRanges, quantize, ranges_key
from service.engine.tokenize import TextTokenizer, TokenizedInput, check_texts

INPUT_TYPES = ("", "query", "document")
# Requests up to this many characters are tokenized on the event loop: it takes microseconds, less than the
# hand-off to a tokenizer thread and back (measured: 0.15 ms of CPU per request at 32 concurrent tiny calls).
INLINE_TOKENIZE_CHARS = 2048


@dataclass(frozen=True)
class EmbedOptions:
    """Per-call options, independent of the wire format."""

    dimensions: int | None = None
    # None: the model's default.
    normalize: bool | None = None
    # Cut inputs over the model's limit instead of refusing them. None: the server's or model's `auto_truncate`.
    truncate: bool | None = None
    input_type: str = ""
    # float, or a compact type (service.engine.quantize.EMBEDDING_TYPES): int8/uint8 scaled by the model's calibrated
    # ranges, binary/ubinary packed sign bits.
    embedding_type: str = FLOAT


@dataclass(slots=True)
class EmbedTimings:
    """Where one call's time went (seconds): metrics and the x-*-time response headers."""

    tokenize_s: float = 0.0
    queue_s: float = 0.0
    inference_s: float = 0.0


@dataclass(frozen=True)
class EmbedResult:
    model: str
    # [inputs, dimensions] float32, row i for input i; int8/uint8 for the compact types (binary/ubinary: packed bits).
    vectors: np.ndarray
    token_counts: list[int]
    truncated: list[bool]
    timings: EmbedTimings = field(default_factory=EmbedTimings)
    # The vectors' dimensions (packed bits hold fewer values than that).
    dimensions: int = 0
    # Inputs served from the embedding cache (and their tokens), and inputs that repeat another input of the call
    # (embedded once): neither ran through the model. Usage still counts every input's tokens.
    cached_inputs: int = 0
    cached_tokens: int = 0
    deduplicated_inputs: int = 0

    @property
    def prompt_tokens(self) -> int:
        return sum(self.token_counts)

    @property
    def truncated_inputs(self) -> int:
        return sum(self.truncated)


class ServedModel:
    def __init__(
        self,
        manifest: ModelManifest,
        tokenizer: TextTokenizer,
        batcher: Batcher,
        tokenize_executor: Executor,
        max_inputs: int,
        prompts: Prompts | None = None,
        auto_truncate: bool = False,
        cache: VectorCache | None = None,
        digest: bytes = b"",
    ) -> None:
        """`auto_truncate`: what a call that does not say `truncate` gets (the model's manifest overrides the
        server's setting). `cache`: the embedding cache (None or disabled: every input runs, duplicates too);
        `digest`: the model's content digest, part of every cache key."""
        self.manifest = manifest
        self.auto_truncate = auto_truncate
        # Without a tokenizer to measure them, prompts are prepended but never left out of pooling.
        self.prompts = prompts or Prompts({kind: manifest.prompt(kind) for kind in INPUT_TYPES})
        self.tokenizer = tokenizer
        self.batcher = batcher
        self._tokenize_executor = tokenize_executor
        self._max_inputs = max_inputs
        self._cache = cache if cache is not None and cache.enabled else None
        self._digest = digest or manifest.id.encode()
        self.cache_counters = CacheCounters()

    @property
    def id(self) -> str:
        return self.manifest.id

    def input_cap(self, max_inputs: int | None = None) -> int:
        """Inputs one call may hold; `max_inputs`: a larger cap (async jobs)."""
        return max_inputs or self._max_inputs

    @property
    def max_inputs(self) -> int:
        """The most inputs one interactive call may carry."""
        return self._max_inputs

    def validate(self, texts: Sequence[str], options: EmbedOptions, max_inputs: int | None = None) -> None:
        """Reject a bad call before it costs anything (an `EngineError`). `max_inputs`: a larger cap (jobs)."""
        check_texts(texts, self.input_cap(max_inputs))
        if options.dimensions is not None and not self.manifest.allows_dimensions(options.dimensions):
            raise DimensionsNotSupported(
                self.id, options.dimensions, self.manifest.shortened_dimensions, self.manifest.dimensions
            )
        if options.input_type not in INPUT_TYPES:
            raise InvalidInput(f"input_type must be one of {INPUT_TYPES[1:]}.", field="input_type")
        self._check_embedding_type(options)

    @property
    def embedding_types(self) -> list[str]:
        """The types this model gives: int8/uint8 only with calibrated ranges (for its full size, at least)."""
        calibrated = ranges_key(self.manifest.dimensions, self.manifest.normalize) in self.manifest.quantization_ranges
        return [t for t in EMBEDDING_TYPES if calibrated or t not in SCALAR_TYPES]

    def _normalizes(self, options: EmbedOptions) -> bool:
        return self.manifest.normalize if options.normalize is None else options.normalize

    @functools.cached_property
    def _calibrated_ranges(self) -> dict[str, ScalarRanges]:
        """The manifest's ranges as arrays, parsed once (not per call)."""
        return {key: ScalarRanges.from_dict(stored) for key, stored in self.manifest.quantization_ranges.items()}

    def _scalar_ranges(self, options: EmbedOptions) -> ScalarRanges | None:
        """The calibrated ranges int8/uint8 vectors of this call's size and normalization are scaled by."""
        if options.embedding_type not in SCALAR_TYPES:
            return None
        key = ranges_key(options.dimensions or self.manifest.dimensions, self._normalizes(options))
        return self._calibrated_ranges.get(key)

    def _check_embedding_type(self, options: EmbedOptions) -> None:
        if options.embedding_type not in EMBEDDING_TYPES:
            raise InvalidInput(
                f"The embedding type must be one of {', '.join(EMBEDDING_TYPES)}; got {options.embedding_type!r}.",
                field="embedding_type",
            )
        if options.embedding_type in SCALAR_TYPES and self._scalar_ranges(options) is None:
            raise InvalidInput(
                f"Model '{self.id}' has no calibrated ranges for {options.embedding_type} vectors of this size "
                "(rebuild it with `python -m tools.modelrepo calibrate`); binary and ubinary need none.",
                field="embedding_type",
            )

    def truncates(self, options: EmbedOptions) -> bool:
        """Whether inputs over the limit are cut (else refused) for a call with these options."""
        return self.auto_truncate if options.truncate is None else options.truncate

    def _without_prompt(self, tokens: list[TokenizedInput], input_type: str) -> list[TokenizedInput]:
        """Mark the prompt's tokens for pooling to leave out (models pooling with include_prompt=false)."""
        excluded = self.prompts.excluded(input_type)
        return [dataclasses.replace(item, prompt_length=excluded) for item in tokens] if excluded else tokens

    async def tokenize(self, texts: Sequence[str], truncate: bool) -> list[TokenizedInput]:
        """Tokenize (off the event loop unless tiny); enforce the length limit or truncate to it. The cost is bounded
        by the model's limit: at most `max_chars` characters of an input are read."""
        if sum(min(len(text), self.tokenizer.max_chars) for text in texts) <= INLINE_TOKENIZE_CHARS:
            tokens = self.tokenizer.encode(texts, truncate)
        else:
            loop = asyncio.get_running_loop()
            tokens = await loop.run_in_executor(self._tokenize_executor, self.tokenizer.encode, texts, truncate)
        if not truncate:
            self.refuse_over_limit(tokens)
        return tokens

    def refuse_over_limit(self, tokens: Sequence[TokenizedInput], offset: int = 0) -> None:
        """ContextLengthExceeded for the first input over the limit (indexes counted from `offset`)."""
        for index, item in enumerate(tokens):
            if self.tokenizer.over_limit(item):
                raise ContextLengthExceeded(
                    offset + index,
                    item.original_length,
                    self.tokenizer.max_tokens,
                    self.id,
                    at_least=item.partial,
                    chars=item.chars,
                    max_chars=self.tokenizer.max_chars,
                )

    async def check_lengths(self, texts: Sequence[str], slice_size: int = 1024) -> None:
        """Raise ContextLengthExceeded for the first input over the limit, keeping only a slice's tokens in memory
        (async jobs validate up to a million inputs before they are accepted)."""
        loop = asyncio.get_running_loop()
        for start in range(0, len(texts), slice_size):
            part = texts[start : start + slice_size]
            tokens = await loop.run_in_executor(self._tokenize_executor, self.tokenizer.measure, part)
            self.refuse_over_limit(tokens, start)

    async def embed(
        self,
        texts: Sequence[str],
        options: EmbedOptions,
        deadline: float | None = None,
        background: bool = False,
        admit: Callable[[int], Awaitable[None]] | None = None,
        cache_scope: str = "",
    ) -> EmbedResult:
        """Vectors for `texts` in order. `deadline` is in time.monotonic()'s clock; `background` is for async jobs,
        which yield to interactive calls. `admit` gets the token count once known, before inference: it may wait
        or raise (rate limits), so a refused call costs no inference. `cache_scope`: whose cache entries the call
        may read and write (the caller's tenant, or "" where the server shares them)."""
        self.validate(texts, options)
        tokenize_started = time.perf_counter()
        tokens = await self.tokenize(self.prompts.prepend(texts, options.input_type), self.truncates(options))
        tokens = self._without_prompt(tokens, options.input_type)
        tokenize_s = time.perf_counter() - tokenize_started
        if admit is not None:
            await admit(sum(item.length for item in tokens))
        batch_timings = CallTimings()
        if self._cache is None:
            pooled, reuse = await self._run(tokens, deadline, background, batch_timings), _NO_REUSE
        else:
            pooled, reuse = await self._run_cached(tokens, cache_scope, deadline, background, batch_timings)
        vectors = finalize(pooled, options.dimensions, self._normalizes(options))
        bad = non_finite_rows(vectors)
        if bad.size:
            raise InferenceFailed(f"Model '{self.id}' produced a non-finite vector for input {int(bad[0])}.")
        return EmbedResult(
            model=self.id,
            vectors=quantize(vectors, options.embedding_type, self._scalar_ranges(options)),
            token_counts=[item.length for item in tokens],
            truncated=[item.truncated for item in tokens],
            timings=EmbedTimings(tokenize_s, batch_timings.queue_s, batch_timings.inference_s),
            dimensions=vectors.shape[1],
            cached_inputs=reuse.cached_inputs,
            cached_tokens=reuse.cached_tokens,
            deduplicated_inputs=reuse.deduplicated_inputs,
        )

    async def _run(
        self, tokens: Sequence[TokenizedInput], deadline: float | None, background: bool, timings: CallTimings
    ) -> np.ndarray:
        """Pooled vectors of `tokens` from the model (QueueFull and DeadlineExceeded pass through)."""
        try:
            return await self.batcher.embed(tokens, deadline, background=background, timings=timings)
        except BatchFailed as exc:
            raise InferenceFailed(f"Inference failed on model '{self.id}': {exc}") from None

    async def _run_cached(
        self,
        tokens: Sequence[TokenizedInput],
        scope: str,
        deadline: float | None,
        background: bool,
        timings: CallTimings,
    ) -> tuple[np.ndarray, _Reuse]:
        """Pooled vectors with each distinct input looked up in the cache and only the rest run, once each."""
        cache = self._cache
        assert cache is not None
        keys = input_keys(self._digest, scope, tokens)
        slots, firsts = _distinct(keys)
        distinct_keys = [keys[i] for i in firsts]
        stored = await cache.lookup(distinct_keys, self.cache_counters, self.manifest.dimensions)
        missing = [j for j, value in enumerate(stored) if value is None]
        counters = self.cache_counters
        counters.misses += len(missing)
        counters.deduplicated += len(keys) - len(distinct_keys)
        rows = np.empty((len(distinct_keys), self.manifest.dimensions), dtype=np.float32)
        if missing:
            computed = await self._run([tokens[firsts[j]] for j in missing], deadline, background, timings)
            if computed.shape[1] != rows.shape[1]:  # a backend whose width is not the manifest's: nothing kept
                if len(missing) == len(stored):
                    return computed[slots], _reuse_of(tokens, slots, firsts, stored)
                return await self._run(tokens, deadline, background, timings), _NO_REUSE
            rows[missing] = computed
            cache.keep([distinct_keys[j] for j in missing], computed)
        for j, value in enumerate(stored):
            if value is not None:
                rows[j] = np.frombuffer(value, dtype="<f4")
        return rows[slots], _reuse_of(tokens, slots, firsts, stored)


@dataclass(frozen=True)
class _Reuse:
    cached_inputs: int = 0
    cached_tokens: int = 0
    deduplicated_inputs: int = 0


_NO_REUSE = _Reuse()


def _distinct(keys: Sequence[bytes]) -> tuple[list[int], list[int]]:
    """(the distinct-input slot of each input, the first input of each slot)."""
    index: dict[bytes, int] = {}
    slots, firsts = [], []
    for i, key in enumerate(keys):
        slot = index.get(key)
        if slot is None:
            slot = index[key] = len(firsts)
            firsts.append(i)
        slots.append(slot)
    return slots, firsts


def _reuse_of(
    tokens: Sequence[TokenizedInput], slots: Sequence[int], firsts: Sequence[int], stored: Sequence[bytes | None]
) -> _Reuse:
    """Inputs served from the cache (with their tokens), and repeats of an input this call embedded."""
    cached = [i for i, slot in enumerate(slots) if stored[slot] is not None]
    repeats = sum(1 for i, slot in enumerate(slots) if stored[slot] is None and firsts[slot] != i)
    return _Reuse(len(cached), sum(tokens[i].length for i in cached), repeats)
