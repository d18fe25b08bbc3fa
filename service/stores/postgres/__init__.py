"""The shared-mode stores: jobs, webhooks, the Batch API, keys and usage in one PostgreSQL database, for several
replicas at once. The SQL is the SQLite stores' (`service.stores.sql`); what differs is the plumbing
(`database.py`) and how a chunk is claimed (below).

psycopg is imported here only: the default (SQLite) deployment neither needs nor loads it.
"""

from __future__ import annotations

from service.jobs.records import DEFAULT_RETENTION_S, Announce
from service.stores.postgres.database import PostgresDatabase, translate
from service.stores.schema import SCHEMA_VERSION
from service.stores.sql.access import AccessRows
from service.stores.sql.batches import BatchRows
from service.stores.sql.database import Connection, Store
from service.stores.sql.files import FileRows
from service.stores.sql.jobs import JobRows
from service.stores.sql.webhooks import WebhookRows

__all__ = ["SCHEMA_VERSION", "PostgresAccessStore", "PostgresJobStore", "PostgresStore", "translate"]

# Claim order as in SQLite's (fewest live leases, least recently served, oldest job; lowest chunk), taken in one
# statement that skips chunks another replica is claiming right now, so two replicas never lease the same chunk
# and never wait for each other; a chunk whose lease expired (its replica died) is claimable again.
_CLAIM_SQL = """
SELECT c.job_id, c.idx FROM chunks c JOIN jobs j ON j.id = c.job_id
WHERE j.status IN ('queued', 'in_progress') AND c.status IN ('pending', 'leased')
  AND ((c.status = 'pending' AND c.lease_expires_at IS NULL) OR (c.status = 'leased' AND c.lease_expires_at <= :now))
ORDER BY (SELECT COUNT(*) FROM chunks l WHERE l.job_id = j.id AND l.status = 'leased' AND l.lease_expires_at > :now),
         j.last_claim, j.seq, c.idx
LIMIT 1
FOR UPDATE OF c SKIP LOCKED
"""


class PostgresJobStore(JobRows, WebhookRows, Store):
    """`JobStore` on PostgreSQL."""

    def __init__(self, url: str, *, retention_s: int = DEFAULT_RETENTION_S, announce: Announce | None = None) -> None:
        self._db = PostgresDatabase(url)
        self.retention_s = retention_s
        self._announce = announce

    def _next_claim(self, conn: Connection, now: int) -> tuple[str, int] | None:
        row = conn.execute(_CLAIM_SQL, {"now": now}).fetchone()
        return (row[0], row[1]) if row is not None else None


class PostgresStore(BatchRows, FileRows, PostgresJobStore):
    """The shared-mode store: jobs, webhooks and the Batch API on PostgreSQL."""


class PostgresAccessStore(AccessRows):
    """`AccessStore` on PostgreSQL."""

    def __init__(self, url: str) -> None:
        self._db = PostgresDatabase(url)
