"""Batches: created `validating`, leased by workers step by step, ended with their files and event at once."""

from __future__ import annotations

from collections import Counter
from typing import Any

from service.batches.records import Batch, BatchAnnounce, BatchRequest, NewBatch, OutputFiles, ValidatedBatch
from service.jobs.records import NotFound, Page, new_id
from service.stores.sql.database import Connection, Database, dumps, retried
from service.stores.sql.pages import tenant_page
from service.stores.sql.rows import BATCH, BATCH_REQUEST
from service.stores.sql.webhooks import record_event, require_webhook

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


class BatchRows:
    """`BatchStore`'s batches, their jobs and requests; `batch_announce` builds the event recorded, in the same
    transaction, when a batch finishes: (type, data JSON), or None."""

    _db: Database
    batch_announce: BatchAnnounce | None = None

    def create_batch(self, new: NewBatch, now: int) -> Batch:
        batch_id = new_id("batch")
        with self._db.write() as conn:
            require_webhook(conn, new.tenant, new.webhook_id)
            found = conn.execute(
                "SELECT 1 FROM files WHERE id = ? AND tenant = ? AND status = 'processed' AND purpose = 'batch'",
                (new.input_file_id, new.tenant),
            ).fetchone()
            if found is None:
                raise NotFound(f"No file '{new.input_file_id}'.")
            models = dumps(list(new.models)) if new.models is not None else None
            conn.execute(
                "INSERT INTO batches (id, tenant, key_id, models, status, endpoint, completion_window, input_file_id,"
                " output_expires_after, metadata, webhook_id, created_at, expires_at)"
                " VALUES (?, ?, ?, ?, 'validating', ?, ?, ?, ?, ?, ?, ?, ?)",
                (batch_id, new.tenant, new.key_id, models, new.endpoint, new.completion_window, new.input_file_id,
                 new.output_expires_after, dumps(new.metadata), new.webhook_id, now, now + new.window_s),
            )  # fmt: skip
            return self._batch_row(conn, batch_id)

    @staticmethod
    def _batch_row(conn: Connection, batch_id: str, tenant: str | None = None) -> Batch:
        return BATCH.by_id(conn, "batches", batch_id, tenant)  # type: ignore[return-value]

    def get_batch(self, tenant: str, batch_id: str) -> Batch | None:
        with self._db.read() as conn:
            return self._batch_row(conn, batch_id, tenant)

    def list_batches(self, tenant: str, limit: int = 20, after: str | None = None) -> Page[Batch]:
        with self._db.read() as conn:
            return tenant_page(conn, "batches", BATCH, tenant, limit, after, noun="batch")

    @retried
    def cancel_batch(self, tenant: str, batch_id: str, now: int) -> Batch | None:
        with self._db.write() as conn:
            conn.execute(
                "UPDATE batches SET status = 'cancelling', cancelling_at = ?, lease_owner = NULL,"
                " lease_expires_at = NULL WHERE id = ? AND tenant = ? AND status IN ('validating', 'in_progress')",
                (now, batch_id, tenant),
            )
            return self._batch_row(conn, batch_id, tenant)

    # --- worker side ----------------------------------------------------------------------------------------------

    @retried
    def claim_batch(self, owner: str, now: int, lease_s: int) -> Batch | None:
        with self._db.write() as conn:
            row = conn.execute(_CLAIMABLE_BATCH_SQL + self._db.skip_locked.replace("FOR UPDATE", "FOR UPDATE OF b"),
                               {"now": now}).fetchone()  # fmt: skip
            if row is None:
                return None
            conn.execute(
                "UPDATE batches SET lease_owner = ?, lease_expires_at = ? WHERE id = ?", (owner, now + lease_s, row[0])
            )
            return self._batch_row(conn, row[0])

    @retried
    def renew_batch_lease(self, batch_id: str, owner: str, now: int, lease_s: int) -> str | None:
        with self._db.write() as conn:
            renewed = conn.execute(
                "UPDATE batches SET lease_expires_at = ? WHERE id = ? AND lease_owner = ?",
                (now + lease_s, batch_id, owner),
            ).rowcount
            if not renewed:
                return None
            return conn.execute("SELECT status FROM batches WHERE id = ?", (batch_id,)).fetchone()[0]

    @retried
    def release_batch(self, batch_id: str, owner: str) -> None:
        with self._db.write() as conn:
            conn.execute(
                "UPDATE batches SET lease_owner = NULL, lease_expires_at = NULL WHERE id = ? AND lease_owner = ?",
                (batch_id, owner),
            )

    @retried
    def add_batch_job(self, batch_id: str, part: int, job_id: str) -> None:
        with self._db.write() as conn:
            conn.execute(
                "INSERT INTO batch_jobs (batch_id, part, job_id) VALUES (?, ?, ?)"
                " ON CONFLICT (batch_id, part) DO NOTHING",
                (batch_id, part, job_id),
            )

    def batch_jobs(self, batch_id: str) -> dict[int, str]:
        with self._db.read() as conn:
            rows = conn.execute("SELECT part, job_id FROM batch_jobs WHERE batch_id = ?", (batch_id,)).fetchall()
        return {row[0]: row[1] for row in rows}

    @retried
    def start_batch(self, batch_id: str, owner: str, validated: ValidatedBatch, now: int) -> Batch | None:
        """The rows' values are in `BATCH_REQUEST.select`'s column order."""
        with self._db.write() as conn:
            batch = self._owned(conn, batch_id, owner)
            if batch is None:
                return None
            conn.execute("DELETE FROM batch_requests WHERE batch_id = ?", (batch_id,))
            conn.execute("DELETE FROM batch_spans WHERE batch_id = ?", (batch_id,))
            rows = [(batch_id, *row) for row in validated.requests]
            conn.executemany(
                f"INSERT INTO batch_requests (batch_id, {BATCH_REQUEST.select}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            spans = Counter((row[3], row[6], row[7]) for row in rows if row[3] is not None)
            conn.executemany(
                "INSERT INTO batch_spans (batch_id, part, first_chunk, last_chunk, requests) VALUES (?, ?, ?, ?, ?)",
                [(batch_id, *span, count) for span, count in spans.items()],
            )
            conn.execute(
                "UPDATE batches SET model = ?, total = ?, failed = ?, lease_owner = NULL, lease_expires_at = NULL"
                " WHERE id = ?",
                (validated.model, validated.total, validated.refused, batch_id),
            )
            conn.execute(
                "UPDATE batches SET status = 'in_progress', in_progress_at = ? WHERE id = ? AND status = 'validating'",
                (now, batch_id),
            )
            return self._batch_row(conn, batch_id)

    def _owned(self, conn: Connection, batch_id: str, owner: str) -> Batch | None:
        sql = f"SELECT {BATCH.select} FROM batches WHERE id = ? AND lease_owner = ?" + self._db.for_update
        return BATCH.one(conn.execute(sql, (batch_id, owner)))

    @retried
    def fail_batch(
        self, batch_id: str, owner: str, batch_errors: list[dict[str, Any]], total: int, now: int
    ) -> Batch | None:
        with self._db.write() as conn:
            batch = self._owned(conn, batch_id, owner)
            if batch is None or batch.status != "validating":
                return None
            conn.execute(
                "UPDATE batches SET status = 'failed', failed_at = ?, errors = ?, total = ?, lease_owner = NULL,"
                " lease_expires_at = NULL WHERE id = ?",
                (now, dumps(batch_errors), total, batch_id),
            )
            return self._announce_batch(conn, batch_id, now)

    @retried
    def begin_finalizing(self, batch_id: str, owner: str, now: int) -> Batch | None:
        with self._db.write() as conn:
            if self._owned(conn, batch_id, owner) is None:
                return None
            conn.execute(
                "UPDATE batches SET status = 'finalizing', finalizing_at = ? WHERE id = ? AND status = 'in_progress'",
                (now, batch_id),
            )
            return self._batch_row(conn, batch_id)

    @retried
    def finish_batch(self, batch_id: str, owner: str, status: str, files: OutputFiles, now: int) -> Batch | None:
        if status not in _FINAL_TIMESTAMP:
            raise ValueError(f"a batch finishes completed, cancelled or expired, not {status!r}")
        with self._db.write() as conn:
            batch = self._owned(conn, batch_id, owner)
            if batch is None or batch.finished:
                return None
            for file_id in (files.output_id, files.error_id):
                if file_id is not None:
                    conn.execute("UPDATE files SET status = 'processed' WHERE id = ?", (file_id,))
            tally = files.tally
            conn.execute(
                f"UPDATE batches SET status = ?, {_FINAL_TIMESTAMP[status]} = ?, output_file_id = ?, error_file_id = ?,"
                " completed = ?, failed = ?, prompt_tokens = ?, lease_owner = NULL, lease_expires_at = NULL"
                " WHERE id = ?",
                (status, now, files.output_id, files.error_id, tally.completed, tally.failed, tally.tokens, batch_id),
            )
            return self._announce_batch(conn, batch_id, now)

    def accepted_requests(self, batch_id: str, after: tuple[int, int] | None, limit: int) -> list[BatchRequest]:
        part, start = after if after is not None else (-1, -1)
        with self._db.read() as conn:
            rows = conn.execute(
                f"SELECT {BATCH_REQUEST.select} FROM batch_requests WHERE batch_id = ? AND part IS NOT NULL"
                " AND (part > ? OR (part = ? AND start > ?)) ORDER BY part, start LIMIT ?",
                (batch_id, part, part, start, limit),
            ).fetchall()
        return [BATCH_REQUEST(row) for row in rows]

    def refused_requests(self, batch_id: str, after_line: int, limit: int) -> list[BatchRequest]:
        with self._db.read() as conn:
            rows = conn.execute(
                f"SELECT {BATCH_REQUEST.select} FROM batch_requests WHERE batch_id = ? AND part IS NULL AND line > ?"
                " ORDER BY line LIMIT ?",
                (batch_id, after_line, limit),
            ).fetchall()
        return [BATCH_REQUEST(row) for row in rows]

    def completed_requests(self, batch_id: str) -> int:
        """Counted with one row per run of chunks that requests span, not one per request."""
        with self._db.read() as conn:
            return conn.execute(
                "SELECT COALESCE(SUM(s.requests), 0) FROM batch_spans s JOIN batch_jobs bj ON bj.batch_id = s.batch_id"
                " AND bj.part = s.part WHERE s.batch_id = ? AND NOT EXISTS (SELECT 1 FROM chunks c"
                " WHERE c.job_id = bj.job_id AND c.idx BETWEEN s.first_chunk AND s.last_chunk AND c.status <> 'done')",
                (batch_id,),
            ).fetchone()[0]

    def _announce_batch(self, conn: Connection, batch_id: str, now: int) -> Batch:
        """The batch after a transition to a final state, with its event (and delivery) recorded."""
        batch = self._batch_row(conn, batch_id)
        event = self.batch_announce(batch, now) if self.batch_announce is not None else None
        if event is not None:
            record_event(conn, "batch_id", batch.id, batch.tenant, batch.webhook_id, event[0], event[1], now)
        return batch
