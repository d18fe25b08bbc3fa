"""Tokenization with the model's own `tokenizer.json`: exact token counts, truncation as the reference does it, and
a cost bounded by the model's limit rather than by the input's size.

A model reads at most `max_tokens` tokens of an input, so the engine reads at most `max_chars` characters of it
(`CHARS_PER_TOKEN` per token of the limit: 4,096 for a 256-token model; natural text holds 3-6 characters per
token). An input longer than that is over the limit whatever it holds. Only its first `max_chars` characters are
tokenized, and of those only the tokens of words that end inside them are trusted: the pre-tokenizer cuts text into
words (BERT: at whitespace and punctuation) that tokenize independently, so every word but the one the cut may run
through tokenizes exactly as in the whole input. When those tokens reach the limit (natural text always does),
truncation gives exactly the tokens that truncating the whole input's tokenization gives, and the refusal reports a
true lower bound ("at least N tokens"). An input whose first `max_chars` characters hold fewer tokens than the limit
(long runs of whitespace, control characters, combining marks, or words longer than the vocabulary handles, which
become [UNK]) is embedded as cut at `max_chars` characters. Tokenizing 4,096 characters takes milliseconds and a
few hundred kB, where an 8 MiB string took seconds and a gigabyte.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Encoding, Tokenizer

from service.engine.errors import InvalidInput, TooManyInputs

# Characters of an input read per token of the model's limit.
CHARS_PER_TOKEN = 16
# The token ids callers may send instead of text: OpenAI's (what LangChain sends by default).
TOKEN_ID_ENCODING = "cl100k_base"


@dataclass(frozen=True, slots=True)
class TokenizedInput:
    """One input's token ids (special tokens included), ready to pad into a batch."""

    ids: np.ndarray
    type_ids: np.ndarray
    # Tokens the input had before any truncation; a lower bound when `partial`.
    original_length: int
    # Only the first `max_chars` characters were read: the input is longer than the model reads.
    partial: bool = False
    # Characters of the input (set when `partial`, for the refusal's message).
    chars: int = 0
    # Leading tokens pooling leaves out: the prompt's, for models that pool without it (include_prompt=false).
    prompt_length: int = 0

    @property
    def length(self) -> int:
        return len(self.ids)

    @property
    def truncated(self) -> bool:
        return self.partial or self.original_length > len(self.ids)


def check_texts(texts: Sequence[str], cap: int) -> None:
    """Refuse a call's texts before they cost anything: none, more than `cap`, or an empty one."""
    if not texts:
        raise InvalidInput("inputs must hold at least one input.", field="inputs")
    if len(texts) > cap:
        raise TooManyInputs(len(texts), cap)
    for index, text in enumerate(texts):
        if not text:
            raise InvalidInput(
                f"Input {index} is an empty string; every input must hold text.", field=f"inputs[{index}]"
            )


class TextTokenizer:
    """Counts tokens (for usage and limit errors) and truncates exactly like the reference, reading a bounded prefix
    of every input. One `tokenizers.Tokenizer` with truncation and padding off, shared by threads: truncation is
    applied to each encoding, never set on the shared instance."""

    def __init__(self, path: Path, max_tokens: int, max_chars: int = 0) -> None:
        self.max_tokens = max_tokens
        self.max_chars = max_chars or CHARS_PER_TOKEN * max_tokens
        self._tokenizer = Tokenizer.from_file(str(path))
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        # Content tokens that fit beside the special tokens the post-processor adds ([CLS], [SEP]).
        self._content_limit = max_tokens - self._tokenizer.num_special_tokens_to_add(False)

    def over_limit(self, item: TokenizedInput) -> bool:
        return item.partial or item.original_length > self.max_tokens

    def encode(self, texts: Sequence[str], truncate: bool = False) -> list[TokenizedInput]:
        """Every input's tokens. Inputs over the limit are cut to it when `truncate`, else returned over it (whole,
        or as the tokens of their first `max_chars` characters, `partial`) for the caller to refuse."""
        inputs: list[TokenizedInput | None] = [None] * len(texts)
        short = [i for i, text in enumerate(texts) if len(text) <= self.max_chars]
        over: list[int] = []
        # One input: `encode` runs on this thread; `encode_batch` hands even one input to its thread pool and waits
        # (tens of microseconds of the event loop, which tokenizes small requests itself).
        batch = [texts[i] for i in short]
        encodings = [self._tokenizer.encode(batch[0])] if len(batch) == 1 else self._tokenizer.encode_batch(batch)
        for i, encoding in zip(short, encodings, strict=True):
            inputs[i] = _to_input(encoding, len(encoding.ids))
            if truncate and len(encoding.ids) > self.max_tokens:
                over.append(i)
        if over:  # cut as the reference cuts: the content tokens truncated, then the special tokens added
            contents = self._tokenizer.encode_batch([texts[i] for i in over], add_special_tokens=False)
            for i, content in zip(over, contents, strict=True):
                inputs[i] = _to_input(self._truncated(content), inputs[i].original_length)  # type: ignore[union-attr]
        for i, text in enumerate(texts):
            if inputs[i] is None:
                inputs[i] = self._encode_long(text, truncate)
        return inputs  # type: ignore[return-value]

    def measure(self, texts: Sequence[str]) -> list[TokenizedInput]:
        """`encode` without truncation, keeping only the counts (no ids): validating a million job inputs holds no
        more than a count per input."""
        empty = np.zeros(0, dtype=np.int64)
        return [
            TokenizedInput(empty, empty, item.original_length, item.partial, item.chars) for item in self.encode(texts)
        ]

    def _truncated(self, content: Encoding) -> Encoding:
        """The first `max_tokens` tokens of an input, special tokens included: HF truncation of one sequence."""
        content.truncate(self._content_limit)
        return self._tokenizer.post_process(content)

    def _encode_long(self, text: str, truncate: bool) -> TokenizedInput:
        """An input longer than `max_chars`: only its first `max_chars` characters are tokenized (see the module)."""
        content = self._tokenizer.encode(text[: self.max_chars], add_special_tokens=False)
        trusted = _complete_word_tokens(content)
        specials = self.max_tokens - self._content_limit
        if truncate:
            return _to_input(self._truncated(content), trusted + specials, partial=True, chars=len(text))
        empty = np.zeros(0, dtype=np.int64)
        return TokenizedInput(empty, empty, trusted + specials, partial=True, chars=len(text))


def _complete_word_tokens(content: Encoding) -> int:
    """Leading tokens of a prefix's encoding that belong to words ending inside the prefix: all but the last word's
    (the cut may run through it). Tokens without a word (no pre-tokenizer) are never trusted."""
    word_ids = content.word_ids
    if not word_ids or word_ids[-1] is None:
        return 0
    last = word_ids[-1]
    for position, word in enumerate(word_ids):
        if word is None or word >= last:
            return position
    return len(word_ids)


def _to_input(encoding: Encoding, original_length: int, partial: bool = False, chars: int = 0) -> TokenizedInput:
    return TokenizedInput(
        ids=np.asarray(encoding.ids, dtype=np.int64),
        type_ids=np.asarray(encoding.type_ids, dtype=np.int64),
        original_length=original_length,
        partial=partial,
        chars=chars,
    )


def token_id_bound(max_chars: int) -> int:
    """Token ids of one input worth reading for a model that reads `max_chars` characters: every cl100k id decodes
    to at least one byte and a character takes at most four, so the first 4 x (max_chars + 2) ids decode to more
    than `max_chars` whole characters, the same as the whole sequence's; the ids after them cannot change what the
    model reads (the input is over its limit either way)."""
    return 4 * (max_chars + 2)


class TokenIdDecoder:
    """Turns OpenAI cl100k_base token ids (what LangChain sends by default) back into text, offline; the model's
    own tokenizer then embeds that text, so ids give the same vector as their text.

    The tables take ~1.5 s to load, so they are loaded on first use, off the event loop.
    """

    def __init__(self, executor: Executor) -> None:
        self._executor = executor
        self._encoding = None
        self._lock = asyncio.Lock()

    async def load(self):
        async with self._lock:
            if self._encoding is None:
                import bpe_openai

                loop = asyncio.get_running_loop()
                self._encoding = await loop.run_in_executor(self._executor, bpe_openai.get_encoding, TOKEN_ID_ENCODING)
        return self._encoding

    async def decode(self, sequences: Sequence[Sequence[int] | np.ndarray]) -> list[str]:
        """The texts of token-id sequences (lists, or int64 arrays as the API reads them); InvalidInput for an id
        outside the vocabulary. Checked in bulk, decoded off the event loop: a 32 MiB request holds ~3M ids."""
        encoding = self._encoding or await self.load()
        for n, ids in enumerate(sequences):
            bad = _first_outside(ids, encoding.n_vocab)
            if bad is not None:
                raise InvalidInput(
                    f"Input {n} holds token id {bad}, outside the {TOKEN_ID_ENCODING} vocabulary.", field="input"
                )
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, _decode_all, encoding, sequences)


def _first_outside(ids: Sequence[int] | np.ndarray, vocabulary: int) -> int | None:
    """The first id of `ids` outside [0, vocabulary), if any."""
    if isinstance(ids, np.ndarray):
        outside = np.flatnonzero((ids < 0) | (ids >= vocabulary))
        return int(ids[outside[0]]) if outside.size else None
    return next((i for i in ids if not 0 <= i < vocabulary), None)


def _decode_all(encoding, sequences: Sequence[Sequence[int] | np.ndarray]) -> list[str]:
    return [encoding.decode(ids.tolist() if isinstance(ids, np.ndarray) else ids) for ids in sequences]
