"""Prompts: the text a model wants before each input of a kind (query, document), and what pooling skips of it.

A model trained with instructions ("Instruct: ...\\nQuery: ") or prefixes ("query: ") is given them per the API's
`input_type`, from its manifest. A model that pools without the prompt (sentence-transformers' include_prompt=false)
leaves out as many leading tokens as the prompt alone has, without the special token that ends a lone prompt:
sentence-transformers' own count (Transformer._get_prompt_length), computed once per prompt at load.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tokenizers import Tokenizer

from service.engine.manifest import ModelManifest


@dataclass(frozen=True)
class Prompts:
    """Per input type ("" for calls naming none): the text prepended, and the tokens pooling leaves out."""

    texts: dict[str, str] = field(default_factory=dict)
    excluded_tokens: dict[str, int] = field(default_factory=dict)

    @classmethod
    def load(cls, manifest: ModelManifest, tokenizer_path: Path, input_types: Sequence[str]) -> Prompts:
        texts = {kind: manifest.prompt(kind) for kind in input_types}
        texts = {kind: text for kind, text in texts.items() if text}
        if manifest.include_prompt or not texts:
            return cls(texts)
        tokenizer = Tokenizer.from_file(str(tokenizer_path))
        tokenizer.no_padding()
        tokenizer.no_truncation()
        return cls(texts, {kind: prompt_length(tokenizer, text) for kind, text in texts.items()})

    def prepend(self, texts: Sequence[str], input_type: str) -> Sequence[str]:
        prompt = self.texts.get(input_type, "")
        return [prompt + text for text in texts] if prompt else texts

    def excluded(self, input_type: str) -> int:
        return self.excluded_tokens.get(input_type, 0)


def prompt_length(tokenizer: Tokenizer, prompt: str) -> int:
    """Tokens of `prompt` tokenized alone, less a special token at its end (the [SEP] or EOS a lone text gets)."""
    encoding = tokenizer.encode(prompt)
    length = len(encoding.ids)
    if length and encoding.special_tokens_mask[-1]:
        length -= 1
    return length
