"""A served model: the engine's one entry point (validate -> tokenize -> batch -> run -> pool -> finalize)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from service import errors
from service.engine.batcher import Batcher, BatchFailed, CallTimings, DeadlineExceeded, QueueFull
from service.engine.pooling import finalize, non_finite_rows
from service.engine.prompts import Prompts
from service.engine.tokenize import TextTokenizer, TokenizedInput
from service.manifest import ModelManifest

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
    truncate: bool = False
    input_type: str = ""


@dataclass(slots=True)
class EmbedTimings:
    """Where one call's time went (seconds): metrics and the x-*-time response headers."""

    tokenize_s: float = 0.0
    queue_s: float = 0.0
    inference_s: float = 0.0


@dataclass(frozen=True)
class EmbedResult:
    model: str
    # [inputs, dimensions] float32, row i for input i.
    vectors: np.ndarray
    token_counts: list[int]
    truncated: list[bool]
    timings: EmbedTimings = field(default_factory=EmbedTimings)

    @property
    def prompt_tokens(self) -> int:
        return sum(self.token_counts)


class ServedModel:
    def __init__(
        self,
        manifest: ModelManifest,
        tokenizer: TextTokenizer,
        batcher: Batcher,
        tokenize_executor: Executor,
        max_inputs: int,
        prompts: Prompts | None = None,
    ) -> None:
        self.manifest = manifest
        # Without a tokenizer to measure them, prompts are prepended but never left out of pooling.
        self.prompts = prompts or Prompts({kind: manifest.prompt(kind) for kind in INPUT_TYPES})
        self.tokenizer = tokenizer
        self.batcher = batcher
        self._tokenize_executor = tokenize_executor
        self._max_inputs = max_inputs

    @property
    def id(self) -> str:
        return self.manifest.id

    def validate(self, texts: Sequence[str], options: EmbedOptions, max_inputs: int | None = None) -> None:
        """Reject a bad call before it costs anything; raises `errors.ApiError`. `max_inputs`: a larger cap (jobs)."""
        cap = max_inputs or self._max_inputs
        if not texts:
            raise errors.invalid_input("inputs must hold at least one input.", field="inputs")
        if len(texts) > cap:
            raise errors.invalid_input(
                f"Too many inputs: {len(texts)} in one request, the limit is {cap}. "
                "Split the request, or use an async job.",
                field="inputs",
                reason="too_many_inputs",
            )
        for index, text in enumerate(texts):
            if not text:
                raise errors.invalid_input(
                    f"Input {index} is an empty string; every input must hold text.", field=f"inputs[{index}]"
                )
        if options.dimensions is not None and not self.manifest.allows_dimensions(options.dimensions):
            raise errors.dimensions_not_supported(
                self.id, options.dimensions, self.manifest.shortened_dimensions, self.manifest.dimensions
            )
        if options.input_type not in INPUT_TYPES:
            raise errors.invalid_input(f"input_type must be one of {INPUT_TYPES[1:]}.", field="input_type")

    def _without_prompt(self, tokens: list[TokenizedInput], input_type: str) -> list[TokenizedInput]:
        """Mark the prompt's tokens for pooling to leave out (models pooling with include_prompt=false)."""
        excluded = self.prompts.excluded(input_type)
        return [dataclasses.replace(item, prompt_length=excluded) for item in tokens] if excluded else tokens

    async def tokenize(self, texts: Sequence[str], truncate: bool) -> list[TokenizedInput]:
        """Tokenize (off the event loop unless tiny); enforce the length limit or truncate to it."""
        loop = asyncio.get_running_loop()
        if sum(map(len, texts)) <= INLINE_TOKENIZE_CHARS:
            tokens = self.tokenizer.encode(texts)
        else:
            tokens = await loop.run_in_executor(self._tokenize_executor, self.tokenizer.encode, texts)
        limit = self.tokenizer.max_tokens
        over = [i for i, item in enumerate(tokens) if item.length > limit]
        if not over:
            return tokens
        if not truncate:
            first = over[0]
            raise errors.context_length_exceeded(first, tokens[first].length, limit, self.id)
        cut = await loop.run_in_executor(
            self._tokenize_executor,
            self.tokenizer.truncate,
            [texts[i] for i in over],
            [tokens[i].original_length for i in over],
        )
        for i, item in zip(over, cut, strict=True):
            tokens[i] = item
        return tokens

    async def check_lengths(self, texts: Sequence[str], slice_size: int = 8192) -> None:
        """Raise context_length_exceeded for the first input over the limit, keeping only counts in memory (async
        jobs validate up to a million inputs before they are accepted)."""
        loop = asyncio.get_running_loop()
        limit = self.tokenizer.max_tokens
        for start in range(0, len(texts), slice_size):
            part = texts[start : start + slice_size]
            lengths = await loop.run_in_executor(self._tokenize_executor, self.tokenizer.lengths, part)
            for offset, length in enumerate(lengths):
                if length > limit:
                    raise errors.context_length_exceeded(start + offset, length, limit, self.id)

    async def embed(
        self,
        texts: Sequence[str],
        options: EmbedOptions,
        deadline: float | None = None,
        background: bool = False,
        admit: Callable[[int], Awaitable[None]] | None = None,
    ) -> EmbedResult:
        """Vectors for `texts` in order. `deadline` is in the event loop's clock; `background` is for async jobs,
        which yield to interactive calls. `admit` gets the token count once known, before inference: it may wait
        or raise (rate limits), so a refused call costs no inference."""
        self.validate(texts, options)
        tokenize_started = time.perf_counter()
        tokens = await self.tokenize(self.prompts.prepend(texts, options.input_type), options.truncate)
        tokens = self._without_prompt(tokens, options.input_type)
        tokenize_s = time.perf_counter() - tokenize_started
        if admit is not None:
            await admit(sum(item.length for item in tokens))
        batch_timings = CallTimings()
        try:
            pooled = await self.batcher.embed(tokens, deadline, background=background, timings=batch_timings)
        except QueueFull:
            raise errors.queue_full(self.id) from None
        except DeadlineExceeded:
            raise errors.deadline_exceeded() from None
        except BatchFailed as exc:
            raise errors.internal(f"Inference failed on model '{self.id}': {exc}") from None
        normalize = self.manifest.normalize if options.normalize is None else options.normalize
        vectors = finalize(pooled, options.dimensions, normalize)
        bad = non_finite_rows(vectors)
        if bad.size:
            raise errors.internal(f"Model '{self.id}' produced a non-finite vector for input {int(bad[0])}.")
        return EmbedResult(
            model=self.id,
            vectors=vectors,
            token_counts=[item.length for item in tokens],
            truncated=[item.truncated for item in tokens],
            timings=EmbedTimings(tokenize_s, batch_timings.queue_s, batch_timings.inference_s),
        )
