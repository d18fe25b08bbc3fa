"""The interface of the async-job store: jobs, their chunks and results, webhooks, events and deliveries.

Nothing may be lost when the process is killed, so every state change is one transaction and the server keeps
nothing of a job in memory that it cannot rebuild from the store. The server codes against `JobStore`; the backends
(one SQLite file, or PostgreSQL for several replicas) are in `service.stores`. Records and errors: `records`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from service.jobs.records import (
    Chunk,
    ChunkVectors,
    Delivery,
    DeliveryAttempt,
    Job,
    JobEvent,
    NewAttempt,
    NewJob,
    Page,
    Results,
    Webhook,
)


class JobStore(Protocol):
    """Jobs, chunks, results, webhooks and deliveries. Methods block: call them off the event loop."""

    def create_job(self, new: NewJob, now: int) -> Job:
        """The job and all its chunks, in one transaction. NotFound if the webhook is not this tenant's; a duplicate
        `job_id` fails the insert."""
        ...

    def get_job(self, tenant: str, job_id: str) -> Job | None: ...

    def list_jobs(self, tenant: str, limit: int = 20, after: str | None = None) -> Page[Job]:
        """Newest first; `after` is the last job id of the previous page (InvalidCursor if not this tenant's)."""
        ...

    def cancel_job(self, tenant: str, job_id: str, now: int) -> Job | None:
        """Queued or in-progress -> cancelled; a finished job comes back unchanged (the caller answers 409)."""
        ...

    def fail_job(self, job_id: str, error: Mapping[str, str], now: int) -> Job | None:
        """An unfinished job -> failed with `error` ({"code", "message"}); a finished one comes back unchanged."""
        ...

    def claim_chunk(self, owner: str, now: int, lease_s: int) -> Chunk | None:
        """Lease the next chunk to embed (see `service.stores.sql.jobs` for the order), or None when there is none."""
        ...

    def renew_lease(self, job_id: str, idx: int, owner: str, now: int, lease_s: int) -> bool:
        """Extend `owner`'s lease; False when it lost it (reclaimed, or the job was cancelled or failed)."""
        ...

    def release_chunk(self, job_id: str, idx: int, owner: str, failed: bool) -> int | None:
        """Give a chunk `owner` holds back to be claimed at once, counting a failure if `failed`; its failure count
        after that, or None when `owner` no longer held it."""
        ...

    def complete_chunk(self, job_id: str, idx: int, owner: str, result: ChunkVectors, now: int) -> Job:
        """Store a chunk's vectors if `owner` still holds it and the job is unfinished; otherwise change nothing.
        Either way returns the job; the last chunk completes it. Idempotent."""
        ...

    def results(self, tenant: str, job_id: str, offset: int, limit: int) -> Results:
        """Vectors of inputs [offset, offset + limit), reading only the chunks that hold them, in their stored type."""
        ...

    def expire_results(self, now: int, limit: int = 100) -> list[str]:
        """Delete the chunks of up to `limit` jobs past `expires_at`; returns their ids."""
        ...

    def create_webhook(
        self, tenant: str, url: str, description: str, secret: str, now: int, max_per_tenant: int = 0
    ) -> Webhook:
        """A new endpoint; TooManyWebhooks if the tenant already has `max_per_tenant` (0: no cap)."""
        ...

    def list_webhooks(self, tenant: str) -> list[Webhook]: ...

    def get_webhook(self, tenant: str, webhook_id: str) -> Webhook | None: ...

    def delete_webhook(self, tenant: str, webhook_id: str, now: int) -> bool: ...

    def disable_webhook(self, webhook_id: str, reason: str, now: int) -> Webhook | None: ...

    def add_event(self, job: Job, type: str, payload: str, now: int) -> JobEvent:
        """Record an event and enqueue its delivery; a second call for the same job and type returns the first."""
        ...

    def due_deliveries(self, now: int, limit: int, owner: str, lease_s: int) -> list[Delivery]:
        """Lease up to `limit` deliveries due by `now`: no other owner gets them until the lease expires."""
        ...

    def record_attempt(self, delivery_id: str, owner: str, attempt: NewAttempt, now: int) -> bool:
        """Append an attempt; the delivery retries or ends as it says. False if `owner` lost the lease."""
        ...

    def list_attempts(self, tenant: str, webhook_id: str, limit: int = 50) -> list[DeliveryAttempt]: ...

    def count_jobs_by_status(self) -> dict[str, int]:
        """Jobs per status, all tenants (metrics)."""
        ...

    def close(self) -> None: ...
