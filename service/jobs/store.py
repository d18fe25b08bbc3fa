"""Durable state of async embedding jobs: jobs, their chunks and results, webhooks, events and deliveries.

Nothing may be lost when the process is killed, so every state change is one SQL transaction and the server keeps
nothing of a job in memory that it cannot rebuild from here. `JobStore` is the interface the server codes against;
`SqliteJobStore` implements it on one SQLite file in WAL mode; `service.stores.postgres.PostgresJobStore` runs the
same SQL on PostgreSQL for several replicas (see there for what differs). So the SQL stays portable where it is
cheap to (no SQLite-only functions; partial indexes, `ON CONFLICT` and `RETURNING`-free statements exist in both).

Conventions:
- Ids are a prefix (`job_`, `wh_`, `evt_`, `dlv_`) and 24 random url-safe characters.
- Times are unix seconds passed in by the caller (`now`), so tests control time: the store never reads the clock.
- Every read, list, cancel and result call takes a tenant and never returns another tenant's rows: a row of another
  tenant reads as missing. Worker-side calls (claim, complete, fail, deliveries) are tenant-blind.
- A job's inputs are cut into chunks of `chunk_size` inputs at creation; a worker leases one chunk at a time,
  embeds it and stores its vectors as one BLOB of little-endian float32 (count x dims), dropping its inputs.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, NamedTuple, Protocol, TypeVar

import numpy as np

from service.private_files import private_sqlite_file

DEFAULT_TENANT = "default"
# How long results stay after a job finishes (completed, failed or cancelled); `expire_results` drops them then.
DEFAULT_RETENTION_S = 7 * 24 * 3600
BUSY_TIMEOUT_MS = 10_000
WAL_SIZE_LIMIT = 64 * 1024 * 1024
ID_RANDOM_BYTES = 18  # 24 url-safe base64 characters

ACTIVE_STATUSES = ("queued", "in_progress")
FINAL_STATUSES = ("completed", "failed", "cancelled")
FINAL_DELIVERY_STATES = ("succeeded", "failed", "disabled")

T = TypeVar("T")


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
    # encoding_format, dimensions, normalize, truncate, input_type: opaque to the store.
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

    @property
    def finished(self) -> bool:
        return self.status in FINAL_STATUSES

    @property
    def chunk_count(self) -> int:
        return -(-self.total_inputs // self.chunk_size)


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

    vectors: np.ndarray  # float32 [n, dims]
    token_counts: list[int]
    has_more: bool


# Called inside the transaction that finishes a job; returns the event (type, data JSON) to record with it, or None.
Announce = Callable[[Job, int], tuple[str, str] | None]


# --- the interface ------------------------------------------------------------------------------------------------


class JobStore(Protocol):
    """Jobs, chunks, results, webhooks and deliveries. Methods block: call them off the event loop."""

    def create_job(
        self,
        tenant: str,
        model: str,
        options: Mapping[str, Any],
        metadata: Mapping[str, str],
        webhook_id: str | None,
        inputs: Sequence[str],
        chunk_size: int,
        now: int,
        job_id: str | None = None,
    ) -> Job:
        """The job and all its chunks, in one transaction. NotFound if the webhook is not this tenant's. `job_id`:
        the id to give it (default: a new one); a duplicate fails the insert."""
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
        """Lease the next chunk to embed (see `SqliteJobStore` for the order), or None when there is none."""
        ...

    def renew_lease(self, job_id: str, idx: int, owner: str, now: int, lease_s: int) -> bool:
        """Extend `owner`'s lease; False when it lost it (reclaimed, or the job was cancelled or failed)."""
        ...

    def release_chunk(self, job_id: str, idx: int, owner: str, failed: bool) -> int | None:
        """Give a chunk `owner` holds back to be claimed at once, counting a failure if `failed`; its failure count
        after that, or None when `owner` no longer held it."""
        ...

    def complete_chunk(
        self,
        job_id: str,
        idx: int,
        owner: str,
        vectors: bytes,
        dims: int,
        token_counts: Sequence[int],
        now: int,
    ) -> Job:
        """Store a chunk's vectors if `owner` still holds it and the job is unfinished; otherwise change nothing.
        Either way returns the job; the last chunk completes it. Idempotent."""
        ...

    def results(self, tenant: str, job_id: str, offset: int, limit: int) -> Results:
        """Vectors of inputs [offset, offset + limit), reading only the chunks that hold them."""
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

    def record_attempt(
        self,
        delivery_id: str,
        owner: str,
        status_code: int | None,
        error: str | None,
        duration_ms: int,
        now: int,
        next_attempt_at: int | None = None,
        final_state: str | None = None,
    ) -> bool:
        """Append an attempt; retry at `next_attempt_at` or end in `final_state`. False if `owner` lost the lease."""
        ...

    def list_attempts(self, tenant: str, webhook_id: str, limit: int = 50) -> list[DeliveryAttempt]: ...

    def count_jobs_by_status(self) -> dict[str, int]:
        """Jobs per status, all tenants (metrics)."""
        ...

    def close(self) -> None: ...


# --- schema -------------------------------------------------------------------------------------------------------

# Migration n (1-based) is MIGRATIONS[n - 1]: statements run in one transaction with the version bump. Append only.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE webhooks (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            tenant TEXT NOT NULL DEFAULT 'default',
            url TEXT NOT NULL,
            description TEXT NOT NULL DEFAULT '',
            secret TEXT NOT NULL,
            created_at INTEGER NOT NULL,
            disabled_at INTEGER,
            disabled_reason TEXT,
            deleted_at INTEGER
        )""",
        "CREATE INDEX webhooks_tenant ON webhooks (tenant, seq)",
        """CREATE TABLE jobs (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            tenant TEXT NOT NULL DEFAULT 'default',
            status TEXT NOT NULL CHECK (status IN ('queued', 'in_progress', 'completed', 'failed', 'cancelled')),
            model TEXT NOT NULL,
            options TEXT NOT NULL,
            metadata TEXT NOT NULL,
            webhook_id TEXT REFERENCES webhooks (id),
            total_inputs INTEGER NOT NULL CHECK (total_inputs > 0),
            chunk_size INTEGER NOT NULL CHECK (chunk_size > 0),
            completed_inputs INTEGER NOT NULL DEFAULT 0,
            prompt_tokens INTEGER NOT NULL DEFAULT 0,
            error TEXT,
            created_at INTEGER NOT NULL,
            started_at INTEGER,
            completed_at INTEGER,
            failed_at INTEGER,
            cancelled_at INTEGER,
            expires_at INTEGER,
            results_removed INTEGER NOT NULL DEFAULT 0,
            last_claim INTEGER NOT NULL DEFAULT 0
        )""",
        "CREATE INDEX jobs_tenant ON jobs (tenant, seq)",
        "CREATE INDEX jobs_active ON jobs (seq) WHERE status IN ('queued', 'in_progress')",
        "CREATE INDEX jobs_last_claim ON jobs (last_claim)",
        "CREATE INDEX jobs_expiry ON jobs (expires_at) WHERE results_removed = 0 AND expires_at IS NOT NULL",
        # Small columns first: a row's BLOBs sit in overflow pages that scans of the small ones never read.
        """CREATE TABLE chunks (
            job_id TEXT NOT NULL REFERENCES jobs (id),
            idx INTEGER NOT NULL,
            start INTEGER NOT NULL,
            count INTEGER NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('pending', 'leased', 'done', 'failed')),
            lease_owner TEXT,
            lease_expires_at INTEGER,
            attempts INTEGER NOT NULL DEFAULT 0,
            dims INTEGER,
            token_counts BLOB,
            inputs TEXT,
            vectors BLOB,
            PRIMARY KEY (job_id, idx)
        )""",
        # Claims look chunks up by (job, status, lease expiry); a plain index, since SQLite would not use a partial
        # one for `status = 'pending'` (it must match the index's WHERE term literally).
        "CREATE INDEX chunks_state ON chunks (job_id, status, lease_expires_at, idx)",
        """CREATE TABLE events (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            tenant TEXT NOT NULL DEFAULT 'default',
            job_id TEXT NOT NULL REFERENCES jobs (id),
            type TEXT NOT NULL,
            payload TEXT NOT NULL,
            created_at INTEGER NOT NULL,
            UNIQUE (job_id, type)
        )""",
        """CREATE TABLE deliveries (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            tenant TEXT NOT NULL DEFAULT 'default',
            event_id TEXT NOT NULL REFERENCES events (id),
            webhook_id TEXT NOT NULL REFERENCES webhooks (id),
            state TEXT NOT NULL CHECK (state IN ('pending', 'succeeded', 'failed', 'disabled')),
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at INTEGER,
            lease_owner TEXT,
            lease_expires_at INTEGER,
            created_at INTEGER NOT NULL,
            last_attempt_at INTEGER,
            UNIQUE (event_id, webhook_id)
        )""",
        "CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE state = 'pending'",
        "CREATE INDEX deliveries_webhook ON deliveries (webhook_id, seq)",
        """CREATE TABLE delivery_attempts (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            delivery_id TEXT NOT NULL REFERENCES deliveries (id),
            attempted_at INTEGER NOT NULL,
            status_code INTEGER,
            error TEXT,
            duration_ms INTEGER NOT NULL
        )""",
        "CREATE INDEX delivery_attempts_delivery ON delivery_attempts (delivery_id, id)",
    ),
    # 2: failures are counted apart from claims (a takeover of a lease that ran out is not a failure).
    ("ALTER TABLE chunks ADD COLUMN failures INTEGER NOT NULL DEFAULT 0",),
    # 3: the Batch API (service/batches/store.py): files stored in parts, batches, the jobs they run as and their
    # requests; events belong to a job or to a batch (rebuilt: SQLite cannot drop a NOT NULL; foreign keys are off
    # while migrations run, see `_migrate`).
    (
        """CREATE TABLE files (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            tenant TEXT NOT NULL,
            purpose TEXT NOT NULL,
            filename TEXT NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('uploading', 'processed', 'deleted')),
            bytes INTEGER NOT NULL DEFAULT 0,
            lines INTEGER NOT NULL DEFAULT 0,
            created_at INTEGER NOT NULL,
            expires_at INTEGER,
            deleted_at INTEGER
        )""",
        "CREATE INDEX files_tenant ON files (tenant, seq)",
        "CREATE INDEX files_expiry ON files (expires_at) WHERE status = 'processed'",
        "CREATE INDEX files_uploading ON files (created_at) WHERE status = 'uploading'",
        """CREATE TABLE file_parts (
            file_id TEXT NOT NULL REFERENCES files (id),
            idx INTEGER NOT NULL,
            data BLOB NOT NULL,
            PRIMARY KEY (file_id, idx)
        )""",
        """CREATE TABLE batches (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            tenant TEXT NOT NULL,
            key_id TEXT,
            models TEXT,
            status TEXT NOT NULL CHECK (status IN ('validating', 'failed', 'in_progress', 'finalizing', 'completed',
                                                   'expired', 'cancelling', 'cancelled')),
            endpoint TEXT NOT NULL,
            completion_window TEXT NOT NULL,
            input_file_id TEXT NOT NULL REFERENCES files (id),
            output_file_id TEXT REFERENCES files (id),
            error_file_id TEXT REFERENCES files (id),
            output_expires_after INTEGER NOT NULL,
            model TEXT,
            metadata TEXT NOT NULL,
            webhook_id TEXT REFERENCES webhooks (id),
            errors TEXT,
            total INTEGER NOT NULL DEFAULT 0,
            completed INTEGER NOT NULL DEFAULT 0,
            failed INTEGER NOT NULL DEFAULT 0,
            prompt_tokens INTEGER NOT NULL DEFAULT 0,
            created_at INTEGER NOT NULL,
            in_progress_at INTEGER,
            expires_at INTEGER NOT NULL,
            finalizing_at INTEGER,
            completed_at INTEGER,
            failed_at INTEGER,
            expired_at INTEGER,
            cancelling_at INTEGER,
            cancelled_at INTEGER,
            lease_owner TEXT,
            lease_expires_at INTEGER
        )""",
        "CREATE INDEX batches_tenant ON batches (tenant, seq)",
        "CREATE INDEX batches_active ON batches (seq)"
        " WHERE status IN ('validating', 'in_progress', 'finalizing', 'cancelling')",
        """CREATE TABLE batch_jobs (
            batch_id TEXT NOT NULL REFERENCES batches (id),
            part INTEGER NOT NULL,
            job_id TEXT NOT NULL REFERENCES jobs (id),
            PRIMARY KEY (batch_id, part)
        )""",
        """CREATE TABLE batch_requests (
            batch_id TEXT NOT NULL REFERENCES batches (id),
            line INTEGER NOT NULL,
            custom_id TEXT NOT NULL,
            part INTEGER,
            start INTEGER,
            count INTEGER,
            first_chunk INTEGER,
            last_chunk INTEGER,
            encoding_format TEXT,
            error TEXT,
            PRIMARY KEY (batch_id, line)
        )""",
        "CREATE INDEX batch_requests_part ON batch_requests (batch_id, part, start)",
        # How many requests span each run of chunks [first_chunk, last_chunk] of a part: progress without a scan.
        """CREATE TABLE batch_spans (
            batch_id TEXT NOT NULL REFERENCES batches (id),
            part INTEGER NOT NULL,
            first_chunk INTEGER NOT NULL,
            last_chunk INTEGER NOT NULL,
            requests INTEGER NOT NULL,
            PRIMARY KEY (batch_id, part, first_chunk, last_chunk)
        )""",
        """CREATE TABLE events_v2 (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            tenant TEXT NOT NULL DEFAULT 'default',
            job_id TEXT REFERENCES jobs (id),
            batch_id TEXT REFERENCES batches (id),
            type TEXT NOT NULL,
            payload TEXT NOT NULL,
            created_at INTEGER NOT NULL,
            CHECK ((job_id IS NULL) <> (batch_id IS NULL)),
            UNIQUE (job_id, type),
            UNIQUE (batch_id, type)
        )""",
        "INSERT INTO events_v2 (seq, id, tenant, job_id, type, payload, created_at)"
        " SELECT seq, id, tenant, job_id, type, payload, created_at FROM events",
        "DROP TABLE events",
        "ALTER TABLE events_v2 RENAME TO events",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)

_JOB_COLUMNS = (
    "id, tenant, status, model, options, metadata, webhook_id, total_inputs, chunk_size, completed_inputs, "
    "prompt_tokens, error, created_at, started_at, completed_at, failed_at, cancelled_at, expires_at, results_removed"
)
_WEBHOOK_COLUMNS = "id, tenant, url, description, secret, created_at, disabled_at, disabled_reason"
_EVENT_COLUMNS = "id, job_id, tenant, type, payload, created_at"

# The job to serve next: fewest live leases, then least recently served, then oldest (see `SqliteJobStore`).
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
_DELIVERY_SQL = """
SELECT d.id, d.tenant, d.event_id, e.type, e.created_at, e.payload, e.job_id, d.webhook_id, w.url, w.secret,
       d.state, d.attempts, d.next_attempt_at, d.lease_owner, d.lease_expires_at, d.created_at
FROM deliveries d JOIN events e ON e.id = d.event_id JOIN webhooks w ON w.id = d.webhook_id
"""


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _duration(seconds: int) -> str:
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size} {unit}"
    return f"{seconds} seconds"


def _job(row: sqlite3.Row) -> Job:
    return Job(
        id=row["id"],
        tenant=row["tenant"],
        status=row["status"],
        model=row["model"],
        options=json.loads(row["options"]),
        metadata=json.loads(row["metadata"]),
        webhook_id=row["webhook_id"],
        total_inputs=row["total_inputs"],
        chunk_size=row["chunk_size"],
        completed_inputs=row["completed_inputs"],
        prompt_tokens=row["prompt_tokens"],
        error=json.loads(row["error"]) if row["error"] is not None else None,
        created_at=row["created_at"],
        started_at=row["started_at"],
        completed_at=row["completed_at"],
        failed_at=row["failed_at"],
        cancelled_at=row["cancelled_at"],
        expires_at=row["expires_at"],
        results_removed=bool(row["results_removed"]),
    )


def _webhook(row: sqlite3.Row) -> Webhook:
    return Webhook(*row)


def _event(row: sqlite3.Row) -> JobEvent:
    return JobEvent(*row)


def _delivery(row: sqlite3.Row) -> Delivery:
    return Delivery(*row)


def _connect(path: Path) -> sqlite3.Connection:
    # isolation_level=None: the module never opens transactions behind our back; we BEGIN explicitly.
    # check_same_thread=False: the writer moves between threads under a lock; readers are closed by `close`.
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000)
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA foreign_keys = ON")
    # In WAL mode NORMAL survives a killed process (a commit is in the WAL file before COMMIT returns); only an OS
    # crash or power loss may roll back the last transactions, never corrupt the file.
    conn.execute("PRAGMA synchronous = NORMAL")
    return conn


# --- SQLite ------------------------------------------------------------------------------------------------------


class SqliteJobStore:
    """`JobStore` on one SQLite file (WAL, synchronous=NORMAL, foreign keys on, busy_timeout).

    Threading: thread-safe. Writes go through one connection behind a lock, each in a `BEGIN IMMEDIATE`
    transaction: writers are serialized in-process without SQLite's busy-wait polling, and across processes (other
    replicas on the same file) by the file lock and busy_timeout. Reads use one connection per calling thread, each
    read in its own deferred transaction, so they see one consistent snapshot and run in parallel with a write
    (WAL). Made for `asyncio.to_thread`: the default executor's threads are few and long-lived, so reader
    connections are too; `close` closes them all.

    Claim order (fairness): among unfinished jobs with a claimable chunk (pending, or leased with an expired
    lease), take the job with the fewest live leases, then the one served least recently, then the oldest; within
    it, the lowest chunk index. So concurrent workers spread across jobs, and even a single worker round-robins
    between them one chunk at a time: a small job submitted behind a 100k-input one waits for one chunk per
    earlier job, not for the whole of it.
    """

    # Row-locking suffixes for read-then-write statements: empty here (a SQLite write transaction holds the whole
    # database), " FOR UPDATE" and " FOR UPDATE SKIP LOCKED" in the PostgreSQL store, where writers run concurrently.
    _FOR_UPDATE = ""
    _SKIP_LOCKED = ""
    # Serializes webhook creation per tenant, so the cap holds with concurrent writers (PostgreSQL); a SQLite write
    # transaction already holds the whole database.
    _LOCK_TENANT_WEBHOOKS = ""

    def __init__(
        self,
        path: Path,
        *,
        retention_s: int = DEFAULT_RETENTION_S,
        announce: Announce | None = None,
    ) -> None:
        """`announce` builds the event to record, atomically, when a job finishes (completed, failed, cancelled):
        a crash right after the transition can then never lose its webhook. It runs inside the write transaction,
        so it must be quick and must not call the store."""
        self.path = private_sqlite_file(path)  # webhook secrets and the jobs' texts and vectors: 0600
        self.retention_s = retention_s
        self._announce = announce
        self._write_lock = threading.Lock()
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._closed = False
        self._writer = _connect(self.path)
        # Before any table exists (a no-op on an existing file): lets `expire_results` give pages back to the OS.
        self._writer.execute("PRAGMA auto_vacuum = INCREMENTAL")
        self._writer.execute("PRAGMA journal_mode = WAL")
        # Results are written in bulk: let the WAL shrink back after checkpoints instead of keeping its peak size.
        self._writer.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
        self._migrate()

    # --- plumbing

    def _migrate(self) -> None:
        """Apply missing migrations in one transaction, foreign keys off (they cannot be switched inside one):
        SQLite changes a column's constraints by rebuilding its table, which a live foreign key would refuse. The
        keys are checked before the commit."""
        self._writer.execute("PRAGMA foreign_keys = OFF")
        try:
            with self._write() as conn:
                conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
                current = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] or 0
                if current > SCHEMA_VERSION:
                    raise JobStoreError(
                        f"{self.path}: schema version {current} is newer than this code ({SCHEMA_VERSION})"
                    )
                for version in range(current + 1, SCHEMA_VERSION + 1):
                    for statement in MIGRATIONS[version - 1]:
                        conn.execute(statement)
                    conn.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
                broken = conn.execute("PRAGMA foreign_key_check").fetchall()
                if broken:
                    raise JobStoreError(f"{self.path}: migration left broken foreign keys: {broken[:5]}")
        finally:
            self._writer.execute("PRAGMA foreign_keys = ON")

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._write_lock:
            if self._closed:
                raise JobStoreError("the job store is closed")
            conn = self._writer
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        if self._closed:
            raise JobStoreError("the job store is closed")
        conn = getattr(self._local, "conn", None)
        if conn is None:
            with self._readers_lock:
                if self._closed:
                    raise JobStoreError("the job store is closed")
                conn = _connect(self.path)
                conn.execute("PRAGMA query_only = ON")
                self._readers.append(conn)
            self._local.conn = conn
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            conn.execute("ROLLBACK")

    def close(self) -> None:
        with self._write_lock, self._readers_lock:
            if self._closed:
                return
            self._closed = True
            for conn in self._readers:
                conn.close()
            self._writer.close()

    def __enter__(self) -> SqliteJobStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @staticmethod
    def _job_row(conn: sqlite3.Connection, job_id: str, tenant: str | None = None) -> Job | None:
        sql = f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?"
        params: tuple[str, ...] = (job_id,)
        if tenant is not None:
            sql, params = sql + " AND tenant = ?", (job_id, tenant)
        row = conn.execute(sql, params).fetchone()
        return _job(row) if row is not None else None

    def _finish(self, conn: sqlite3.Connection, job_id: str, now: int) -> Job:
        """The job after a transition to a final state, with its announcement recorded in the same transaction."""
        job = self._job_row(conn, job_id)
        assert job is not None
        if self._announce is not None:
            event = self._announce(job, now)
            if event is not None:
                self._add_event(conn, job, event[0], event[1], now)
        return job

    # --- jobs

    def create_job(
        self,
        tenant: str,
        model: str,
        options: Mapping[str, Any],
        metadata: Mapping[str, str],
        webhook_id: str | None,
        inputs: Sequence[str],
        chunk_size: int,
        now: int,
        job_id: str | None = None,
    ) -> Job:
        if not inputs:
            raise ValueError("a job needs at least one input")
        if chunk_size < 1:
            raise ValueError("chunk_size must be positive")
        job_id = job_id or new_id("job")
        # Encoded before taking the lock: other writers wait only for the inserts.
        chunks = [
            (job_id, idx, start, len(part), _dumps(part))
            for idx, start in enumerate(range(0, len(inputs), chunk_size))
            for part in [list(inputs[start : start + chunk_size])]
        ]
        with self._write() as conn:
            if webhook_id is not None:
                found = conn.execute(
                    "SELECT 1 FROM webhooks WHERE id = ? AND tenant = ? AND deleted_at IS NULL", (webhook_id, tenant)
                ).fetchone()
                if found is None:
                    raise NotFound(f"No webhook '{webhook_id}'.")
            conn.execute(
                "INSERT INTO jobs (id, tenant, status, model, options, metadata, webhook_id, total_inputs, chunk_size,"
                " created_at) VALUES (?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?)",
                (job_id, tenant, model, _dumps(dict(options)), _dumps(dict(metadata)), webhook_id, len(inputs),
                 chunk_size, now),
            )  # fmt: skip
            conn.executemany(
                "INSERT INTO chunks (job_id, idx, start, count, status, inputs) VALUES (?, ?, ?, ?, 'pending', ?)",
                chunks,
            )
            job = self._job_row(conn, job_id)
        assert job is not None
        return job

    def get_job(self, tenant: str, job_id: str) -> Job | None:
        with self._read() as conn:
            return self._job_row(conn, job_id, tenant)

    def count_jobs_by_status(self) -> dict[str, int]:
        with self._read() as conn:
            return {row[0]: row[1] for row in conn.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status")}

    def list_jobs(self, tenant: str, limit: int = 20, after: str | None = None) -> Page[Job]:
        if limit < 1:
            raise ValueError("limit must be positive")
        with self._read() as conn:
            before = None
            if after is not None:
                row = conn.execute("SELECT seq FROM jobs WHERE id = ? AND tenant = ?", (after, tenant)).fetchone()
                if row is None:
                    raise InvalidCursor(f"No job '{after}' to list after.")
                before = row[0]
            rows = conn.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE tenant = ? AND (? IS NULL OR seq < ?)"
                " ORDER BY seq DESC LIMIT ?",
                (tenant, before, before, limit + 1),
            ).fetchall()
        return Page([_job(row) for row in rows[:limit]], has_more=len(rows) > limit)

    def cancel_job(self, tenant: str, job_id: str, now: int) -> Job | None:
        with self._write() as conn:
            updated = conn.execute(
                "UPDATE jobs SET status = 'cancelled', cancelled_at = ?, expires_at = ?"
                " WHERE id = ? AND tenant = ? AND status IN ('queued', 'in_progress')",
                (now, now + self.retention_s, job_id, tenant),
            ).rowcount
            if updated:
                return self._finish(conn, job_id, now)
            return self._job_row(conn, job_id, tenant)

    def fail_job(self, job_id: str, error: Mapping[str, str], now: int) -> Job | None:
        with self._write() as conn:
            updated = conn.execute(
                "UPDATE jobs SET status = 'failed', error = ?, failed_at = ?, expires_at = ?"
                " WHERE id = ? AND status IN ('queued', 'in_progress')",
                (_dumps(dict(error)), now, now + self.retention_s, job_id),
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

    @staticmethod
    def _next_claim(conn: Any, now: int) -> tuple[str, int] | None:
        """(job id, chunk index) to lease next, in claim order."""
        job = conn.execute(_NEXT_JOB_SQL, {"now": now}).fetchone()
        if job is None:
            return None
        return job[0], conn.execute(_NEXT_CHUNK_SQL, {"job": job[0], "now": now}).fetchone()[0]

    def claim_chunk(self, owner: str, now: int, lease_s: int) -> Chunk | None:
        with self._write() as conn:
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
                "SELECT c.job_id, c.idx, c.start, c.count, c.inputs, c.status, c.lease_owner, c.lease_expires_at,"
                " c.attempts, c.failures, j.tenant, j.model, j.options"
                " FROM chunks c JOIN jobs j ON j.id = c.job_id WHERE c.job_id = ? AND c.idx = ?",
                (job_id, idx),
            ).fetchone()
        return Chunk(
            job_id=row["job_id"],
            idx=row["idx"],
            start=row["start"],
            count=row["count"],
            inputs=json.loads(row["inputs"]),
            status=row["status"],
            lease_owner=row["lease_owner"],
            lease_expires_at=row["lease_expires_at"],
            attempts=row["attempts"],
            tenant=row["tenant"],
            model=row["model"],
            options=json.loads(row["options"]),
            failures=row["failures"],
        )

    def renew_lease(self, job_id: str, idx: int, owner: str, now: int, lease_s: int) -> bool:
        with self._write() as conn:
            return (
                conn.execute(
                    "UPDATE chunks SET lease_expires_at = ?"
                    " WHERE job_id = ? AND idx = ? AND status = 'leased' AND lease_owner = ?"
                    " AND EXISTS (SELECT 1 FROM jobs WHERE id = ? AND status IN ('queued', 'in_progress'))",
                    (now + lease_s, job_id, idx, owner, job_id),
                ).rowcount
                == 1
            )

    def release_chunk(self, job_id: str, idx: int, owner: str, failed: bool) -> int | None:
        with self._write() as conn:
            released = conn.execute(
                "UPDATE chunks SET status = 'pending', lease_owner = NULL, lease_expires_at = NULL,"
                " failures = failures + ? WHERE job_id = ? AND idx = ? AND status = 'leased' AND lease_owner = ?",
                (int(failed), job_id, idx, owner),
            ).rowcount
            if not released:
                return None
            return conn.execute("SELECT failures FROM chunks WHERE job_id = ? AND idx = ?", (job_id, idx)).fetchone()[0]

    def complete_chunk(
        self,
        job_id: str,
        idx: int,
        owner: str,
        vectors: bytes,
        dims: int,
        token_counts: Sequence[int],
        now: int,
    ) -> Job:
        """A lease that expired but was not reclaimed still counts: the work is done and nobody else did it."""
        nbytes = memoryview(vectors).nbytes
        counts = np.asarray(token_counts, dtype="<i4")
        with self._write() as conn:
            row = conn.execute(
                "SELECT c.count, c.status, c.lease_owner, j.status AS job_status"
                " FROM chunks c JOIN jobs j ON j.id = c.job_id WHERE c.job_id = ? AND c.idx = ?" + self._FOR_UPDATE,
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
            if dims < 1 or nbytes != count * dims * 4 or len(counts) != count:
                raise ValueError(
                    f"chunk {job_id}/{idx} holds {count} inputs: expected {count} x {dims} float32 vectors "
                    f"({count * dims * 4} bytes) and {count} token counts, got {nbytes} bytes and {len(counts)}"
                )
            other = conn.execute(
                "SELECT dims FROM chunks WHERE job_id = ? AND status = 'done' LIMIT 1", (job_id,)
            ).fetchone()
            if other is not None and other[0] != dims:
                raise ValueError(f"job {job_id} has {other[0]}-dimensional vectors, chunk {idx} has {dims}")
            conn.execute(
                "UPDATE chunks SET status = 'done', lease_expires_at = NULL, dims = ?, token_counts = ?,"
                " vectors = ?, inputs = NULL WHERE job_id = ? AND idx = ?",
                (dims, counts.tobytes(), vectors, job_id, idx),
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
        with self._read() as conn:
            job = self._job_row(conn, job_id, tenant)
            if job is None:
                raise NotFound(f"No job '{job_id}'.")
            if job.results_removed:
                raise ResultsRemoved(
                    f"The results of job '{job_id}' have expired and were deleted: results are kept for "
                    f"{_duration(self.retention_s)} after a job finishes (this one's expired at {job.expires_at})."
                )
            end = min(offset + limit, job.total_inputs)
            if offset >= end:
                return Results(np.zeros((0, 0), dtype=np.float32), [], has_more=False)
            rows = conn.execute(
                "SELECT idx, start, count, status, dims, token_counts, vectors FROM chunks"
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
            block = np.frombuffer(row["vectors"], dtype="<f4").reshape(row["count"], row["dims"])
            vectors.append(block[lo:hi])
            counts.extend(np.frombuffer(row["token_counts"], dtype="<i4")[lo:hi].tolist())
        return Results(np.concatenate(vectors).astype(np.float32, copy=False), counts, has_more=end < job.total_inputs)

    def expire_results(self, now: int, limit: int = 100) -> list[str]:
        with self._write() as conn:
            expired = [
                row[0]
                for row in conn.execute(
                    "SELECT id FROM jobs WHERE results_removed = 0 AND expires_at IS NOT NULL AND expires_at <= ?"
                    " ORDER BY expires_at LIMIT ?" + self._SKIP_LOCKED,
                    (now, limit),
                )
            ]
            for job_id in expired:
                conn.execute("DELETE FROM chunks WHERE job_id = ?", (job_id,))
                conn.execute("UPDATE jobs SET results_removed = 1 WHERE id = ?", (job_id,))
        if expired:
            self._reclaim_space()
        return expired

    def _reclaim_space(self) -> None:
        with self._write_lock:
            # Give the freed pages back to the file system (auto_vacuum = INCREMENTAL); SQLite-only. Through
            # executescript: `execute` steps the pragma once, which frees a single page.
            self._writer.executescript("PRAGMA incremental_vacuum;")

    # --- webhooks

    def create_webhook(
        self, tenant: str, url: str, description: str, secret: str, now: int, max_per_tenant: int = 0
    ) -> Webhook:
        webhook = Webhook(new_id("wh"), tenant, url, description, secret, now, None, None)
        with self._write() as conn:
            if max_per_tenant:
                if self._LOCK_TENANT_WEBHOOKS:
                    conn.execute(self._LOCK_TENANT_WEBHOOKS, (tenant,))
                count = conn.execute(
                    "SELECT COUNT(*) FROM webhooks WHERE tenant = ? AND deleted_at IS NULL", (tenant,)
                ).fetchone()[0]
                if count >= max_per_tenant:
                    raise TooManyWebhooks(tenant)
            conn.execute(
                f"INSERT INTO webhooks ({_WEBHOOK_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (webhook.id, tenant, url, description, secret, now, None, None),
            )
        return webhook

    def list_webhooks(self, tenant: str) -> list[Webhook]:
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {_WEBHOOK_COLUMNS} FROM webhooks WHERE tenant = ? AND deleted_at IS NULL ORDER BY seq",
                (tenant,),
            ).fetchall()
        return [_webhook(row) for row in rows]

    def get_webhook(self, tenant: str, webhook_id: str) -> Webhook | None:
        with self._read() as conn:
            row = conn.execute(
                f"SELECT {_WEBHOOK_COLUMNS} FROM webhooks WHERE id = ? AND tenant = ? AND deleted_at IS NULL",
                (webhook_id, tenant),
            ).fetchone()
        return _webhook(row) if row is not None else None

    def delete_webhook(self, tenant: str, webhook_id: str, now: int) -> bool:
        """Soft delete: the endpoint disappears from get/list and gets nothing more (pending deliveries become
        `disabled`), but its row, deliveries and attempts stay, so jobs keep a valid `webhook_id` and
        `list_attempts` still answers for it."""
        with self._write() as conn:
            deleted = conn.execute(
                "UPDATE webhooks SET deleted_at = ? WHERE id = ? AND tenant = ? AND deleted_at IS NULL",
                (now, webhook_id, tenant),
            ).rowcount
            if deleted:
                self._stop_deliveries(conn, webhook_id)
        return deleted == 1

    def disable_webhook(self, webhook_id: str, reason: str, now: int) -> Webhook | None:
        """Stop sending to an endpoint (it answered 410, or kept failing): pending deliveries become `disabled`."""
        with self._write() as conn:
            conn.execute(
                "UPDATE webhooks SET disabled_at = ?, disabled_reason = ? WHERE id = ? AND disabled_at IS NULL",
                (now, reason, webhook_id),
            )
            self._stop_deliveries(conn, webhook_id)
            row = conn.execute(f"SELECT {_WEBHOOK_COLUMNS} FROM webhooks WHERE id = ?", (webhook_id,)).fetchone()
        return _webhook(row) if row is not None else None

    @staticmethod
    def _stop_deliveries(conn: sqlite3.Connection, webhook_id: str) -> None:
        conn.execute(
            "UPDATE deliveries SET state = 'disabled', next_attempt_at = NULL, lease_owner = NULL,"
            " lease_expires_at = NULL WHERE webhook_id = ? AND state = 'pending'",
            (webhook_id,),
        )

    # --- events and deliveries

    def add_event(self, job: Job, type: str, payload: str, now: int) -> JobEvent:
        with self._write() as conn:
            return self._add_event(conn, job, type, payload, now)

    @staticmethod
    def _add_event(conn: sqlite3.Connection, job: Job, type: str, payload: str, now: int) -> JobEvent:
        """Insert-or-get on (job, type), then one delivery per (event, webhook): exactly once however often called.
        A disabled endpoint gets a `disabled` delivery (visible in its history); a deleted one gets none."""
        conn.execute(
            f"INSERT INTO events ({_EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (job_id, type) DO NOTHING",
            (new_id("evt"), job.id, job.tenant, type, payload, now),
        )
        event = _event(
            conn.execute(
                f"SELECT {_EVENT_COLUMNS} FROM events WHERE job_id = ? AND type = ?", (job.id, type)
            ).fetchone()
        )
        webhook = conn.execute(
            "SELECT w.id, w.disabled_at FROM jobs j JOIN webhooks w ON w.id = j.webhook_id"
            " WHERE j.id = ? AND w.deleted_at IS NULL",
            (job.id,),
        ).fetchone()
        if webhook is not None:
            disabled = webhook["disabled_at"] is not None
            conn.execute(
                "INSERT INTO deliveries (id, tenant, event_id, webhook_id, state, next_attempt_at, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (event_id, webhook_id) DO NOTHING",
                (new_id("dlv"), job.tenant, event.id, webhook["id"], "disabled" if disabled else "pending",
                 None if disabled else now, now),
            )  # fmt: skip
        return event

    def due_deliveries(self, now: int, limit: int, owner: str, lease_s: int) -> list[Delivery]:
        with self._write() as conn:
            ids = [
                row[0]
                for row in conn.execute(
                    "SELECT id FROM deliveries WHERE state = 'pending' AND next_attempt_at <= ?"
                    " AND (lease_expires_at IS NULL OR lease_expires_at <= ?) ORDER BY next_attempt_at, seq LIMIT ?"
                    + self._SKIP_LOCKED,
                    (now, now, limit),
                )
            ]
            conn.executemany(
                "UPDATE deliveries SET lease_owner = ?, lease_expires_at = ? WHERE id = ?",
                [(owner, now + lease_s, delivery_id) for delivery_id in ids],
            )
            return [
                _delivery(conn.execute(_DELIVERY_SQL + " WHERE d.id = ?", (delivery_id,)).fetchone())
                for delivery_id in ids
            ]

    def record_attempt(
        self,
        delivery_id: str,
        owner: str,
        status_code: int | None,
        error: str | None,
        duration_ms: int,
        now: int,
        next_attempt_at: int | None = None,
        final_state: str | None = None,
    ) -> bool:
        """The attempt is always appended (it happened); the delivery moves on only while `owner` holds the lease
        and it is still pending (not disabled meanwhile, not reclaimed by another sender after the lease ran out)."""
        if (next_attempt_at is None) == (final_state is None):
            raise ValueError("give exactly one of next_attempt_at (retry later) and final_state (done)")
        if final_state is not None and final_state not in FINAL_DELIVERY_STATES:
            raise ValueError(f"final_state must be one of {FINAL_DELIVERY_STATES}")
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM deliveries WHERE id = ?", (delivery_id,)).fetchone() is None:
                raise NotFound(f"No delivery '{delivery_id}'.")
            conn.execute(
                "INSERT INTO delivery_attempts (delivery_id, attempted_at, status_code, error, duration_ms)"
                " VALUES (?, ?, ?, ?, ?)",
                (delivery_id, now, status_code, error, duration_ms),
            )
            conn.execute(
                "UPDATE deliveries SET attempts = attempts + 1, last_attempt_at = ? WHERE id = ?", (now, delivery_id)
            )
            return (
                conn.execute(
                    "UPDATE deliveries SET state = ?, next_attempt_at = ?, lease_owner = NULL, lease_expires_at = NULL"
                    " WHERE id = ? AND state = 'pending' AND lease_owner = ?",
                    (final_state or "pending", next_attempt_at, delivery_id, owner),
                ).rowcount
                == 1
            )

    def list_attempts(self, tenant: str, webhook_id: str, limit: int = 50) -> list[DeliveryAttempt]:
        """Newest first."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT a.id, a.delivery_id, d.event_id, e.type, e.job_id, d.webhook_id, a.attempted_at,"
                " a.status_code, a.error, a.duration_ms, d.state,"
                " (SELECT COUNT(*) FROM delivery_attempts p WHERE p.delivery_id = a.delivery_id AND p.id <= a.id)"
                " FROM delivery_attempts a JOIN deliveries d ON d.id = a.delivery_id JOIN events e ON e.id = d.event_id"
                " WHERE d.tenant = ? AND d.webhook_id = ? ORDER BY a.id DESC LIMIT ?",
                (tenant, webhook_id, limit),
            ).fetchall()
        return [DeliveryAttempt(*row) for row in rows]
