"""Tiny randomly initialised models of each architecture the server imports, saved as sentence-transformers
directories, built inside the tests from transformers' config classes (no downloads).

Every architecture gets a word-level tokenizer over a small English vocabulary with its family's special tokens
(BERT: [CLS] x [SEP]; RoBERTa-style: <s> x </s>; decoders: x <|endoftext|>, padded on the left like
Qwen3-Embedding), so texts tokenize into real words and inputs longer than the limit get truncated.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HIDDEN = 32
MAX_POSITIONS = 64
WORDS = [
    *("the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "hello", "world", "a", "an", "is", "of", "and"),
    *("to", "in", "what", "how", "why", "where", "search", "vector", "embedding", "model", "server", "batch", "token"),
    *("text", "query", "document", "short", "long", "sentence", "cat", "sat", "on", "mat", "instruct", "given", "web"),
    *("retrieve", "passages", "that", "answer", "represent", "this", "for", "searching", "relevant"),
    *(".", ",", "?", "!", ":"),
]
ALL_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
QUERY_INSTRUCTION = "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery: "


@dataclass(frozen=True)
class Family:
    """How to make one architecture: its special tokens, its post-processor and its network."""

    name: str
    specials: tuple[str, ...]  # in vocabulary order, from id 0
    pad: str
    template: tuple[str, ...]  # special tokens around a text: (before, after) or (after,) for decoders
    padding_side: str
    network: Callable[[int, dict[str, int]], Any]  # (vocab size, special ids) -> a transformers model


def _bert(vocab_size: int, ids: dict[str, int]) -> Any:
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=vocab_size, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=MAX_POSITIONS, pad_token_id=ids["[PAD]"],
    )  # fmt: skip
    return BertModel(config, add_pooling_layer=False)


def _xlm_roberta(vocab_size: int, ids: dict[str, int]) -> Any:
    from transformers import XLMRobertaConfig, XLMRobertaModel

    config = XLMRobertaConfig(
        vocab_size=vocab_size, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=MAX_POSITIONS + 2, pad_token_id=ids["<pad>"], bos_token_id=ids["<s>"],
        eos_token_id=ids["</s>"], type_vocab_size=1,
    )  # fmt: skip
    return XLMRobertaModel(config, add_pooling_layer=False)


def _mpnet(vocab_size: int, ids: dict[str, int]) -> Any:
    from transformers import MPNetConfig, MPNetModel

    config = MPNetConfig(
        vocab_size=vocab_size, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=MAX_POSITIONS + 2, pad_token_id=ids["<pad>"], bos_token_id=ids["<s>"],
        eos_token_id=ids["</s>"],
    )  # fmt: skip
    return MPNetModel(config, add_pooling_layer=False)


def _modernbert(vocab_size: int, ids: dict[str, int]) -> Any:
    from transformers import ModernBertConfig, ModernBertModel

    config = ModernBertConfig(
        vocab_size=vocab_size, hidden_size=HIDDEN, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=MAX_POSITIONS, pad_token_id=ids["[PAD]"], bos_token_id=ids["[CLS]"],
        eos_token_id=ids["[SEP]"], cls_token_id=ids["[CLS]"], sep_token_id=ids["[SEP]"], local_attention=8,
        global_attn_every_n_layers=2,
    )  # fmt: skip
    return ModernBertModel(config)


def _qwen3(vocab_size: int, ids: dict[str, int]) -> Any:
    from transformers import Qwen3Config, Qwen3Model

    config = Qwen3Config(
        vocab_size=vocab_size, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        head_dim=8, intermediate_size=64, max_position_embeddings=MAX_POSITIONS, pad_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|endoftext|>"], tie_word_embeddings=True,
    )  # fmt: skip
    return Qwen3Model(config)


BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
ROBERTA_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")
FAMILIES = {
    "bert": Family("bert", BERT_SPECIALS, "[PAD]", ("[CLS]", "[SEP]"), "right", _bert),
    "xlm-roberta": Family("xlm-roberta", ROBERTA_SPECIALS, "<pad>", ("<s>", "</s>"), "right", _xlm_roberta),
    "mpnet": Family("mpnet", ROBERTA_SPECIALS, "<pad>", ("<s>", "</s>"), "right", _mpnet),
    "modernbert": Family("modernbert", BERT_SPECIALS, "[PAD]", ("[CLS]", "[SEP]"), "right", _modernbert),
    "qwen3": Family("qwen3", ("<|endoftext|>", "<unk>"), "<|endoftext|>", ("<|endoftext|>",), "left", _qwen3),
}


def _tokenizer(family: Family) -> Any:
    """A word-level fast tokenizer with the family's special tokens and post-processor, as transformers saves it."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    unk = "[UNK]" if "[UNK]" in family.specials else "<unk>"
    vocab = {token: i for i, token in enumerate([*family.specials, *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token=unk))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    if len(family.template) == 2:
        first, last = family.template
        single, pair = f"{first} $A {last}", f"{first} $A {last} $B:1 {last}:1"
    else:
        (last,) = family.template
        first, single, pair = None, f"$A {last}", f"$A {last} $B:1 {last}:1"
    specials = [(token, vocab[token]) for token in dict.fromkeys(family.template)]
    backend.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=specials)
    backend.add_special_tokens([AddedToken(token, special=True) for token in family.specials])
    roles = {"pad_token": family.pad, "unk_token": unk}
    if first is not None:
        roles.update(cls_token=first, bos_token=first, sep_token=last, eos_token=last)
        roles["mask_token"] = "[MASK]" if "[MASK]" in family.specials else "<mask>"
    else:
        roles["eos_token"] = last
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, padding_side=family.padding_side, model_max_length=MAX_POSITIONS, **roles
    )
    return tokenizer, vocab


@dataclass(frozen=True)
class Pipeline:
    """A sentence-transformers pipeline on top of a family's network."""

    name: str
    modes: tuple[str, ...]
    max_seq_length: int
    include_prompt: bool = True
    dense: tuple[tuple[int, str, bool], ...] = ()  # (out_features, torch activation class, use_residual)
    normalize: bool = False
    lowercase: bool = False
    prompts: dict[str, str] | None = None
    default_prompt_name: str | None = None


def save_network(family: Family, root: Path) -> Path:
    """The network and its tokenizer as a plain Hugging Face directory."""
    import torch

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tokenizer, vocab = _tokenizer(family)
    torch.manual_seed(0)
    network = family.network(len(vocab), vocab).eval()
    path = root / f"{family.name}-hf"
    network.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def save_pipeline(family: Family, network_dir: Path, pipeline: Pipeline, root: Path) -> Path:
    """A sentence-transformers directory: Transformer -> Pooling -> Dense ... -> Normalize, with prompts."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling, Transformer

    torch.manual_seed(1)
    transformer = Transformer(str(network_dir), max_seq_length=pipeline.max_seq_length)
    transformer.do_lower_case = pipeline.lowercase
    modules: list[Any] = [transformer, Pooling(HIDDEN, pipeline.modes, include_prompt=pipeline.include_prompt)]
    size = HIDDEN * len(pipeline.modes)
    for out_features, activation, residual in pipeline.dense:
        function = getattr(torch.nn, activation)()
        modules.append(Dense(size, out_features, activation_function=function, use_residual=residual))
        size = out_features
    if pipeline.normalize:
        modules.append(Normalize())
    model = SentenceTransformer(
        modules=modules, prompts=pipeline.prompts, default_prompt_name=pipeline.default_prompt_name, device="cpu"
    )
    path = root / f"{family.name}-{pipeline.name}"
    model.save(str(path), create_model_card=False)
    return path
