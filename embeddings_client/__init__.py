"""Python client of the embeddings service: `EmbeddingsClient` (gRPC, blocking), `AsyncEmbeddingsClient` (gRPC,
asyncio), `RestEmbeddingsClient` (the REST gateway), `connect(url)` (whichever the URL names); typed errors; and
the command-line client `embeddings` (`python -m embeddings_client`)."""

from embeddings_client.aio import AsyncEmbeddingsClient
from embeddings_client.client import EmbeddingsClient
from embeddings_client.errors import (
    AuthenticationError,
    DeadlineExceededError,
    EmbeddingsError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    UnavailableError,
)
from embeddings_client.rest import RestEmbeddingsClient, connect
from embeddings_client.retry import NO_RETRIES, RetryPolicy
from embeddings_client.types import EmbedBatch, Job, JobPage, ModelInfo

__all__ = [
    "NO_RETRIES",
    "AsyncEmbeddingsClient",
    "AuthenticationError",
    "DeadlineExceededError",
    "EmbedBatch",
    "EmbeddingsClient",
    "EmbeddingsError",
    "InvalidRequestError",
    "Job",
    "JobPage",
    "ModelInfo",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "RestEmbeddingsClient",
    "RetryPolicy",
    "ServerError",
    "UnavailableError",
    "connect",
]
