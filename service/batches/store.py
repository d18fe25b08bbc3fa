"""The interface of the Batch API's store: files (stored in parts), batches, the jobs a batch runs as, its requests.

It lives in the job store's database, beside the jobs it runs as, so replicas in shared mode see the same files and
batches, and a batch's state and the webhook event that announces it change in one transaction, as jobs' do. The
backends are in `service.stores` (`SqliteStore`, `PostgresStore`); the records in `records`.

Worker-side calls that take an `owner` act only while that owner holds the batch's lease. A file is written as
`uploading` (invisible), one part at a time, then turned `processed`; a crash mid-upload leaves an `uploading` row
that `expire_files` removes later. A batch's output and error files are written the same way and turned `processed`
in the transaction that finishes the batch.
"""

from __future__ import annotations

from typing import Any, Protocol

from service.batches.records import (
    Batch,
    BatchAnnounce,
    BatchRequest,
    FileRecord,
    NewBatch,
    OutputFiles,
    ValidatedBatch,
)
from service.jobs.records import Page
from service.jobs.store import JobStore


class BatchStore(JobStore, Protocol):
    """The job store with the Batch API's files and batches. Methods block: call them off the event loop."""

    batch_announce: BatchAnnounce | None

    # --- files

    def create_file(self, tenant: str, purpose: str, filename: str, now: int, file_id: str | None = None) -> str:
        """A new file, `uploading` (invisible) until `finish_file`; returns its id."""
        ...

    def append_file_part(self, file_id: str, idx: int, data: bytes) -> None: ...

    def finish_file(
        self, file_id: str, size: int, lines: int, expires_at: int | None, publish: bool = True
    ) -> FileRecord:
        """Record a written file's size and line count; with `publish` it becomes visible (`processed`) now, else
        when `finish_batch` publishes it with the batch's end."""
        ...

    def discard_file(self, file_id: str) -> None:
        """Remove an unfinished file (an upload that failed, an output being rewritten) and its parts."""
        ...

    def get_file(self, tenant: str, file_id: str) -> FileRecord | None: ...

    def list_files(
        self, tenant: str, limit: int, after: str | None = None, ascending: bool = False, purpose: str | None = None
    ) -> Page[FileRecord]:
        """Processed files, newest first (or oldest first); `after` is the last id of the previous page."""
        ...

    def delete_file(self, tenant: str, file_id: str, now: int) -> bool:
        """Its contents go at once; the row stays (`deleted`), since batches name it."""
        ...

    def file_parts(self, file_id: str, first: int, count: int) -> list[bytes]:
        """Parts [first, first + count) of a file, in order (fewer at its end)."""
        ...

    def expire_files(self, now: int, stale_before: int, limit: int = 100) -> int:
        """Remove the contents of files past `expires_at`, and uploads begun before `stale_before` (their upload
        died with its process). Returns how many files were removed."""
        ...

    # --- batches

    def create_batch(self, new: NewBatch, now: int) -> Batch:
        """A `validating` batch. NotFound if the webhook or the input file (purpose batch) is not this tenant's."""
        ...

    def get_batch(self, tenant: str, batch_id: str) -> Batch | None: ...

    def list_batches(self, tenant: str, limit: int = 20, after: str | None = None) -> Page[Batch]:
        """Newest first; `after` is the last batch id of the previous page (InvalidCursor if not this tenant's)."""
        ...

    def cancel_batch(self, tenant: str, batch_id: str, now: int) -> Batch | None:
        """Validating or in progress -> cancelling (a worker then stops its jobs and writes what is done); any
        other batch comes back unchanged."""
        ...

    # --- worker side

    def claim_batch(self, owner: str, now: int, lease_s: int) -> Batch | None:
        """Lease the next batch that needs a worker: to validate, finalize or cancel, or in progress with all its
        jobs ended or its window passed."""
        ...

    def renew_batch_lease(self, batch_id: str, owner: str, now: int, lease_s: int) -> str | None:
        """Extend `owner`'s lease; the batch's status, or None when the lease was lost (cancelled, or taken over)."""
        ...

    def release_batch(self, batch_id: str, owner: str) -> None: ...

    def add_batch_job(self, batch_id: str, part: int, job_id: str) -> None: ...

    def batch_jobs(self, batch_id: str) -> dict[int, str]:
        """{part: job id} of the jobs a batch runs as."""
        ...

    def start_batch(self, batch_id: str, owner: str, validated: ValidatedBatch, now: int) -> Batch | None:
        """Record a validated batch's requests and turn it `in_progress`; a batch cancelled meanwhile keeps its
        requests (its output holds what was done) and its status. None if `owner` lost the lease."""
        ...

    def fail_batch(
        self, batch_id: str, owner: str, batch_errors: list[dict[str, Any]], total: int, now: int
    ) -> Batch | None:
        """A validating batch whose file did not validate -> failed with OpenAI's `errors`, announced in the same
        transaction. None if `owner` lost the lease (a cancelled batch is cleared of its lease: cancelling wins)."""
        ...

    def begin_finalizing(self, batch_id: str, owner: str, now: int) -> Batch | None:
        """In progress -> finalizing (its jobs ended); a cancelling or finalizing batch comes back as it is."""
        ...

    def finish_batch(self, batch_id: str, owner: str, status: str, files: OutputFiles, now: int) -> Batch | None:
        """The last step: its written files become visible, the batch ends as `status` (completed, cancelled or
        expired) with their counts, and its event is recorded, all in one transaction. None if `owner` lost the
        lease."""
        ...

    def accepted_requests(self, batch_id: str, after: tuple[int, int] | None, limit: int) -> list[BatchRequest]:
        """Requests with inputs in the batch's jobs, by (part, start), after the (part, start) of the last page."""
        ...

    def refused_requests(self, batch_id: str, after_line: int, limit: int) -> list[BatchRequest]:
        """Requests refused at validation, by line."""
        ...

    def completed_requests(self, batch_id: str) -> int:
        """Accepted requests all of whose inputs are embedded (progress of a running batch)."""
        ...
