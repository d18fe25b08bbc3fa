"""The job and access stores on PostgreSQL, for several replicas sharing one database.

The SQLite stores' SQL is portable on purpose, so these classes reuse it: they subclass the SQLite stores and
replace only the plumbing (connections, transactions, the schema) and the statements where concurrent writers need
row locks. What differs from SQLite, and why:

- Writers run concurrently (SQLite serializes them on the file). A chunk is claimed with `FOR UPDATE OF c SKIP
  LOCKED`, so two replicas never lease the same chunk and never wait for each other; a chunk whose lease expired
  (its replica died) is claimable again. Completing a chunk locks its row and its job's (`FOR UPDATE`); due
  deliveries and expired jobs are taken with `FOR UPDATE SKIP LOCKED`, so exactly one replica sends each attempt.
  A transaction PostgreSQL aborts as a deadlock or serialization failure is run again (each method is one
  transaction, so repeating it is safe).
- The schema is versioned in `schema_migrations` and applied at start-up under an advisory lock: replicas
  starting together apply each migration once.
- One connection per calling thread (autocommit; explicit transactions), like the SQLite store's readers.
- SQL is written once in SQLite's parameter style (`?`, `:name`) and translated; `? IS NULL` gets a `::text`
  cast, since PostgreSQL cannot type a bare NULL parameter.

psycopg is imported here only: the default (SQLite) deployment neither needs nor loads it.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import psycopg.errors

from service.access.store import _READ_KEYS_REQUIRED, KeySnapshot, SqliteAccessStore, TenantRecord, UsageDelta, _key
from service.batches.store import BatchStoreMixin
from service.jobs.store import DEFAULT_RETENTION_S, Announce, JobStoreError, SqliteJobStore

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

# Numbered migrations (1-based: MIGRATIONS[n - 1] is version n), each applied in one transaction. Append only.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE webhooks (
            seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            tenant TEXT NOT NULL DEFAULT 'default',
            url TEXT NOT NULL,
            description TEXT NOT NULL DEFAULT '',
            secret TEXT NOT NULL,
            created_at BIGINT NOT NULL,
            disabled_at BIGINT,
            disabled_reason TEXT,
            deleted_at BIGINT
        )""",
        "CREATE INDEX webhooks_tenant ON webhooks (tenant, seq)",
        """CREATE TABLE jobs (
            seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
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
            prompt_tokens BIGINT NOT NULL DEFAULT 0,
            error TEXT,
            created_at BIGINT NOT NULL,
            started_at BIGINT,
            completed_at BIGINT,
            failed_at BIGINT,
            cancelled_at BIGINT,
            expires_at BIGINT,
            results_removed INTEGER NOT NULL DEFAULT 0,
            last_claim BIGINT NOT NULL DEFAULT 0
        )""",
        "CREATE INDEX jobs_tenant ON jobs (tenant, seq)",
        "CREATE INDEX jobs_active ON jobs (seq) WHERE status IN ('queued', 'in_progress')",
        "CREATE INDEX jobs_expiry ON jobs (expires_at) WHERE results_removed = 0 AND expires_at IS NOT NULL",
        """CREATE TABLE chunks (
            job_id TEXT NOT NULL REFERENCES jobs (id),
            idx INTEGER NOT NULL,
            start INTEGER NOT NULL,
            count INTEGER NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('pending', 'leased', 'done', 'failed')),
            lease_owner TEXT,
            lease_expires_at BIGINT,
            attempts INTEGER NOT NULL DEFAULT 0,
            dims INTEGER,
            token_counts BYTEA,
            inputs TEXT,
            vectors BYTEA,
            PRIMARY KEY (job_id, idx)
        )""",
        "CREATE INDEX chunks_claimable ON chunks (job_id, idx) WHERE status IN ('pending', 'leased')",
        """CREATE TABLE events (
            seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            tenant TEXT NOT NULL DEFAULT 'default',
            job_id TEXT NOT NULL REFERENCES jobs (id),
            type TEXT NOT NULL,
            payload TEXT NOT NULL,
            created_at BIGINT NOT NULL,
            UNIQUE (job_id, type)
        )""",
        """CREATE TABLE deliveries (
            seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            tenant TEXT NOT NULL DEFAULT 'default',
            event_id TEXT NOT NULL REFERENCES events (id),
            webhook_id TEXT NOT NULL REFERENCES webhooks (id),
            state TEXT NOT NULL CHECK (state IN ('pending', 'succeeded', 'failed', 'disabled')),
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at BIGINT,
            lease_owner TEXT,
            lease_expires_at BIGINT,
            created_at BIGINT NOT NULL,
            last_attempt_at BIGINT,
            UNIQUE (event_id, webhook_id)
        )""",
        "CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE state = 'pending'",
        "CREATE INDEX deliveries_webhook ON deliveries (webhook_id, seq)",
        """CREATE TABLE delivery_attempts (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            delivery_id TEXT NOT NULL REFERENCES deliveries (id),
            attempted_at BIGINT NOT NULL,
            status_code INTEGER,
            error TEXT,
            duration_ms INTEGER NOT NULL
        )""",
        "CREATE INDEX delivery_attempts_delivery ON delivery_attempts (delivery_id, id)",
        """CREATE TABLE access_tenants (
            name TEXT PRIMARY KEY,
            rpm INTEGER,
            tpm INTEGER,
            created_at BIGINT NOT NULL
        )""",
        """CREATE TABLE access_keys (
            id TEXT PRIMARY KEY,
            tenant TEXT NOT NULL,
            name TEXT NOT NULL,
            secret_hash TEXT NOT NULL,
            role TEXT NOT NULL,
            models TEXT,
            rpm INTEGER,
            tpm INTEGER,
            created_at BIGINT NOT NULL,
            rotated_at BIGINT,
            revoked_at BIGINT
        )""",
        "CREATE INDEX access_keys_tenant ON access_keys (tenant, created_at)",
        """CREATE TABLE access_usage (
            day TEXT NOT NULL,
            tenant TEXT NOT NULL,
            key_id TEXT NOT NULL,
            model TEXT NOT NULL,
            requests BIGINT NOT NULL DEFAULT 0,
            tokens BIGINT NOT NULL DEFAULT 0,
            job_requests BIGINT NOT NULL DEFAULT 0,
            job_tokens BIGINT NOT NULL DEFAULT 0,
            PRIMARY KEY (day, tenant, key_id, model)
        )""",
    ),
    # 2: failures are counted apart from claims (a takeover of a lease that ran out is not a failure).
    ("ALTER TABLE chunks ADD COLUMN failures INTEGER NOT NULL DEFAULT 0",),
    # 3: the Batch API (service/batches/store.py), as in the SQLite store's migration 3.
    (
        """CREATE TABLE files (
            seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            tenant TEXT NOT NULL,
            purpose TEXT NOT NULL,
            filename TEXT NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('uploading', 'processed', 'deleted')),
            bytes BIGINT NOT NULL DEFAULT 0,
            lines BIGINT NOT NULL DEFAULT 0,
            created_at BIGINT NOT NULL,
            expires_at BIGINT,
            deleted_at BIGINT
        )""",
        "CREATE INDEX files_tenant ON files (tenant, seq)",
        "CREATE INDEX files_expiry ON files (expires_at) WHERE status = 'processed'",
        "CREATE INDEX files_uploading ON files (created_at) WHERE status = 'uploading'",
        """CREATE TABLE file_parts (
            file_id TEXT NOT NULL REFERENCES files (id),
            idx INTEGER NOT NULL,
            data BYTEA NOT NULL,
            PRIMARY KEY (file_id, idx)
        )""",
        """CREATE TABLE batches (
            seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
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
            output_expires_after BIGINT NOT NULL,
            model TEXT,
            metadata TEXT NOT NULL,
            webhook_id TEXT REFERENCES webhooks (id),
            errors TEXT,
            total INTEGER NOT NULL DEFAULT 0,
            completed INTEGER NOT NULL DEFAULT 0,
            failed INTEGER NOT NULL DEFAULT 0,
            prompt_tokens BIGINT NOT NULL DEFAULT 0,
            created_at BIGINT NOT NULL,
            in_progress_at BIGINT,
            expires_at BIGINT NOT NULL,
            finalizing_at BIGINT,
            completed_at BIGINT,
            failed_at BIGINT,
            expired_at BIGINT,
            cancelling_at BIGINT,
            cancelled_at BIGINT,
            lease_owner TEXT,
            lease_expires_at BIGINT
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
        "ALTER TABLE events ALTER COLUMN job_id DROP NOT NULL",
        "ALTER TABLE events ADD COLUMN batch_id TEXT REFERENCES batches (id)",
        "ALTER TABLE events ADD CONSTRAINT events_subject CHECK ((job_id IS NULL) <> (batch_id IS NULL))",
        "ALTER TABLE events ADD CONSTRAINT events_batch_type UNIQUE (batch_id, type)",
    ),
    # 4: a store that ever held a key never runs open again (service/access/store.py).
    (
        """CREATE TABLE access_flags (
            name TEXT PRIMARY KEY,
            set_at BIGINT NOT NULL
        )""",
        "INSERT INTO access_flags (name, set_at) SELECT 'keys_required', MIN(created_at) FROM access_keys"
        " HAVING COUNT(*) > 0",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)

# Claim order as in SqliteJobStore (fewest live leases, least recently served, oldest job; lowest chunk), taken in
# one statement that skips chunks another replica is claiming right now.
_CLAIM_SQL = """
SELECT c.job_id, c.idx FROM chunks c JOIN jobs j ON j.id = c.job_id
WHERE j.status IN ('queued', 'in_progress') AND c.status IN ('pending', 'leased')
  AND ((c.status = 'pending' AND c.lease_expires_at IS NULL) OR (c.status = 'leased' AND c.lease_expires_at <= :now))
ORDER BY (SELECT COUNT(*) FROM chunks l WHERE l.job_id = j.id AND l.status = 'leased' AND l.lease_expires_at > :now),
         j.last_claim, j.seq, c.idx
LIMIT 1
FOR UPDATE OF c SKIP LOCKED
"""

_NAMED = re.compile(r"(?<![:\w]):([a-z_]+)\b")
_NULL_TEST = re.compile(r"\?(\s+IS\s+NULL)", re.IGNORECASE)
RETRIES = 5


@functools.lru_cache(maxsize=512)
def translate(sql: str) -> str:
    """SQLite parameter style (`?`, `:name`) -> psycopg's (`%s`, `%(name)s`)."""
    sql = sql.replace("%", "%%")
    sql = _NULL_TEST.sub(r"%s::text\1", sql)
    sql = _NAMED.sub(r"%(\1)s", sql)
    return sql.replace("?", "%s")


class Row(tuple):
    """A result row readable by position and by column name, like sqlite3.Row."""

    names: dict[str, int]

    def __getitem__(self, key: Any) -> Any:  # type: ignore[override]
        if isinstance(key, str):
            return tuple.__getitem__(self, self.names[key])
        return tuple.__getitem__(self, key)


def _row_factory(cursor: psycopg.Cursor) -> Callable[[Sequence[Any]], Row]:
    names = {column.name: i for i, column in enumerate(cursor.description or ())}
    row_type = type("Row", (Row,), {"names": names})
    return lambda values: row_type(values)


class Connection:
    """A psycopg connection that speaks the sqlite3 connection's dialect (`execute`, `executemany`)."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.raw = conn

    def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> psycopg.Cursor:
        cursor = self.raw.cursor(row_factory=_row_factory)
        return cursor.execute(translate(sql), params)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> psycopg.Cursor:
        cursor = self.raw.cursor(row_factory=_row_factory)
        cursor.executemany(translate(sql), list(rows))
        return cursor


class Database:
    """One autocommit connection per calling thread to `url`; `close` closes them all. Thread-safe."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._local = threading.local()
        self._all: list[psycopg.Connection] = []
        self._lock = threading.Lock()
        self._closed = False

    def connection(self) -> Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.raw.closed or conn.raw.broken:  # broken: the server went away; connect again
            with self._lock:
                if self._closed:
                    raise JobStoreError("the store is closed")
                try:
                    raw = psycopg.connect(self.url, autocommit=True, connect_timeout=10)
                except psycopg.OperationalError as exc:
                    # An OSError, so start-up reports it as a configuration error. psycopg's message names the
                    # host, port and user, never the password.
                    reason = " ".join(str(exc).split())  # one line: start-up prints it as such
                    raise ConnectionError(f"cannot connect to the PostgreSQL store: {reason}") from exc
                self._all.append(raw)
            conn = self._local.conn = Connection(raw)
        return conn

    @contextmanager
    def transaction(self, read_only: bool = False) -> Iterator[Connection]:
        conn = self.connection()
        with conn.raw.transaction():
            if read_only:
                # One snapshot for every statement of the read, as SQLite's deferred read transaction gives.
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            yield conn

    def migrate(self) -> None:
        """Apply the migrations this database lacks, once, however many replicas start at the same time."""
        with self.transaction() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('embeddings-migrations:' || current_schema()))")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)"
            )
            current = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchone()[0]
            if current > SCHEMA_VERSION:
                raise JobStoreError(f"database schema version {current} is newer than this code ({SCHEMA_VERSION})")
            for version in range(current + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[version - 1]:
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)", (version, int(time.time()))
                )
                log.info("database schema migrated to version %d", version)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for raw in self._all:
                raw.close()
            self._all.clear()


def retry_conflicts(method: F) -> F:
    """Run a one-transaction method again when PostgreSQL aborted it as a deadlock or serialization failure."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        for attempt in range(RETRIES):
            try:
                return method(*args, **kwargs)
            except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure):
                if attempt == RETRIES - 1:
                    raise
                time.sleep(0.01 * (attempt + 1))
        raise AssertionError("unreachable")

    return wrapper  # type: ignore[return-value]


class PostgresJobStore(SqliteJobStore):
    """`JobStore` on PostgreSQL: the SQLite store's statements with row locks where replicas write concurrently."""

    _FOR_UPDATE = " FOR UPDATE"
    _SKIP_LOCKED = " FOR UPDATE SKIP LOCKED"
    _LOCK_TENANT_WEBHOOKS = "SELECT pg_advisory_xact_lock(hashtext('embeddings-webhooks:' || ?))"

    def __init__(self, url: str, *, retention_s: int = DEFAULT_RETENTION_S, announce: Announce | None = None) -> None:
        self.path = Path("postgresql")  # for messages only; never the URL (it may hold a password)
        self.retention_s = retention_s
        self._announce = announce
        self._db = Database(url)
        self._closed = False
        self._db.migrate()

    @contextmanager
    def _write(self) -> Iterator[Any]:
        if self._closed:
            raise JobStoreError("the job store is closed")
        with self._db.transaction() as conn:
            yield conn

    @contextmanager
    def _read(self) -> Iterator[Any]:
        if self._closed:
            raise JobStoreError("the job store is closed")
        with self._db.transaction(read_only=True) as conn:
            yield conn

    @staticmethod
    def _next_claim(conn: Any, now: int) -> tuple[str, int] | None:
        row = conn.execute(_CLAIM_SQL, {"now": now}).fetchone()
        return (row[0], row[1]) if row is not None else None

    def _reclaim_space(self) -> None:
        """PostgreSQL's autovacuum reuses the space of deleted rows."""

    def close(self) -> None:
        self._closed = True
        self._db.close()

    claim_chunk = retry_conflicts(SqliteJobStore.claim_chunk)
    complete_chunk = retry_conflicts(SqliteJobStore.complete_chunk)
    renew_lease = retry_conflicts(SqliteJobStore.renew_lease)
    release_chunk = retry_conflicts(SqliteJobStore.release_chunk)
    cancel_job = retry_conflicts(SqliteJobStore.cancel_job)
    fail_job = retry_conflicts(SqliteJobStore.fail_job)
    expire_results = retry_conflicts(SqliteJobStore.expire_results)
    add_event = retry_conflicts(SqliteJobStore.add_event)
    due_deliveries = retry_conflicts(SqliteJobStore.due_deliveries)
    record_attempt = retry_conflicts(SqliteJobStore.record_attempt)
    delete_webhook = retry_conflicts(SqliteJobStore.delete_webhook)
    disable_webhook = retry_conflicts(SqliteJobStore.disable_webhook)


class PostgresStore(BatchStoreMixin, PostgresJobStore):
    """The shared-mode store: jobs, webhooks and the Batch API on PostgreSQL."""

    append_file_part = retry_conflicts(BatchStoreMixin.append_file_part)
    finish_file = retry_conflicts(BatchStoreMixin.finish_file)
    discard_file = retry_conflicts(BatchStoreMixin.discard_file)
    delete_file = retry_conflicts(BatchStoreMixin.delete_file)
    expire_files = retry_conflicts(BatchStoreMixin.expire_files)
    cancel_batch = retry_conflicts(BatchStoreMixin.cancel_batch)
    claim_batch = retry_conflicts(BatchStoreMixin.claim_batch)
    renew_batch_lease = retry_conflicts(BatchStoreMixin.renew_batch_lease)
    release_batch = retry_conflicts(BatchStoreMixin.release_batch)
    add_batch_job = retry_conflicts(BatchStoreMixin.add_batch_job)
    start_batch = retry_conflicts(BatchStoreMixin.start_batch)
    fail_batch = retry_conflicts(BatchStoreMixin.fail_batch)
    begin_finalizing = retry_conflicts(BatchStoreMixin.begin_finalizing)
    finish_batch = retry_conflicts(BatchStoreMixin.finish_batch)


class PostgresAccessStore(SqliteAccessStore):
    """`AccessStore` on PostgreSQL (same tables as SQLite's, created by the migrations above)."""

    def __init__(self, url: str) -> None:
        self.path = Path("postgresql")
        self._db = Database(url)
        self._db.migrate()

    @contextmanager
    def _transaction(self) -> Iterator[Any]:
        with self._db.transaction() as conn:
            yield conn

    def _query(self, sql: str, params: tuple = ()) -> list[Any]:
        return self._db.connection().execute(sql, params).fetchall()

    def snapshot(self) -> KeySnapshot:
        with self._db.transaction(read_only=True) as conn:
            rows = conn.execute(
                "SELECT id, tenant, name, secret_hash, role, models, rpm, tpm, created_at, rotated_at, revoked_at"
                " FROM access_keys WHERE revoked_at IS NULL"
            ).fetchall()
            tenant_rows = conn.execute("SELECT name, rpm, tpm FROM access_tenants").fetchall()
            required = conn.execute(_READ_KEYS_REQUIRED).fetchone()[0] > 0
        active = {r["id"]: _key(r) for r in rows}
        tenants = {r["name"]: TenantRecord(r["name"], r["rpm"], r["tpm"]) for r in tenant_rows}
        return KeySnapshot(active, tenants, len(active), required)

    @retry_conflicts
    def add_usage(self, deltas: Iterable[UsageDelta]) -> None:
        """Upserts adding to the stored counts (PostgreSQL wants the existing row's columns qualified)."""
        rows = [
            (d.day, d.tenant, d.key_id, d.model, d.requests, d.tokens, d.job_requests, d.job_tokens) for d in deltas
        ]
        if not rows:
            return
        # Sorted: concurrent flushes of several replicas lock the same rows in the same order (no deadlock).
        rows.sort(key=lambda r: r[:4])
        with self._transaction() as conn:
            conn.executemany(
                "INSERT INTO access_usage AS u (day, tenant, key_id, model, requests, tokens, job_requests,"
                " job_tokens) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (day, tenant, key_id, model) DO UPDATE SET"
                " requests = u.requests + EXCLUDED.requests, tokens = u.tokens + EXCLUDED.tokens,"
                " job_requests = u.job_requests + EXCLUDED.job_requests,"
                " job_tokens = u.job_tokens + EXCLUDED.job_tokens",
                rows,
            )

    def close(self) -> None:
        self._db.close()
