"""Jobs, their chunks (leased to workers one at a time) and their results.

Claim order (fairness): among unfinished jobs with a claimable chunk (pending, or leased with an expired lease),
take the job with the fewest live leases, then the one served least recently, then the oldest; within it, the
lowest chunk index. So concurrent workers spread across jobs, and even a single worker round-robins between them
one chunk at a time: a small job submitted behind a 100k-input one waits for one chunk per earlier job, not for the
whole of it. Each backend finds the next claim its own way (`_next_claim`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from service.jobs.records import (
    ACTIVE_STATUSES,
    STORED_DTYPES,
    Announce,
    Chunk,
    ChunkVectors,
    Job,
    NewJob,
    NotFound,
    Page,
    Results,
    ResultsNotReady,
    ResultsRemoved,
    new_id,
    vector_itemsize,
)
from service.stores.sql.database import Connection, Database, claim_ids, dumps, retried
from service.stores.sql.pages import tenant_page
from service.stores.sql.rows import CHUNK, JOB
from service.stores.sql.webhooks import record_job_event, require_webhook

_EXPIRED_JOBS_SQL = (
    "SELECT id FROM jobs WHERE results_removed = 0 AND expires_at IS NOT NULL AND expires_at <= ?"
    " ORDER BY expires_at LIMIT ?"
)


def duration(seconds: int) -> str:
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size} {unit}"
    return f"{seconds} seconds"


class JobRows:
    """`JobStore`'s jobs, chunks and results. `announce` builds the event to record, atomically, when a job
    finishes (completed, failed, cancelled): a crash right after the transition can then never lose its webhook. It
    runs inside the write transaction, so it must be quick and must not call the store."""

    _db: Database
    retention_s: int
    _announce: Announce | None

    def _next_claim(self, conn: Connection, now: int) -> tuple[str, int] | None:
        """(job id, chunk index) to lease next, in claim order; a backend's own statements."""
        raise NotImplementedError

    @staticmethod
    def _job_row(conn: Connection, job_id: str, tenant: str | None = None) -> Job | None:
        return JOB.by_id(conn, "jobs", job_id, tenant)

    def _finish(self, conn: Connection, job_id: str, now: int) -> Job:
        """The job after a transition to a final state, with its announcement recorded in the same transaction."""
        job = self._job_row(conn, job_id)
        assert job is not None
        if self._announce is not None:
            event = self._announce(job, now)
            if event is not None:
                record_job_event(conn, job, event[0], event[1], now)
        return job

    # --- jobs

    def create_job(self, new: NewJob, now: int) -> Job:
        job_id = new.job_id or new_id("job")
        # Encoded before the transaction: other writers wait only for the inserts.
        inputs, size = new.inputs, new.chunk_size
        chunks = [
            (job_id, idx, start, len(part), dumps(part))
            for idx, start in enumerate(range(0, len(inputs), size))
            for part in [list(inputs[start : start + size])]
        ]
        with self._db.write() as conn:
            require_webhook(conn, new.tenant, new.webhook_id)
            conn.execute(
                "INSERT INTO jobs (id, tenant, status, model, options, metadata, webhook_id, total_inputs, chunk_size,"
                " created_at, key_id, end_user) VALUES (?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (job_id, new.tenant, new.model, dumps(dict(new.options)), dumps(dict(new.metadata)), new.webhook_id,
                 len(inputs), size, now, new.key_id, new.user),
            )  # fmt: skip
            conn.executemany(
                "INSERT INTO chunks (job_id, idx, start, count, status, inputs) VALUES (?, ?, ?, ?, 'pending', ?)",
                chunks,
            )
            job = self._job_row(conn, job_id)
        assert job is not None
        return job

    def get_job(self, tenant: str, job_id: str) -> Job | None:
        with self._db.read() as conn:
            return self._job_row(conn, job_id, tenant)

    def count_jobs_by_status(self) -> dict[str, int]:
        with self._db.read() as conn:
            return {row[0]: row[1] for row in conn.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status")}

    def list_jobs(self, tenant: str, limit: int = 20, after: str | None = None) -> Page[Job]:
        if limit < 1:
            raise ValueError("limit must be positive")
        with self._db.read() as conn:
            return tenant_page(conn, "jobs", JOB, tenant, limit, after, noun="job")

    @retried
    def cancel_job(self, tenant: str, job_id: str, now: int) -> Job | None:
        with self._db.write() as conn:
            updated = conn.execute(
                "UPDATE jobs SET status = 'cancelled', cancelled_at = ?, expires_at = ?"
                " WHERE id = ? AND tenant = ? AND status IN ('queued', 'in_progress')",
                (now, now + self.retention_s, job_id, tenant),
            ).rowcount
            if updated:
                return self._finish(conn, job_id, now)
            return self._job_row(conn, job_id, tenant)

    @retried
    def fail_job(self, job_id: str, error: Mapping[str, str], now: int) -> Job | None:
        with self._db.write() as conn:
            updated = conn.execute(
                "UPDATE jobs SET status = 'failed', error = ?, failed_at = ?, expires_at = ?"
                " WHERE id = ? AND status IN ('queued', 'in_progress')",
                (dumps(dict(error)), now, now + self.retention_s, job_id),
            ).rowcount
            if not updated:
                return self._job_row(conn, job_id)
            conn.execute(
                "UPDATE chunks SET status = 'failed', lease_expires_at = NULL"
                " WHERE job_id = ? AND status IN ('pending', 'leased')",
                (job_id,),
            )
            return self._finish(conn, job_id, now)

    # --- chunks

    @retried
    def claim_chunk(self, owner: str, now: int, lease_s: int) -> Chunk | None:
        with self._db.write() as conn:
            claim = self._next_claim(conn, now)
            if claim is None:
                return None
            job_id, idx = claim
            conn.execute(
                "UPDATE chunks SET status = 'leased', lease_owner = ?, lease_expires_at = ?, attempts = attempts + 1"
                " WHERE job_id = ? AND idx = ?",
                (owner, now + lease_s, job_id, idx),
            )
            conn.execute(
                "UPDATE jobs SET status = 'in_progress', started_at = COALESCE(started_at, ?),"
                " last_claim = (SELECT MAX(last_claim) FROM jobs) + 1 WHERE id = ?",
                (now, job_id),
            )
            row = conn.execute(
                f"SELECT {CHUNK.select} FROM chunks c JOIN jobs j ON j.id = c.job_id WHERE c.job_id = ? AND c.idx = ?",
                (job_id, idx),
            ).fetchone()
        return CHUNK(row)

    @retried
    def renew_lease(self, job_id: str, idx: int, owner: str, now: int, lease_s: int) -> bool:
        with self._db.write() as conn:
            return (
                conn.execute(
                    "UPDATE chunks SET lease_expires_at = ?"
                    " WHERE job_id = ? AND idx = ? AND status = 'leased' AND lease_owner = ?"
                    " AND EXISTS (SELECT 1 FROM jobs WHERE id = ? AND status IN ('queued', 'in_progress'))",
                    (now + lease_s, job_id, idx, owner, job_id),
                ).rowcount
                == 1
            )

    @retried
    def release_chunk(self, job_id: str, idx: int, owner: str, failed: bool) -> int | None:
        with self._db.write() as conn:
            released = conn.execute(
                "UPDATE chunks SET status = 'pending', lease_owner = NULL, lease_expires_at = NULL,"
                " failures = failures + ? WHERE job_id = ? AND idx = ? AND status = 'leased' AND lease_owner = ?",
                (int(failed), job_id, idx, owner),
            ).rowcount
            if not released:
                return None
            return conn.execute("SELECT failures FROM chunks WHERE job_id = ? AND idx = ?", (job_id, idx)).fetchone()[0]

    @retried
    def complete_chunk(self, job_id: str, idx: int, owner: str, result: ChunkVectors, now: int) -> Job:
        """A lease that expired but was not reclaimed still counts: the work is done and nobody else did it."""
        vectors, dims, dtype = result.vectors, result.dims, result.dtype
        nbytes = memoryview(vectors).nbytes
        itemsize = vector_itemsize(dtype)
        counts = np.asarray(result.token_counts, dtype="<i4")
        with self._db.write() as conn:
            row = conn.execute(
                "SELECT c.count, c.status, c.lease_owner, j.status AS job_status"
                " FROM chunks c JOIN jobs j ON j.id = c.job_id WHERE c.job_id = ? AND c.idx = ?" + self._db.for_update,
                (job_id, idx),
            ).fetchone()
            if row is None:
                job = self._job_row(conn, job_id)
                if job is None:
                    raise NotFound(f"No job '{job_id}'.")
                return job
            owned = row["status"] == "leased" and row["lease_owner"] == owner
            if not owned or row["job_status"] not in ACTIVE_STATUSES:
                job = self._job_row(conn, job_id)
                assert job is not None
                return job
            count = row["count"]
            if dims < 1 or nbytes != count * dims * itemsize or len(counts) != count:
                raise ValueError(
                    f"chunk {job_id}/{idx} holds {count} inputs: expected {count} x {dims} {dtype} vectors "
                    f"({count * dims * itemsize} bytes) and {count} token counts, got {nbytes} bytes and {len(counts)}"
                )
            other = conn.execute(
                "SELECT dims, dtype FROM chunks WHERE job_id = ? AND status = 'done' LIMIT 1", (job_id,)
            ).fetchone()
            if other is not None and (other[0], other[1]) != (dims, dtype):
                raise ValueError(f"job {job_id} has {other[0]} x {other[1]} vectors, chunk {idx} has {dims} x {dtype}")
            conn.execute(
                "UPDATE chunks SET status = 'done', lease_expires_at = NULL, dims = ?, dtype = ?, token_counts = ?,"
                " vectors = ?, inputs = NULL WHERE job_id = ? AND idx = ?",
                (dims, dtype, counts.tobytes(), vectors, job_id, idx),
            )
            conn.execute(
                "UPDATE jobs SET completed_inputs = completed_inputs + ?, prompt_tokens = prompt_tokens + ?"
                " WHERE id = ?",
                (count, int(counts.sum()), job_id),
            )
            finished = conn.execute(
                "UPDATE jobs SET status = 'completed', completed_at = ?, expires_at = ?"
                " WHERE id = ? AND completed_inputs = total_inputs",
                (now, now + self.retention_s, job_id),
            ).rowcount
            if finished:
                return self._finish(conn, job_id, now)
            job = self._job_row(conn, job_id)
            assert job is not None
            return job

    # --- results

    def results(self, tenant: str, job_id: str, offset: int, limit: int) -> Results:
        if offset < 0 or limit < 1:
            raise ValueError("offset must be >= 0 and limit positive")
        with self._db.read() as conn:
            job = self._job_row(conn, job_id, tenant)
            if job is None:
                raise NotFound(f"No job '{job_id}'.")
            if job.results_removed:
                raise ResultsRemoved(
                    f"The results of job '{job_id}' have expired and were deleted: results are kept for "
                    f"{duration(self.retention_s)} after a job finishes (this one's expired at {job.expires_at})."
                )
            end = min(offset + limit, job.total_inputs)
            if offset >= end:
                return Results(np.zeros((0, 0), dtype=np.float32), [], has_more=False)
            rows = conn.execute(
                "SELECT idx, start, count, status, dims, dtype, token_counts, vectors FROM chunks"
                " WHERE job_id = ? AND idx BETWEEN ? AND ? ORDER BY idx",
                (job_id, offset // job.chunk_size, (end - 1) // job.chunk_size),
            ).fetchall()
        vectors, counts = [], []
        for row in rows:
            if row["status"] != "done":
                raise ResultsNotReady(
                    f"Inputs {row['start']}..{row['start'] + row['count'] - 1} of job '{job_id}' are not embedded."
                )
            lo, hi = max(offset, row["start"]) - row["start"], min(end, row["start"] + row["count"]) - row["start"]
            block = np.frombuffer(row["vectors"], dtype=STORED_DTYPES[row["dtype"]]).reshape(row["count"], row["dims"])
            vectors.append(block[lo:hi])
            counts.extend(np.frombuffer(row["token_counts"], dtype="<i4")[lo:hi].tolist())
        if len({block.dtype for block in vectors}) > 1:  # complete_chunk keeps a job's chunks alike: never expected
            raise ValueError(f"job {job_id}: its chunks hold vectors of different types")
        return Results(np.concatenate(vectors), counts, has_more=end < job.total_inputs)

    def expire_results(self, now: int, limit: int = 100) -> list[str]:
        expired = self._expire_results(now, limit)
        if expired:
            self._db.reclaim_space()
        return expired

    @retried
    def _expire_results(self, now: int, limit: int) -> list[str]:
        with self._db.write() as conn:
            expired = claim_ids(self._db, conn, _EXPIRED_JOBS_SQL, (now, limit))
            for job_id in expired:
                conn.execute("DELETE FROM chunks WHERE job_id = ?", (job_id,))
                conn.execute("UPDATE jobs SET results_removed = 1 WHERE id = ?", (job_id,))
        return expired
