"""The async-job domain's plain data: jobs, their chunks, webhooks, events and deliveries, and the store's errors.

Conventions every store keeps (see `service.jobs.store.JobStore` for the interface, `service.stores` for the
backends):
- Ids are a prefix (`job_`, `wh_`, `evt_`, `dlv_`) and 24 random url-safe characters.
- Times are unix seconds passed in by the caller (`now`), so tests control time: a store never reads the clock.
- Every read, list, cancel and result call takes a tenant and never returns another tenant's rows: a row of another
  tenant reads as missing. Worker-side calls (claim, complete, fail, deliveries) are tenant-blind.
- A job's inputs are cut into chunks of `chunk_size` inputs at creation; a worker leases one chunk at a time,
  embeds it and stores its vectors as one BLOB (count x dims values of the chunk's `dtype`: little-endian float32,
  or the int8/uint8 bytes of a compact embedding type), dropping its inputs.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, NamedTuple, TypeVar

import numpy as np

# How long results stay after a job finishes (completed, failed or cancelled); `expire_results` drops them then.
DEFAULT_RETENTION_S = 7 * 24 * 3600
ID_RANDOM_BYTES = 18  # 24 url-safe base64 characters
# Where jobs submitted before the key id had its own column keep it: among their options.
LEGACY_KEY_ID_OPTION = "key_id"

ACTIVE_STATUSES = ("queued", "in_progress")
FINAL_STATUSES = ("completed", "failed", "cancelled")
FINAL_DELIVERY_STATES = ("succeeded", "failed", "disabled")

T = TypeVar("T")

# What a chunk's vectors BLOB holds (the chunks' `dtype` column): float32, or the bytes of a compact embedding type
# (int8 and binary: int8; uint8 and ubinary: uint8; binary types hold a byte per 8 dimensions).
FLOAT32 = "float32"
STORED_DTYPES = {FLOAT32: np.dtype("<f4"), "int8": np.dtype("i1"), "uint8": np.dtype("u1")}


def vector_itemsize(dtype: str) -> int:
    """Bytes per stored value of `dtype`; ValueError for a type a chunk cannot hold."""
    if dtype not in STORED_DTYPES:
        raise ValueError(f"vectors are stored as one of {', '.join(STORED_DTYPES)}, not {dtype!r}")
    return STORED_DTYPES[dtype].itemsize


class JobStoreError(Exception):
    """A request the store cannot satisfy as asked (never a database fault: those stay sqlite3 errors)."""


class NotFound(JobStoreError):
    """No such job, chunk or webhook for this tenant."""


class InvalidCursor(JobStoreError):
    """A list cursor that names no row of this tenant."""


class ResultsRemoved(JobStoreError):
    """The job's results passed their retention and were deleted (HTTP 410)."""


class ResultsNotReady(JobStoreError):
    """The requested range holds inputs that are not embedded (yet, or ever: the job failed or was cancelled)."""


class TooManyWebhooks(JobStoreError):
    """The tenant already has the most webhook endpoints allowed."""


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_urlsafe(ID_RANDOM_BYTES)}"


# --- records ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    id: str
    tenant: str
    # queued | in_progress | completed | failed | cancelled
    status: str
    model: str
    # encoding_format, dimensions, normalize, truncate, input_type, embedding_type: opaque to the store.
    options: dict[str, Any]
    metadata: dict[str, str]
    webhook_id: str | None
    total_inputs: int
    chunk_size: int
    completed_inputs: int
    prompt_tokens: int
    # {"code", "message"} once failed.
    error: dict[str, str] | None
    created_at: int
    started_at: int | None
    completed_at: int | None
    failed_at: int | None
    cancelled_at: int | None
    # When the results will be deleted: set when the job finishes, whatever the outcome.
    expires_at: int | None
    results_removed: bool
    # The API key that submitted it: its chunks are metered and rate-limited as that key's. None: submitted open.
    key_id: str | None = None
    # The end user it was submitted for (OpenAI's `user`; "" none): its chunks draw on that user's limits too.
    user: str = ""

    @property
    def finished(self) -> bool:
        return self.status in FINAL_STATUSES

    @property
    def chunk_count(self) -> int:
        return -(-self.total_inputs // self.chunk_size)


@dataclass(frozen=True)
class NewJob:
    """A job to create (`JobStore.create_job`): its inputs are cut into chunks of `chunk_size`. `job_id`: the id to
    give it (default: a new one); `key_id`: the submitting API key; `user`: the end user it was submitted for."""

    tenant: str
    model: str
    options: Mapping[str, Any]
    metadata: Mapping[str, str]
    webhook_id: str | None
    inputs: Sequence[str]
    chunk_size: int
    job_id: str | None = None
    key_id: str | None = None
    user: str = ""

    def __post_init__(self) -> None:
        if not self.inputs:
            raise ValueError("a job needs at least one input")
        if self.chunk_size < 1:
            raise ValueError("chunk_size must be positive")


@dataclass(frozen=True)
class Chunk:
    """A leased slice of a job's inputs: everything a worker needs to embed it, model and options included."""

    job_id: str
    idx: int
    # Index of the chunk's first input in the job.
    start: int
    count: int
    inputs: list[str]
    # pending | leased | done | failed
    status: str
    lease_owner: str | None
    lease_expires_at: int | None
    # How many times it was claimed (the first claim, and every takeover of a lease that ran out).
    attempts: int
    tenant: str
    model: str
    options: dict[str, Any]
    # How many times a worker reported that embedding it failed (`release_chunk(failed=True)`). A takeover is not
    # a failure: a lease runs out only when its worker stopped renewing it (it died or lost the store).
    failures: int = 0
    # The job's submitting key (see `Job.key_id`).
    key_id: str | None = None
    # The job's end user (see `Job.user`).
    user: str = ""


@dataclass(frozen=True)
class ChunkVectors:
    """A chunk's embedded inputs (`JobStore.complete_chunk`): count x dims values of `dtype` (one of
    `STORED_DTYPES`; every chunk of a job alike) as bytes, and each input's token count."""

    vectors: bytes
    dims: int
    token_counts: Sequence[int]
    dtype: str = FLOAT32

    @classmethod
    def of(cls, vectors: np.ndarray, token_counts: Sequence[int]) -> ChunkVectors:
        """A [count, dims] array as it is stored: float32, or a compact type's bytes."""
        return cls(vectors.tobytes(), vectors.shape[1], token_counts, vectors.dtype.name)


@dataclass(frozen=True)
class Webhook:
    """An endpoint a tenant registered. `secret` is kept in clear on purpose: it is needed to sign every attempt
    (HMAC), so it cannot be hashed; protect the database file like a credentials store."""

    id: str
    tenant: str
    url: str
    description: str
    secret: str
    created_at: int
    disabled_at: int | None
    disabled_reason: str | None


@dataclass(frozen=True)
class JobEvent:
    """Something that happened to a job. `id` is the Standard Webhooks `webhook-id`: one per event, kept across
    retries. `payload` is the JSON of the event's `data` object; the signed body is built from (id, type,
    created_at, data) at send time, e.g. with `webhooks.event_body`, so it is the same on every attempt."""

    id: str
    job_id: str
    tenant: str
    type: str
    payload: str
    created_at: int


@dataclass(frozen=True)
class Delivery:
    """One event to send to one endpoint, with what a sender needs (url, secret, event) joined in."""

    id: str
    tenant: str
    event_id: str
    event_type: str
    event_created_at: int
    payload: str
    # None for an event of a batch (service/batches).
    job_id: str | None
    webhook_id: str
    url: str
    secret: str
    # pending | succeeded | failed | disabled
    state: str
    # Attempts made so far (the one being made now is attempts + 1).
    attempts: int
    next_attempt_at: int | None
    lease_owner: str | None
    lease_expires_at: int | None
    created_at: int


@dataclass(frozen=True)
class DeliveryAttempt:
    """One recorded POST of a delivery, for GET /v1/webhooks/{id}/deliveries."""

    id: int
    delivery_id: str
    event_id: str
    event_type: str
    # None for an event of a batch (service/batches).
    job_id: str | None
    webhook_id: str
    attempted_at: int
    # None when no response came (timeout, connection error).
    status_code: int | None
    error: str | None
    duration_ms: int
    # The delivery's state now (not at the time of this attempt).
    delivery_state: str
    # 1 for the delivery's first attempt, counted over all of its attempts (not only those listed).
    attempt: int


@dataclass(frozen=True)
class NewAttempt:
    """One POST of a delivery to record (`JobStore.record_attempt`), and what follows it: a retry at
    `next_attempt_at`, or the end in `final_state` (exactly one of the two). `status_code` is None when no response
    came (timeout, connection error)."""

    status_code: int | None
    error: str | None
    duration_ms: int
    next_attempt_at: int | None = None
    final_state: str | None = None

    def __post_init__(self) -> None:
        if (self.next_attempt_at is None) == (self.final_state is None):
            raise ValueError("give exactly one of next_attempt_at (retry later) and final_state (done)")
        if self.final_state is not None and self.final_state not in FINAL_DELIVERY_STATES:
            raise ValueError(f"final_state must be one of {FINAL_DELIVERY_STATES}")


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    has_more: bool

    @property
    def first_id(self) -> str | None:
        return self.items[0].id if self.items else None  # type: ignore[attr-defined]

    @property
    def last_id(self) -> str | None:
        return self.items[-1].id if self.items else None  # type: ignore[attr-defined]


class Results(NamedTuple):
    """Vectors of inputs [offset, offset + n) in input order; `has_more` when inputs follow."""

    vectors: np.ndarray  # [n, dims] as stored: float32, or int8/uint8 (a compact type; binary: packed bits)
    token_counts: list[int]
    has_more: bool


# Called inside the transaction that finishes a job; returns the event (type, data JSON) to record with it, or None.
Announce = Callable[[Job, int], tuple[str, str] | None]
