"""Plain data the client returns: models, jobs, batches of vectors; and how a call's texts are split."""

from __future__ import annotations

import base64
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

# What a server that does not say (older versions) accepts per Embed call: the documented default.
DEFAULT_MAX_INPUTS = 2048
# Text bytes per request: far below the gRPC server's 256 MiB and the gateway's 16 MiB body cap.
DEFAULT_MAX_REQUEST_BYTES = 4 * 1024 * 1024
FINISHED_STATUSES = ("completed", "failed", "cancelled")
INPUT_TYPES = ("query", "document")


@dataclass(frozen=True)
class ModelInfo:
    id: str
    dimensions: int
    max_input_tokens: int
    max_inputs_per_request: int  # the most inputs one call may carry (calls are split to it)
    aliases: tuple[str, ...] = ()
    shortened_dimensions: tuple[int, ...] = ()
    normalize: bool = True
    pooling: str = ""
    query_prefix: str = ""
    document_prefix: str = ""
    owned_by: str = ""
    created: int = 0

    @classmethod
    def from_fields(cls, data: Mapping) -> ModelInfo:
        """From a `Model` message (as a dict) or REST's model object."""
        return cls(
            id=data["id"],
            dimensions=int(data.get("dimensions") or 0),
            max_input_tokens=int(data.get("max_input_tokens") or 0),
            max_inputs_per_request=int(data.get("max_inputs_per_request") or DEFAULT_MAX_INPUTS),
            aliases=tuple(data.get("aliases") or ()),
            shortened_dimensions=tuple(int(d) for d in data.get("shortened_dimensions") or ()),
            normalize=bool(data.get("normalize", True)),
            pooling=data.get("pooling") or "",
            query_prefix=data.get("query_prefix") or "",
            document_prefix=data.get("document_prefix") or "",
            owned_by=data.get("owned_by") or "",
            created=int(data.get("created") or 0),
        )


@dataclass(frozen=True)
class Job:
    """An async embedding job."""

    id: str
    status: str  # queued | in_progress | completed | failed | cancelled
    model: str
    completed: int
    total: int
    created_at: int = 0
    prompt_tokens: int = 0
    metadata: Mapping[str, str] = field(default_factory=dict)
    error_code: str = ""
    error_message: str = ""
    # The vectors' number type: "float", or a compact type ("int8", "uint8", "binary", "ubinary").
    embedding_type: str = "float"

    @property
    def finished(self) -> bool:
        return self.status in FINISHED_STATUSES

    @classmethod
    def from_fields(cls, data: Mapping) -> Job:
        """From a `Job` message (as a dict with proto field names) or REST's job object."""
        progress, usage, error = data.get("progress") or {}, data.get("usage") or {}, data.get("error") or {}
        return cls(
            id=data["id"],
            status=data.get("status", ""),
            model=data.get("model", ""),
            completed=int(progress.get("completed") or 0),
            total=int(progress.get("total") or data.get("input_count") or 0),
            created_at=int(data.get("created_at") or 0),
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            metadata=dict(data.get("metadata") or {}),
            error_code=error.get("code") or "",
            error_message=error.get("message") or "",
            embedding_type=data.get("embedding_type") or "float",
        )


@dataclass(frozen=True)
class JobPage:
    jobs: list[Job]
    has_more: bool
    last_id: str


@dataclass(frozen=True)
class EmbedBatch:
    """The vectors of texts[start : start + len(vectors)], as one request returned them."""

    start: int
    vectors: np.ndarray  # float32 [n, dimensions]
    tokens: np.ndarray  # tokens each input counted (after truncation)
    truncated: np.ndarray  # whether each input was cut to the model's limit
    model: str
    # Tokens of this request's inputs the server served from its embedding cache (counted in `tokens` too).
    cached_tokens: int = 0

    @property
    def stop(self) -> int:
        return self.start + len(self.vectors)


def plan_batches(texts: Sequence[str], max_inputs: int, max_bytes: int) -> Iterator[tuple[int, int]]:
    """(start, stop) ranges covering `texts` in order, each at most `max_inputs` texts and `max_bytes` of UTF-8
    (a single longer text goes alone: the server decides about it)."""
    if max_inputs < 1:
        raise ValueError("max_inputs must be at least 1")
    start, size = 0, 0
    for index, text in enumerate(texts):
        length = len(text.encode("utf-8"))
        if index > start and (index - start >= max_inputs or size + length > max_bytes):
            yield start, index
            start, size = index, 0
        size += length
    if start < len(texts):
        yield start, len(texts)


def as_texts(texts: str | Sequence[str]) -> list[str]:
    """A list of strings (a single string is one input)."""
    if isinstance(texts, str):
        return [texts]
    result = list(texts)
    bad = next((i for i, t in enumerate(result) if not isinstance(t, str)), None)
    if bad is not None:
        raise TypeError(f"texts[{bad}] is {type(result[bad]).__name__}, not str")
    return result


def decode_vector(embedding: str | Sequence[float]) -> np.ndarray:
    """A REST / job-results embedding: base64 of little-endian float32, or a list of floats."""
    if isinstance(embedding, str):
        return np.frombuffer(base64.b64decode(embedding), dtype="<f4")
    return np.asarray(embedding, dtype=np.float32)


def input_type_name(value: str | None) -> str:
    if value in (None, ""):
        return ""
    if value not in INPUT_TYPES:
        raise ValueError(f"input_type must be one of {INPUT_TYPES}, got {value!r}")
    return value
