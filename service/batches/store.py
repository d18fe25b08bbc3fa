"""Durable state of the Batch API: files (stored in parts), batches, the jobs a batch runs as, and its requests.

It lives in the job store's database, beside the jobs it runs as, so replicas in shared mode see the same files and
batches. `BatchStoreMixin` adds its methods to a job store class (`SqliteStore` here, `PostgresStore` in
service/stores/postgres.py) and uses that class's transactions (`_write`, `_read`), so a batch's state and the
webhook event that announces it change in one transaction, as jobs' do.

Conventions are the job store's: ids are a prefix and random characters (`file-`, `batch_`), times are passed in,
every tenant-facing read takes the tenant and another tenant's rows read as missing; worker-side calls that take an
`owner` act only while that owner holds the batch's lease.

A file is written as `uploading` (invisible), one part at a time, then turned `processed`; a crash mid-upload leaves
an `uploading` row that `expire_files` removes later. A batch's output and error files are written the same way and
turned `processed` in the transaction that finishes the batch.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from service.jobs.store import InvalidCursor, NotFound, Page, SqliteJobStore, _dumps, new_id

FILE_ID_RANDOM_BYTES = 18
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


# Builds the event recorded when a batch finishes: (type, data JSON), or None.
BatchAnnounce = Callable[[Batch, int], tuple[str, str] | None]

_FILE_COLUMNS = "id, tenant, purpose, filename, status, bytes, lines, created_at, expires_at"
_BATCH_COLUMNS = (
    "id, tenant, key_id, models, status, endpoint, completion_window, input_file_id, output_file_id, error_file_id, "
    "output_expires_after, model, metadata, webhook_id, errors, total, completed, failed, prompt_tokens, created_at, "
    "in_progress_at, expires_at, finalizing_at, completed_at, failed_at, expired_at, cancelling_at, cancelled_at, "
    "lease_owner, lease_expires_at"
)
_REQUEST_COLUMNS = "line, custom_id, part, start, count, first_chunk, last_chunk, encoding_format, error"
_FINAL_TIMESTAMP = {"completed": "completed_at", "cancelled": "cancelled_at", "expired": "expired_at"}
# A batch that needs a worker: a step to run, or (in progress) jobs that all ended or a window that passed.
_CLAIMABLE_BATCH_SQL = """
SELECT b.id FROM batches b
WHERE b.status IN ('validating', 'finalizing', 'cancelling', 'in_progress')
  AND (b.lease_expires_at IS NULL OR b.lease_expires_at <= :now)
  AND (b.status <> 'in_progress' OR b.expires_at <= :now
       OR NOT EXISTS (SELECT 1 FROM batch_jobs bj JOIN jobs j ON j.id = bj.job_id
                      WHERE bj.batch_id = b.id AND j.status IN ('queued', 'in_progress')))
ORDER BY b.seq
LIMIT 1
"""


def _file(row: Any) -> FileRecord:
    return FileRecord(*row)


def _batch(row: Any) -> Batch:
    values = dict(zip(_BATCH_COLUMNS.split(", "), row, strict=True))
    values["models"] = tuple(json.loads(values["models"])) if values["models"] is not None else None
    values["metadata"] = json.loads(values["metadata"])
    values["errors"] = json.loads(values["errors"]) if values["errors"] is not None else None
    return Batch(**values)


class BatchStoreMixin:
    """The Batch API's methods, for a class that has the job store's `_write`, `_read` and row-lock suffixes."""

    batch_announce: BatchAnnounce | None = None
    _FOR_UPDATE: str
    _SKIP_LOCKED: str

    # --- files ----------------------------------------------------------------------------------------------------

    def create_file(self, tenant: str, purpose: str, filename: str, now: int, file_id: str | None = None) -> str:
        """A new file, `uploading` (invisible) until `finish_file`; returns its id."""
        file_id = file_id or new_file_id()
        with self._write() as conn:  # type: ignore[attr-defined]
            conn.execute(
                "INSERT INTO files (id, tenant, purpose, filename, status, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (file_id, tenant, purpose, filename, "uploading", now),
            )
        return file_id

    def append_file_part(self, file_id: str, idx: int, data: bytes) -> None:
        with self._write() as conn:  # type: ignore[attr-defined]
            conn.execute("INSERT INTO file_parts (file_id, idx, data) VALUES (?, ?, ?)", (file_id, idx, data))

    def finish_file(
        self, file_id: str, size: int, lines: int, expires_at: int | None, publish: bool = True
    ) -> FileRecord:
        """Record a written file's size and line count; with `publish` it becomes visible (`processed`) now, else
        when `finish_batch` publishes it with the batch's end."""
        with self._write() as conn:  # type: ignore[attr-defined]
            conn.execute(
                "UPDATE files SET status = ?, bytes = ?, lines = ?, expires_at = ?"
                " WHERE id = ? AND status = 'uploading'",
                ("processed" if publish else "uploading", size, lines, expires_at, file_id),
            )
            row = conn.execute(f"SELECT {_FILE_COLUMNS} FROM files WHERE id = ?", (file_id,)).fetchone()
        return _file(row)

    def discard_file(self, file_id: str) -> None:
        """Remove an unfinished file (an upload that failed, an output being rewritten) and its parts."""
        with self._write() as conn:  # type: ignore[attr-defined]
            self._discard(conn, file_id)

    @staticmethod
    def _discard(conn: Any, file_id: str) -> None:
        if conn.execute("SELECT 1 FROM files WHERE id = ? AND status = 'uploading'", (file_id,)).fetchone():
            conn.execute("DELETE FROM file_parts WHERE file_id = ?", (file_id,))
            conn.execute("DELETE FROM files WHERE id = ?", (file_id,))

    def get_file(self, tenant: str, file_id: str) -> FileRecord | None:
        with self._read() as conn:  # type: ignore[attr-defined]
            row = conn.execute(
                f"SELECT {_FILE_COLUMNS} FROM files WHERE id = ? AND tenant = ? AND status = 'processed'",
                (file_id, tenant),
            ).fetchone()
        return _file(row) if row is not None else None

    def list_files(
        self, tenant: str, limit: int, after: str | None = None, ascending: bool = False, purpose: str | None = None
    ) -> Page[FileRecord]:
        """Processed files, newest first (or oldest first); `after` is the last id of the previous page."""
        with self._read() as conn:  # type: ignore[attr-defined]
            cursor = None
            if after is not None:
                row = conn.execute("SELECT seq FROM files WHERE id = ? AND tenant = ?", (after, tenant)).fetchone()
                if row is None:
                    raise InvalidCursor(f"No file '{after}' to list after.")
                cursor = row[0]
            compare, order = (">", "ASC") if ascending else ("<", "DESC")
            rows = conn.execute(
                f"SELECT {_FILE_COLUMNS} FROM files WHERE tenant = ? AND status = 'processed'"
                f" AND (? IS NULL OR purpose = ?) AND (? IS NULL OR seq {compare} ?) ORDER BY seq {order} LIMIT ?",
                (tenant, purpose, purpose, cursor, cursor, limit + 1),
            ).fetchall()
        return Page([_file(row) for row in rows[:limit]], has_more=len(rows) > limit)

    def delete_file(self, tenant: str, file_id: str, now: int) -> bool:
        """Its contents go at once; the row stays (`deleted`), since batches name it."""
        with self._write() as conn:  # type: ignore[attr-defined]
            deleted = conn.execute(
                "UPDATE files SET status = 'deleted', deleted_at = ?"
                " WHERE id = ? AND tenant = ? AND status = 'processed'",
                (now, file_id, tenant),
            ).rowcount
            if deleted:
                conn.execute("DELETE FROM file_parts WHERE file_id = ?", (file_id,))
        return deleted == 1

    def file_parts(self, file_id: str, first: int, count: int) -> list[bytes]:
        """Parts [first, first + count) of a file, in order (fewer at its end)."""
        with self._read() as conn:  # type: ignore[attr-defined]
            rows = conn.execute(
                "SELECT data FROM file_parts WHERE file_id = ? AND idx >= ? AND idx < ? ORDER BY idx",
                (file_id, first, first + count),
            ).fetchall()
        return [bytes(row[0]) for row in rows]

    def expire_files(self, now: int, stale_before: int, limit: int = 100) -> int:
        """Remove the contents of files past `expires_at`, and uploads begun before `stale_before` (their upload
        died with its process). Returns how many files were removed."""
        with self._write() as conn:  # type: ignore[attr-defined]
            expired = [
                row[0]
                for row in conn.execute(
                    "SELECT id FROM files WHERE status = 'processed' AND expires_at <= ? ORDER BY expires_at LIMIT ?"
                    + self._SKIP_LOCKED,
                    (now, limit),
                )
            ]
            for file_id in expired:
                conn.execute("UPDATE files SET status = 'deleted', deleted_at = ? WHERE id = ?", (now, file_id))
                conn.execute("DELETE FROM file_parts WHERE file_id = ?", (file_id,))
            stale = [
                row[0]
                for row in conn.execute(
                    "SELECT id FROM files WHERE status = 'uploading' AND created_at <= ? ORDER BY created_at LIMIT ?"
                    + self._SKIP_LOCKED,
                    (stale_before, limit),
                )
            ]
            for file_id in stale:
                self._discard(conn, file_id)
        return len(expired) + len(stale)

    # --- batches --------------------------------------------------------------------------------------------------

    def create_batch(
        self,
        tenant: str,
        key_id: str | None,
        models: Sequence[str] | None,
        input_file_id: str,
        endpoint: str,
        completion_window: str,
        metadata: dict[str, str],
        webhook_id: str | None,
        output_expires_after: int,
        now: int,
        window_s: int,
    ) -> Batch:
        """A `validating` batch. NotFound if the webhook or the input file (purpose batch) is not this tenant's."""
        batch_id = new_id("batch")
        with self._write() as conn:  # type: ignore[attr-defined]
            if webhook_id is not None:
                found = conn.execute(
                    "SELECT 1 FROM webhooks WHERE id = ? AND tenant = ? AND deleted_at IS NULL", (webhook_id, tenant)
                ).fetchone()
                if found is None:
                    raise NotFound(f"No webhook '{webhook_id}'.")
            found = conn.execute(
                "SELECT 1 FROM files WHERE id = ? AND tenant = ? AND status = 'processed' AND purpose = 'batch'",
                (input_file_id, tenant),
            ).fetchone()
            if found is None:
                raise NotFound(f"No file '{input_file_id}'.")
            conn.execute(
                "INSERT INTO batches (id, tenant, key_id, models, status, endpoint, completion_window, input_file_id,"
                " output_expires_after, metadata, webhook_id, created_at, expires_at)"
                " VALUES (?, ?, ?, ?, 'validating', ?, ?, ?, ?, ?, ?, ?, ?)",
                (batch_id, tenant, key_id, _dumps(list(models)) if models is not None else None, endpoint,
                 completion_window, input_file_id, output_expires_after, _dumps(metadata), webhook_id, now,
                 now + window_s),
            )  # fmt: skip
            return self._batch_row(conn, batch_id)

    @staticmethod
    def _batch_row(conn: Any, batch_id: str, tenant: str | None = None) -> Batch:
        sql, params = f"SELECT {_BATCH_COLUMNS} FROM batches WHERE id = ?", (batch_id,)
        if tenant is not None:
            sql, params = sql + " AND tenant = ?", (batch_id, tenant)
        row = conn.execute(sql, params).fetchone()
        return _batch(row) if row is not None else None  # type: ignore[return-value]

    def get_batch(self, tenant: str, batch_id: str) -> Batch | None:
        with self._read() as conn:  # type: ignore[attr-defined]
            return self._batch_row(conn, batch_id, tenant)

    def list_batches(self, tenant: str, limit: int = 20, after: str | None = None) -> Page[Batch]:
        """Newest first; `after` is the last batch id of the previous page (InvalidCursor if not this tenant's)."""
        with self._read() as conn:  # type: ignore[attr-defined]
            before = None
            if after is not None:
                row = conn.execute("SELECT seq FROM batches WHERE id = ? AND tenant = ?", (after, tenant)).fetchone()
                if row is None:
                    raise InvalidCursor(f"No batch '{after}' to list after.")
                before = row[0]
            rows = conn.execute(
                f"SELECT {_BATCH_COLUMNS} FROM batches WHERE tenant = ? AND (? IS NULL OR seq < ?)"
                " ORDER BY seq DESC LIMIT ?",
                (tenant, before, before, limit + 1),
            ).fetchall()
        return Page([_batch(row) for row in rows[:limit]], has_more=len(rows) > limit)

    def cancel_batch(self, tenant: str, batch_id: str, now: int) -> Batch | None:
        """Validating or in progress -> cancelling (a worker then stops its jobs and writes what is done); any
        other batch comes back unchanged."""
        with self._write() as conn:  # type: ignore[attr-defined]
            conn.execute(
                "UPDATE batches SET status = 'cancelling', cancelling_at = ?, lease_owner = NULL,"
                " lease_expires_at = NULL WHERE id = ? AND tenant = ? AND status IN ('validating', 'in_progress')",
                (now, batch_id, tenant),
            )
            return self._batch_row(conn, batch_id, tenant)

    # --- worker side ----------------------------------------------------------------------------------------------

    def claim_batch(self, owner: str, now: int, lease_s: int) -> Batch | None:
        """Lease the next batch that needs a worker: to validate, finalize or cancel, or in progress with all its
        jobs ended or its window passed."""
        with self._write() as conn:  # type: ignore[attr-defined]
            row = conn.execute(_CLAIMABLE_BATCH_SQL + self._SKIP_LOCKED.replace("FOR UPDATE", "FOR UPDATE OF b"),
                               {"now": now}).fetchone()  # fmt: skip
            if row is None:
                return None
            conn.execute(
                "UPDATE batches SET lease_owner = ?, lease_expires_at = ? WHERE id = ?", (owner, now + lease_s, row[0])
            )
            return self._batch_row(conn, row[0])

    def renew_batch_lease(self, batch_id: str, owner: str, now: int, lease_s: int) -> str | None:
        """Extend `owner`'s lease; the batch's status, or None when the lease was lost (cancelled, or taken over)."""
        with self._write() as conn:  # type: ignore[attr-defined]
            renewed = conn.execute(
                "UPDATE batches SET lease_expires_at = ? WHERE id = ? AND lease_owner = ?",
                (now + lease_s, batch_id, owner),
            ).rowcount
            if not renewed:
                return None
            return conn.execute("SELECT status FROM batches WHERE id = ?", (batch_id,)).fetchone()[0]

    def release_batch(self, batch_id: str, owner: str) -> None:
        with self._write() as conn:  # type: ignore[attr-defined]
            conn.execute(
                "UPDATE batches SET lease_owner = NULL, lease_expires_at = NULL WHERE id = ? AND lease_owner = ?",
                (batch_id, owner),
            )

    def add_batch_job(self, batch_id: str, part: int, job_id: str) -> None:
        with self._write() as conn:  # type: ignore[attr-defined]
            conn.execute(
                "INSERT INTO batch_jobs (batch_id, part, job_id) VALUES (?, ?, ?)"
                " ON CONFLICT (batch_id, part) DO NOTHING",
                (batch_id, part, job_id),
            )

    def batch_jobs(self, batch_id: str) -> dict[int, str]:
        """{part: job id} of the jobs a batch runs as."""
        with self._read() as conn:  # type: ignore[attr-defined]
            rows = conn.execute("SELECT part, job_id FROM batch_jobs WHERE batch_id = ?", (batch_id,)).fetchall()
        return {row[0]: row[1] for row in rows}

    def start_batch(
        self,
        batch_id: str,
        owner: str,
        model: str | None,
        requests: Iterable[Sequence[Any]],
        total: int,
        refused: int,
        now: int,
    ) -> Batch | None:
        """Record a validated batch's requests (rows of `_REQUEST_COLUMNS`) and turn it `in_progress`; a batch
        cancelled meanwhile keeps its requests (its output holds what was done) and its status. None if `owner`
        lost the lease."""
        with self._write() as conn:  # type: ignore[attr-defined]
            batch = self._owned(conn, batch_id, owner)
            if batch is None:
                return None
            conn.execute("DELETE FROM batch_requests WHERE batch_id = ?", (batch_id,))
            conn.execute("DELETE FROM batch_spans WHERE batch_id = ?", (batch_id,))
            rows = [(batch_id, *row) for row in requests]
            conn.executemany(
                f"INSERT INTO batch_requests (batch_id, {_REQUEST_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows
            )
            spans = Counter((row[3], row[6], row[7]) for row in rows if row[3] is not None)
            conn.executemany(
                "INSERT INTO batch_spans (batch_id, part, first_chunk, last_chunk, requests) VALUES (?, ?, ?, ?, ?)",
                [(batch_id, *span, count) for span, count in spans.items()],
            )
            conn.execute(
                "UPDATE batches SET model = ?, total = ?, failed = ?, lease_owner = NULL, lease_expires_at = NULL"
                " WHERE id = ?",
                (model, total, refused, batch_id),
            )
            conn.execute(
                "UPDATE batches SET status = 'in_progress', in_progress_at = ? WHERE id = ? AND status = 'validating'",
                (now, batch_id),
            )
            return self._batch_row(conn, batch_id)

    def _owned(self, conn: Any, batch_id: str, owner: str) -> Batch | None:
        row = conn.execute(
            f"SELECT {_BATCH_COLUMNS} FROM batches WHERE id = ? AND lease_owner = ?" + self._FOR_UPDATE,
            (batch_id, owner),
        ).fetchone()
        return _batch(row) if row is not None else None

    def fail_batch(
        self, batch_id: str, owner: str, batch_errors: list[dict[str, Any]], total: int, now: int
    ) -> Batch | None:
        """A validating batch whose file did not validate -> failed with OpenAI's `errors`, announced in the same
        transaction. None if `owner` lost the lease (a cancelled batch is cleared of its lease: cancelling wins)."""
        with self._write() as conn:  # type: ignore[attr-defined]
            batch = self._owned(conn, batch_id, owner)
            if batch is None or batch.status != "validating":
                return None
            conn.execute(
                "UPDATE batches SET status = 'failed', failed_at = ?, errors = ?, total = ?, lease_owner = NULL,"
                " lease_expires_at = NULL WHERE id = ?",
                (now, _dumps(batch_errors), total, batch_id),
            )
            return self._announce_batch(conn, batch_id, now)

    def begin_finalizing(self, batch_id: str, owner: str, now: int) -> Batch | None:
        """In progress -> finalizing (its jobs ended); a cancelling or finalizing batch comes back as it is."""
        with self._write() as conn:  # type: ignore[attr-defined]
            if self._owned(conn, batch_id, owner) is None:
                return None
            conn.execute(
                "UPDATE batches SET status = 'finalizing', finalizing_at = ? WHERE id = ? AND status = 'in_progress'",
                (now, batch_id),
            )
            return self._batch_row(conn, batch_id)

    def finish_batch(
        self,
        batch_id: str,
        owner: str,
        status: str,
        output_file_id: str | None,
        error_file_id: str | None,
        completed: int,
        failed: int,
        prompt_tokens: int,
        now: int,
    ) -> Batch | None:
        """The last step: its written files become visible, the batch ends as `status` (completed, cancelled or
        expired), and its event is recorded, all in one transaction. None if `owner` lost the lease."""
        if status not in _FINAL_TIMESTAMP:
            raise ValueError(f"a batch finishes completed, cancelled or expired, not {status!r}")
        with self._write() as conn:  # type: ignore[attr-defined]
            batch = self._owned(conn, batch_id, owner)
            if batch is None or batch.finished:
                return None
            for file_id in (output_file_id, error_file_id):
                if file_id is not None:
                    conn.execute("UPDATE files SET status = 'processed' WHERE id = ?", (file_id,))
            conn.execute(
                f"UPDATE batches SET status = ?, {_FINAL_TIMESTAMP[status]} = ?, output_file_id = ?, error_file_id = ?,"
                " completed = ?, failed = ?, prompt_tokens = ?, lease_owner = NULL, lease_expires_at = NULL"
                " WHERE id = ?",
                (status, now, output_file_id, error_file_id, completed, failed, prompt_tokens, batch_id),
            )
            return self._announce_batch(conn, batch_id, now)

    def accepted_requests(self, batch_id: str, after: tuple[int, int] | None, limit: int) -> list[BatchRequest]:
        """Requests with inputs in the batch's jobs, by (part, start), after the (part, start) of the last page."""
        part, start = after if after is not None else (-1, -1)
        with self._read() as conn:  # type: ignore[attr-defined]
            rows = conn.execute(
                f"SELECT {_REQUEST_COLUMNS} FROM batch_requests WHERE batch_id = ? AND part IS NOT NULL"
                " AND (part > ? OR (part = ? AND start > ?)) ORDER BY part, start LIMIT ?",
                (batch_id, part, part, start, limit),
            ).fetchall()
        return [BatchRequest(*row) for row in rows]

    def refused_requests(self, batch_id: str, after_line: int, limit: int) -> list[BatchRequest]:
        """Requests refused at validation, by line."""
        with self._read() as conn:  # type: ignore[attr-defined]
            rows = conn.execute(
                f"SELECT {_REQUEST_COLUMNS} FROM batch_requests WHERE batch_id = ? AND part IS NULL AND line > ?"
                " ORDER BY line LIMIT ?",
                (batch_id, after_line, limit),
            ).fetchall()
        return [BatchRequest(*row) for row in rows]

    def completed_requests(self, batch_id: str) -> int:
        """Accepted requests all of whose inputs are embedded (progress of a running batch): one row per run of
        chunks that requests span, not one per request."""
        with self._read() as conn:  # type: ignore[attr-defined]
            return conn.execute(
                "SELECT COALESCE(SUM(s.requests), 0) FROM batch_spans s JOIN batch_jobs bj ON bj.batch_id = s.batch_id"
                " AND bj.part = s.part WHERE s.batch_id = ? AND NOT EXISTS (SELECT 1 FROM chunks c"
                " WHERE c.job_id = bj.job_id AND c.idx BETWEEN s.first_chunk AND s.last_chunk AND c.status <> 'done')",
                (batch_id,),
            ).fetchone()[0]

    # --- events ---------------------------------------------------------------------------------------------------

    def _announce_batch(self, conn: Any, batch_id: str, now: int) -> Batch:
        """The batch after a transition to a final state, with its event (and delivery) recorded."""
        batch = self._batch_row(conn, batch_id)
        event = self.batch_announce(batch, now) if self.batch_announce is not None else None
        if event is not None:
            self._add_batch_event(conn, batch, event[0], event[1], now)
        return batch

    @staticmethod
    def _add_batch_event(conn: Any, batch: Batch, type: str, payload: str, now: int) -> None:
        """As the job store's `_add_event`: once per (batch, type), one delivery to the batch's endpoint."""
        conn.execute(
            "INSERT INTO events (id, batch_id, tenant, type, payload, created_at) VALUES (?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (batch_id, type) DO NOTHING",
            (new_id("evt"), batch.id, batch.tenant, type, payload, now),
        )
        if batch.webhook_id is None:
            return
        event_id = conn.execute("SELECT id FROM events WHERE batch_id = ? AND type = ?", (batch.id, type)).fetchone()[0]
        webhook = conn.execute(
            "SELECT disabled_at FROM webhooks WHERE id = ? AND deleted_at IS NULL", (batch.webhook_id,)
        ).fetchone()
        if webhook is None:
            return
        disabled = webhook[0] is not None
        conn.execute(
            "INSERT INTO deliveries (id, tenant, event_id, webhook_id, state, next_attempt_at, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (event_id, webhook_id) DO NOTHING",
            (new_id("dlv"), batch.tenant, event_id, batch.webhook_id, "disabled" if disabled else "pending",
             None if disabled else now, now),
        )  # fmt: skip


class SqliteStore(BatchStoreMixin, SqliteJobStore):
    """The single-node store: jobs, webhooks and the Batch API on one SQLite file."""
