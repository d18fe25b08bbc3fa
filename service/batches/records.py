"""The Batch API's plain data: files (stored in parts), batches and their requests.

Conventions are the job store's (`service.jobs.records`): ids are a prefix and random characters (`file-`,
`batch_`), times are passed in, every tenant-facing read takes the tenant.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from service.jobs.records import new_id

BATCH_STATUSES = (
    "validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling", "cancelled"
)  # fmt: skip
FINAL_BATCH_STATUSES = ("failed", "completed", "expired", "cancelled")
# Statuses in which a batch waits for a worker step (validate, finalize, cancel).
WORK_STATUSES = ("validating", "finalizing", "cancelling")


def new_file_id() -> str:
    """OpenAI's style: `file-` and random characters (no underscore after the prefix)."""
    return new_id("file").replace("file_", "file-", 1)


@dataclass(frozen=True)
class FileRecord:
    id: str
    tenant: str
    # batch | batch_output
    purpose: str
    filename: str
    # uploading | processed | deleted
    status: str
    bytes: int
    lines: int
    created_at: int
    expires_at: int | None


@dataclass(frozen=True)
class NewBatch:
    """A batch to create (`BatchStore.create_batch`), `validating`; it expires `window_s` after its creation."""

    tenant: str
    key_id: str | None
    models: Sequence[str] | None
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str]
    webhook_id: str | None
    output_expires_after: int
    window_s: int


@dataclass(frozen=True)
class Batch:
    id: str
    tenant: str
    # The submitting key: its chunks are metered and rate-limited as that key's.
    key_id: str | None
    # The models that key may use (ids or aliases), None: all.
    models: tuple[str, ...] | None
    status: str
    endpoint: str
    completion_window: str
    input_file_id: str
    output_file_id: str | None
    error_file_id: str | None
    # Seconds the output and error files are kept after they are written.
    output_expires_after: int
    # The model of its requests (resolved id), once validated.
    model: str | None
    metadata: dict[str, str]
    webhook_id: str | None
    # [{"code", "message", "param", "line"}] when validation failed.
    errors: list[dict[str, Any]] | None
    total: int
    completed: int
    failed: int
    prompt_tokens: int
    created_at: int
    in_progress_at: int | None
    expires_at: int
    finalizing_at: int | None
    completed_at: int | None
    failed_at: int | None
    expired_at: int | None
    cancelling_at: int | None
    cancelled_at: int | None
    lease_owner: str | None
    lease_expires_at: int | None

    @property
    def finished(self) -> bool:
        return self.status in FINAL_BATCH_STATUSES


@dataclass(frozen=True)
class BatchRequest:
    """One line of a batch's input file: where its inputs sit in the batch's jobs, or why it was refused."""

    line: int
    custom_id: str
    # The batch job (its `part`) holding its inputs at [start, start + count); None when refused.
    part: int | None
    start: int | None
    count: int | None
    # The job's chunks holding those inputs (for progress).
    first_chunk: int | None
    last_chunk: int | None
    encoding_format: str | None
    # JSON {"status_code", "body"} of a refused line.
    error: str | None


@dataclass(frozen=True)
class ValidatedBatch:
    """A validated batch's requests (`BatchStore.start_batch`): rows of `BatchRequest`'s fields in its column order,
    `total` of them of which `refused` were refused at validation, and the one model they all name (or None)."""

    model: str | None
    requests: Iterable[Sequence[Any]]
    total: int
    refused: int


@dataclass
class Tally:
    """The requests a batch's output files answer: completed, failed, and the tokens of the completed ones."""

    completed: int = 0
    failed: int = 0
    tokens: int = 0


@dataclass(frozen=True)
class OutputFiles:
    """What finalization wrote: the files kept (None where nothing was written) and the request counts."""

    output_id: str | None
    error_id: str | None
    tally: Tally = field(default_factory=Tally)


# Builds the event recorded when a batch finishes: (type, data JSON), or None.
BatchAnnounce = Callable[[Batch, int], tuple[str, str] | None]
