"""Tokenization with the model's own `tokenizer.json`: exact token counts, truncation only on request."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Encoding, Tokenizer


@dataclass(frozen=True, slots=True)
class TokenizedInput:
    """One input's token ids (special tokens included), ready to pad into a batch."""

    ids: np.ndarray
    type_ids: np.ndarray
    # Tokens the input had before any truncation.
    original_length: int
    # Leading tokens pooling leaves out: the prompt's, for models that pool without it (include_prompt=false).
    prompt_length: int = 0

    @property
    def length(self) -> int:
        return len(self.ids)

    @property
    def truncated(self) -> bool:
        return self.original_length > len(self.ids)


class TextTokenizer:
    """Counts tokens without truncation (for usage and limit errors) and truncates like the reference on request.

    Two tokenizer instances: truncation is a property of a `tokenizers.Tokenizer`, and mutating one shared
    instance per call would race across threads.
    """

    def __init__(self, path: Path, max_tokens: int) -> None:
        self.max_tokens = max_tokens
        self._full = Tokenizer.from_file(str(path))
        self._full.no_padding()
        self._full.no_truncation()
        self._truncating = Tokenizer.from_file(str(path))
        self._truncating.no_padding()
        self._truncating.enable_truncation(max_tokens)

    def encode(self, texts: Sequence[str]) -> list[TokenizedInput]:
        """Tokenize without truncation: inputs over the limit are returned whole."""
        return [_to_input(enc, len(enc.ids)) for enc in self._full.encode_batch(list(texts))]

    def lengths(self, texts: Sequence[str]) -> list[int]:
        """Token counts only (special tokens included, no truncation)."""
        return [len(enc.ids) for enc in self._full.encode_batch(list(texts))]

    def truncate(self, texts: Sequence[str], original_lengths: Sequence[int]) -> list[TokenizedInput]:
        """Re-tokenize over-long inputs with truncation at the model's limit (special tokens kept)."""
        encodings = self._truncating.encode_batch(list(texts))
        return [_to_input(enc, n) for enc, n in zip(encodings, original_lengths, strict=True)]


def _to_input(encoding: Encoding, original_length: int) -> TokenizedInput:
    return TokenizedInput(
        ids=np.asarray(encoding.ids, dtype=np.int64),
        type_ids=np.asarray(encoding.type_ids, dtype=np.int64),
        original_length=original_length,
    )
