"""The real clients users call this service with, unchanged, against the real server through the real Envoy: each
must get the vectors sentence-transformers computes on the same model (cosine >= 0.9999), for short texts and for
2,000-token texts (cut to the model's 256 tokens, as sentence-transformers cuts them).

Clients: openai-python (base64 default, and float), the Node SDK, langchain-openai `OpenAIEmbeddings` (text mode,
and its default mode that sends cl100k token ids when tiktoken's file is at hand), llama-index
`OpenAILikeEmbedding`, litellm (sync and async), haystack-ai's OpenAI text and document embedders.
Installed by `make test-clients` (the `clients` extra); not part of `make test`.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
MODEL = "all-minilm-l6-v2"
MIN_COSINE = 0.9999


@dataclass(frozen=True)
class Gateway:
    base_url: str  # http://127.0.0.1:PORT
    requests: list[dict]  # JSON bodies the recording clients sent

    @property
    def v1(self) -> str:
        return f"{self.base_url}/v1"


def _vectors(items, key: str = "embedding") -> np.ndarray:
    rows = [item[key] if isinstance(item, dict) else getattr(item, key) for item in items]
    return np.array(rows, dtype=np.float32)


def _recording_http_client(gateway: Gateway):
    """An httpx client (the one the openai SDK uses) that keeps each request's JSON body."""
    import httpx2

    def record(request) -> None:
        gateway.requests.append(json.loads(request.content or b"{}"))

    return httpx2.Client(event_hooks={"request": [record]})


# --- the clients, each as its users call it -----------------------------------------------------------------------


def openai_python(gateway: Gateway, texts: list[str]) -> np.ndarray:
    from openai import OpenAI

    client = OpenAI(base_url=gateway.v1, api_key="unused", max_retries=0)
    data = client.embeddings.create(model=MODEL, input=texts).data  # asks for base64, decodes it
    return _vectors(sorted(data, key=lambda d: d.index))


def openai_python_float(gateway: Gateway, texts: list[str]) -> np.ndarray:
    from openai import OpenAI

    client = OpenAI(base_url=gateway.v1, api_key="unused", max_retries=0)
    return _vectors(client.embeddings.create(model=MODEL, input=texts, encoding_format="float").data)


def node_sdk(gateway: Gateway, texts: list[str]) -> np.ndarray:
    env = {**os.environ, "OPENAI_NODE_MODULES": str(ROOT / "build" / "npm" / "node_modules")}
    command = ["node", str(Path(__file__).parent / "node_embed.mjs"), gateway.v1, MODEL]
    done = subprocess.run(
        command, input=json.dumps({"texts": texts}), env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return np.array(json.loads(done.stdout)["vectors"], dtype=np.float32)


def langchain_text(gateway: Gateway, texts: list[str]) -> np.ndarray:
    from langchain_openai import OpenAIEmbeddings

    embeddings = OpenAIEmbeddings(
        model=MODEL, base_url=gateway.v1, api_key="unused", max_retries=0, check_embedding_ctx_length=False
    )
    return np.array(embeddings.embed_documents(texts), dtype=np.float32)


def langchain_token_ids(gateway: Gateway, texts: list[str]) -> np.ndarray:
    """LangChain's default: texts tokenized with tiktoken (cl100k_base for a model it does not know) and sent as
    token-id arrays, which the server decodes and embeds with the model's own tokenizer."""
    from langchain_openai import OpenAIEmbeddings

    embeddings = OpenAIEmbeddings(
        model=MODEL, base_url=gateway.v1, api_key="unused", max_retries=0, http_client=_recording_http_client(gateway)
    )
    vectors = np.array(embeddings.embed_documents(texts), dtype=np.float32)
    sent = [item for body in gateway.requests for item in body["input"]]
    assert len(sent) == len(texts) and all(isinstance(item, list) and isinstance(item[0], int) for item in sent)
    return vectors


def llama_index_openai_like(gateway: Gateway, texts: list[str]) -> np.ndarray:
    from llama_index.embeddings.openai_like import OpenAILikeEmbedding

    embedding = OpenAILikeEmbedding(model_name=MODEL, api_base=gateway.v1, api_key="unused", embed_batch_size=5)
    return np.array(embedding.get_text_embedding_batch(texts), dtype=np.float32)


def litellm_sync(gateway: Gateway, texts: list[str]) -> np.ndarray:
    import litellm

    response = litellm.embedding(model=f"openai/{MODEL}", input=texts, api_base=gateway.v1, api_key="unused")
    return _vectors(response.data)


def litellm_async(gateway: Gateway, texts: list[str]) -> np.ndarray:
    import litellm

    async def run():
        return await litellm.aembedding(model=f"openai/{MODEL}", input=texts, api_base=gateway.v1, api_key="unused")

    return _vectors(asyncio.run(run()).data)


def haystack_text(gateway: Gateway, texts: list[str]) -> np.ndarray:
    from haystack.components.embedders import OpenAITextEmbedder
    from haystack.utils import Secret

    embedder = OpenAITextEmbedder(api_key=Secret.from_token("unused"), model=MODEL, api_base_url=gateway.v1)
    return np.array([embedder.run(text=text)["embedding"] for text in texts], dtype=np.float32)


def haystack_documents(gateway: Gateway, texts: list[str]) -> np.ndarray:
    from haystack import Document
    from haystack.components.embedders import OpenAIDocumentEmbedder
    from haystack.utils import Secret

    embedder = OpenAIDocumentEmbedder(
        api_key=Secret.from_token("unused"), model=MODEL, api_base_url=gateway.v1, batch_size=5, progress_bar=False
    )
    documents = embedder.run(documents=[Document(content=text) for text in texts])["documents"]
    assert all(d.embedding is not None for d in documents), "a batch came back without embeddings"
    return np.array([d.embedding for d in documents], dtype=np.float32)


CLIENTS: dict[str, Callable[[Gateway, list[str]], np.ndarray]] = {
    "openai-python": openai_python,
    "openai-python-float": openai_python_float,
    "node-sdk": node_sdk,
    "langchain-text": langchain_text,
    "langchain-token-ids": langchain_token_ids,
    "llama-index-openai-like": llama_index_openai_like,
    "litellm-sync": litellm_sync,
    "litellm-async": litellm_async,
    "haystack-text": haystack_text,
    "haystack-documents": haystack_documents,
}
# The Python package each client needs (the `clients` extra); a missing one skips its client and says so.
NEEDS = {
    "langchain-text": "langchain_openai",
    "langchain-token-ids": "langchain_openai",
    "llama-index-openai-like": "llama_index.embeddings.openai_like",
    "litellm-sync": "litellm",
    "litellm-async": "litellm",
    "haystack-text": "haystack",
    "haystack-documents": "haystack",
}


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize("length", ["short", "long"])
@pytest.mark.parametrize("name", list(CLIENTS))
def test_client_gets_the_sentence_transformers_vectors(name, length, gateway, reference, request):
    if name in NEEDS:
        pytest.importorskip(NEEDS[name])
    if name == "langchain-token-ids":
        request.getfixturevalue("tiktoken_cache")  # skips when no package ships tiktoken's file
    texts = request.getfixturevalue(f"{length}_texts")
    vectors = CLIENTS[name](Gateway(gateway.base_url, []), texts)
    expected = reference(texts)
    assert vectors.shape == expected.shape
    similarity = cosines(vectors, expected)
    assert similarity.min() >= MIN_COSINE, (name, similarity.round(6).tolist())
