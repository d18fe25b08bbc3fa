"""The single-node stores: jobs, webhooks, the Batch API, keys and usage in one SQLite file (`jobs.sqlite3` in the
data directory). The admin CLI and the server open it at the same time (WAL lets both work at once)."""

from __future__ import annotations

from pathlib import Path

from service.jobs.records import DEFAULT_RETENTION_S, Announce
from service.stores.sql.access import AccessRows
from service.stores.sql.batches import BatchRows
from service.stores.sql.database import Connection, Store
from service.stores.sql.files import FileRows
from service.stores.sql.jobs import JobRows
from service.stores.sql.webhooks import WebhookRows
from service.stores.sqlite.database import SqliteDatabase

DB_NAME = "jobs.sqlite3"

# The job to serve next, in claim order (see `service.stores.sql.jobs`), then its chunk to lease: two statements,
# so SQLite answers each from an index (`chunks_state`).
_NEXT_JOB_SQL = """
SELECT j.id FROM jobs j
WHERE j.status IN ('queued', 'in_progress')
  AND (EXISTS (SELECT 1 FROM chunks c WHERE c.job_id = j.id AND c.status = 'pending')
       OR EXISTS (SELECT 1 FROM chunks c WHERE c.job_id = j.id AND c.status = 'leased' AND c.lease_expires_at <= :now))
ORDER BY (SELECT COUNT(*) FROM chunks c WHERE c.job_id = j.id AND c.status = 'leased' AND c.lease_expires_at > :now),
         j.last_claim, j.seq
LIMIT 1
"""
_NEXT_CHUNK_SQL = """
SELECT idx FROM chunks WHERE job_id = :job AND status = 'pending' AND lease_expires_at IS NULL
UNION ALL
SELECT idx FROM chunks WHERE job_id = :job AND status = 'leased' AND lease_expires_at <= :now
ORDER BY idx LIMIT 1
"""


class SqliteJobStore(JobRows, WebhookRows, Store):
    """`JobStore` on one SQLite file (see `SqliteDatabase` for threading and durability)."""

    def __init__(self, path: Path, *, retention_s: int = DEFAULT_RETENTION_S, announce: Announce | None = None) -> None:
        self._db = SqliteDatabase(path)
        self.path = self._db.path
        self.retention_s = retention_s
        self._announce = announce

    def _next_claim(self, conn: Connection, now: int) -> tuple[str, int] | None:
        job = conn.execute(_NEXT_JOB_SQL, {"now": now}).fetchone()
        if job is None:
            return None
        return job[0], conn.execute(_NEXT_CHUNK_SQL, {"job": job[0], "now": now}).fetchone()[0]


class SqliteStore(BatchRows, FileRows, SqliteJobStore):
    """The single-node store: jobs, webhooks and the Batch API on one SQLite file."""


class SqliteAccessStore(AccessRows):
    """`AccessStore` on the data directory's SQLite file, beside the jobs."""

    def __init__(self, path: Path) -> None:
        self._db = SqliteDatabase(path)
        self.path = self._db.path

    @classmethod
    def in_data_dir(cls, data_dir: str | Path) -> SqliteAccessStore:
        return cls(Path(data_dir) / DB_NAME)
