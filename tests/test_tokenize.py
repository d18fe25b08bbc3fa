"""The engine's bounded tokenization on the real model's tokenizer: an input longer than the model reads is judged on a
bounded prefix, and truncating it gives exactly the tokens that truncating the whole input's tokenization gives
(what sentence-transformers feeds the model), on adversarial texts too."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from service.engine.manifest import TOKENIZER_FILE
from service.engine.tokenize import CHARS_PER_TOKEN, TextTokenizer

FP32 = "all-minilm-l6-v2"
LIMIT = 256
MAX_CHARS = CHARS_PER_TOKEN * LIMIT


@pytest.fixture(scope="module")
def tokenizer_path(model_repo: Path) -> Path:
    return model_repo / FP32 / TOKENIZER_FILE


@pytest.fixture(scope="module")
def engine(tokenizer_path: Path) -> TextTokenizer:
    return TextTokenizer(tokenizer_path, LIMIT)


@pytest.fixture(scope="module")
def reference(tokenizer_path: Path) -> Tokenizer:
    """The whole input tokenized, then truncated: what HF's fast tokenizer (sentence-transformers) does."""
    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    tokenizer.enable_truncation(LIMIT)
    return tokenizer


@pytest.fixture(scope="module")
def counter(tokenizer_path: Path) -> Tokenizer:
    return Tokenizer.from_file(str(tokenizer_path))  # no truncation: the whole input's count


def straddling(word: str) -> str:
    """Text whose `MAX_CHARS`-th character falls inside `word`."""
    filler = "the quick brown fox jumps over the lazy dog "
    head = (filler * (MAX_CHARS // len(filler) + 1))[: MAX_CHARS - len(word) // 2]
    return head + word + " and then some more words" * 40


ADVERSARIAL = {
    "a word straddling the cut": straddling("unbelievably"),
    "an accented word straddling the cut": straddling("crème-brûlée"),
    "a cut between a letter and its combining mark": straddling("cafe\u0301s") + "cafe\u0301 " * 10,
    "combining marks everywhere": "e\u0301\u0300\u0302 a\u0308\u0301 " * 3000,
    "multi-byte characters": "naïve façade 東京 🎉🎉 Ωmega " * 800,
    "a long run without spaces (CJK)": "漢字かなカナ" * 3000,
    "a long run without spaces (punctuation)": "a.b,c;d!e?" * 2000,
    "a long run without spaces (letters)": "word" + "x" * 20000,
    "emoji with joiners": "👩‍👩‍👧‍👦 👍🏽 🏳️‍🌈 " * 2000,
    "plain text 64x longer than read": "hello world, this is a sentence. " * (64 * MAX_CHARS // 33),
}


@pytest.mark.parametrize("case", list(ADVERSARIAL))
def test_truncation_equals_truncating_the_whole_tokenization(engine, reference, counter, case):
    text = ADVERSARIAL[case]
    assert len(text) > MAX_CHARS
    (item,) = engine.encode([text], truncate=True)
    expected = reference.encode(text)
    assert item.ids.tolist() == expected.ids and item.type_ids.tolist() == expected.type_ids
    assert item.truncated and item.partial and len(item.ids) <= LIMIT
    assert item.original_length <= len(counter.encode(text).ids)  # a true lower bound


@pytest.mark.parametrize("case", list(ADVERSARIAL))
def test_refusal_reads_a_bounded_prefix_and_reports_a_lower_bound(engine, case):
    text = ADVERSARIAL[case]
    (item,) = engine.encode([text], truncate=False)
    assert engine.over_limit(item) and item.partial and item.chars == len(text)
    assert item.length == 0  # nothing to embed: the caller refuses it


def test_inputs_within_the_character_bound_are_counted_exactly(engine, counter, reference):
    texts = ["short", "word " * 300, "漢" * 300]
    items = engine.encode(texts, truncate=False)
    assert [i.original_length for i in items] == [len(counter.encode(t).ids) for t in texts]
    assert not any(i.partial for i in items)
    assert [engine.over_limit(i) for i in items] == [False, True, True]
    cut = engine.encode(texts, truncate=True)
    assert [i.ids.tolist() for i in cut] == [reference.encode(t).ids for t in texts]
    assert [i.truncated for i in cut] == [False, True, True]
    assert [i.original_length for i in cut] == [i.original_length for i in items]


def test_sparse_text_is_cut_at_the_character_bound(engine, counter):
    """Whitespace runs hold no tokens: past the bound the input is over the limit by its length in characters."""
    text = "hello" + " " * (2 * MAX_CHARS) + "world"
    (item,) = engine.encode([text], truncate=True)
    assert item.ids.tolist() == counter.encode("hello").ids and item.truncated
    (refused,) = engine.encode([text], truncate=False)
    assert engine.over_limit(refused) and refused.original_length <= LIMIT and refused.chars == len(text)


def test_measure_keeps_counts_only(engine):
    items = engine.measure(["hello world", "word " * 300, "x " * 10_000])
    assert [len(i.ids) for i in items] == [0, 0, 0]
    assert [engine.over_limit(i) for i in items] == [False, True, True]
    assert items[0].original_length == 4 and items[1].original_length == 302


PIECES = st.sampled_from(
    [
        "the", "quick", "unbelievably", "façade", "cafe\u0301", "e\u0301\u0300", "東京", "漢字かな", "🎉", "👩‍👧",
        "x" * 40, "a.b", "don't", "ÉCOLE", "Ωmega", "\u200b", "\t", "1,234.5", "(test)", "naïve",
    ]
)  # fmt: skip
SEPARATORS = st.sampled_from([" ", "", "  ", "\n", "-"])


@settings(max_examples=60, deadline=None, database=None)
@given(st.lists(st.tuples(PIECES, SEPARATORS), min_size=1, max_size=40), st.integers(0, 200))
def test_any_long_mix_truncates_exactly(engine, reference, pieces, shift):
    """Long texts of mixed adversarial pieces, shifted so the cut falls anywhere: always the reference's tokens."""
    unit = "".join(piece + separator for piece, separator in pieces) + " "
    text = "w" * shift + " " + unit * (2 * MAX_CHARS // len(unit) + 2)
    (item,) = engine.encode([text], truncate=True)
    if item.ids.tolist() != reference.encode(text).ids:
        # The one documented exception (service/engine/tokenize.py): the first MAX_CHARS characters hold fewer
        # tokens than the limit (e.g. words too long for the vocabulary, each one [UNK]): embedded as cut there.
        prefix = reference.encode(text[:MAX_CHARS]).ids
        assert len(prefix) < LIMIT and item.ids.tolist() == prefix
