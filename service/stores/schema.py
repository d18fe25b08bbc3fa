"""The database schema, written once for both backends: numbered migrations, rendered per dialect.

A statement names the few types the dialects spell differently as `{seq}` (the table's own row number, the key),
`{int64}` (times, byte and token counts) and `{bytes}`; `render` fills them in (see `TYPES`). Where the dialects
really differ (an index SQLite would not use, a table SQLite must rebuild where PostgreSQL alters it), a migration
says so with `sqlite(...)` / `postgres(...)` in place, so the two histories stay one list with one numbering.

Migration n (1-based) is MIGRATIONS[n - 1], applied in one transaction with the version bump by the backend's
`migrate` (SQLite: `schema_version`, PostgreSQL: `schema_migrations` under an advisory lock). Append only: a
database of any earlier version upgrades by running the ones it lacks.

The access tables predate versioning on SQLite (the access store created them at every start), so SQLite ensures
them at every start (`ACCESS_SCHEMA`, idempotent); PostgreSQL created them in migrations 1 and 4. `ACCESS_TABLES` is
their shape as of migration 1, and stays so: later changes are migrations of both dialects (SQLite's first ensure
the tables, since on a new file they come after the migrations).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from service.access.records import DEFAULT_TENANT
from service.jobs.records import JobStoreError

SQLITE, POSTGRES = "sqlite", "postgres"

TYPES = {
    SQLITE: {"seq": "INTEGER PRIMARY KEY AUTOINCREMENT", "int64": "INTEGER", "bytes": "BLOB"},
    POSTGRES: {"seq": "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY", "int64": "BIGINT", "bytes": "BYTEA"},
}


@dataclass(frozen=True)
class Only:
    """Statements for one dialect only."""

    dialect: str
    statements: tuple[str, ...]


def sqlite(*statements: str) -> Only:
    return Only(SQLITE, statements)


def postgres(*statements: str) -> Only:
    return Only(POSTGRES, statements)


def render(statement: str, dialect: str) -> str:
    return statement.format(**TYPES[dialect], default_tenant=DEFAULT_TENANT)


def statements(steps: Sequence[str | Only], dialect: str) -> list[str]:
    """A migration's statements for `dialect`, in order."""
    rendered: list[str] = []
    for step in steps:
        if isinstance(step, Only):
            rendered.extend(render(s, dialect) for s in step.statements if step.dialect == dialect)
        else:
            rendered.append(render(step, dialect))
    return rendered


# Facts about the store that never revert. `keys_required`: a key was created here once, so the service never runs
# open on this store again (not even after every key is revoked) unless told to (allow_open). Stores made before
# the flag existed: one that holds keys has held keys.
ACCESS_FLAGS = (
    """CREATE TABLE IF NOT EXISTS access_flags (
        name TEXT PRIMARY KEY,
        set_at {int64} NOT NULL
    )""",
    "INSERT INTO access_flags (name, set_at) SELECT 'keys_required', MIN(created_at) FROM access_keys WHERE true"
    " HAVING COUNT(*) > 0 ON CONFLICT (name) DO NOTHING",
)
ACCESS_TABLES = (
    """CREATE TABLE IF NOT EXISTS access_tenants (
        name TEXT PRIMARY KEY,
        rpm INTEGER,
        tpm INTEGER,
        created_at {int64} NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS access_keys (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        name TEXT NOT NULL,
        secret_hash TEXT NOT NULL,
        role TEXT NOT NULL,
        models TEXT,
        rpm INTEGER,
        tpm INTEGER,
        created_at {int64} NOT NULL,
        rotated_at {int64},
        revoked_at {int64}
    )""",
    "CREATE INDEX IF NOT EXISTS access_keys_tenant ON access_keys (tenant, created_at)",
    """CREATE TABLE IF NOT EXISTS access_usage (
        day TEXT NOT NULL,
        tenant TEXT NOT NULL,
        key_id TEXT NOT NULL,
        model TEXT NOT NULL,
        requests {int64} NOT NULL DEFAULT 0,
        tokens {int64} NOT NULL DEFAULT 0,
        job_requests {int64} NOT NULL DEFAULT 0,
        job_tokens {int64} NOT NULL DEFAULT 0,
        PRIMARY KEY (day, tenant, key_id, model)
    )""",
)
# What SQLite ensures at every start.
ACCESS_SCHEMA = (*ACCESS_TABLES, *ACCESS_FLAGS)

# Migration 6's usage table: a row per (day, tenant, key, model, end user, price). `end_user` is OpenAI's `user`
# ("" none; `user` is a reserved word in PostgreSQL); `price` the model's price per million tokens when the tokens
# were used (exact decimal text, "" unpriced), so a price change starts new rows and reports cost each row at its
# own price.
USAGE_BY_USER_AND_PRICE = """CREATE TABLE access_usage_v6 (
        day TEXT NOT NULL,
        tenant TEXT NOT NULL,
        key_id TEXT NOT NULL,
        model TEXT NOT NULL,
        end_user TEXT NOT NULL DEFAULT '',
        price TEXT NOT NULL DEFAULT '',
        requests {int64} NOT NULL DEFAULT 0,
        tokens {int64} NOT NULL DEFAULT 0,
        job_requests {int64} NOT NULL DEFAULT 0,
        job_tokens {int64} NOT NULL DEFAULT 0,
        PRIMARY KEY (day, tenant, key_id, model, end_user, price)
    )"""

MIGRATIONS: tuple[tuple[str | Only, ...], ...] = (
    # 1: jobs, their chunks, webhooks, events and deliveries.
    (
        """CREATE TABLE webhooks (
            seq {seq},
            id TEXT NOT NULL UNIQUE,
            tenant TEXT NOT NULL DEFAULT '{default_tenant}',
            url TEXT NOT NULL,
            description TEXT NOT NULL DEFAULT '',
            secret TEXT NOT NULL,
            created_at {int64} NOT NULL,
            disabled_at {int64},
            disabled_reason TEXT,
            deleted_at {int64}
        )""",
        "CREATE INDEX webhooks_tenant ON webhooks (tenant, seq)",
        """CREATE TABLE jobs (
            seq {seq},
            id TEXT NOT NULL UNIQUE,
            tenant TEXT NOT NULL DEFAULT '{default_tenant}',
            status TEXT NOT NULL CHECK (status IN ('queued', 'in_progress', 'completed', 'failed', 'cancelled')),
            model TEXT NOT NULL,
            options TEXT NOT NULL,
            metadata TEXT NOT NULL,
            webhook_id TEXT REFERENCES webhooks (id),
            total_inputs INTEGER NOT NULL CHECK (total_inputs > 0),
            chunk_size INTEGER NOT NULL CHECK (chunk_size > 0),
            completed_inputs INTEGER NOT NULL DEFAULT 0,
            prompt_tokens {int64} NOT NULL DEFAULT 0,
            error TEXT,
            created_at {int64} NOT NULL,
            started_at {int64},
            completed_at {int64},
            failed_at {int64},
            cancelled_at {int64},
            expires_at {int64},
            results_removed INTEGER NOT NULL DEFAULT 0,
            last_claim {int64} NOT NULL DEFAULT 0
        )""",
        "CREATE INDEX jobs_tenant ON jobs (tenant, seq)",
        "CREATE INDEX jobs_active ON jobs (seq) WHERE status IN ('queued', 'in_progress')",
        sqlite("CREATE INDEX jobs_last_claim ON jobs (last_claim)"),
        "CREATE INDEX jobs_expiry ON jobs (expires_at) WHERE results_removed = 0 AND expires_at IS NOT NULL",
        # Small columns first: a row's BLOBs sit in overflow pages that scans of the small ones never read.
        """CREATE TABLE chunks (
            job_id TEXT NOT NULL REFERENCES jobs (id),
            idx INTEGER NOT NULL,
            start INTEGER NOT NULL,
            count INTEGER NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('pending', 'leased', 'done', 'failed')),
            lease_owner TEXT,
            lease_expires_at {int64},
            attempts INTEGER NOT NULL DEFAULT 0,
            dims INTEGER,
            token_counts {bytes},
            inputs TEXT,
            vectors {bytes},
            PRIMARY KEY (job_id, idx)
        )""",
        # Claims look chunks up by (job, status, lease expiry). SQLite: a plain index, since it would not use a
        # partial one for `status = 'pending'` (it must match the index's WHERE term literally); PostgreSQL claims
        # in one statement over the claimable chunks (service/stores/postgres/jobs.py).
        sqlite("CREATE INDEX chunks_state ON chunks (job_id, status, lease_expires_at, idx)"),
        postgres("CREATE INDEX chunks_claimable ON chunks (job_id, idx) WHERE status IN ('pending', 'leased')"),
        """CREATE TABLE events (
            seq {seq},
            id TEXT NOT NULL UNIQUE,
            tenant TEXT NOT NULL DEFAULT '{default_tenant}',
            job_id TEXT NOT NULL REFERENCES jobs (id),
            type TEXT NOT NULL,
            payload TEXT NOT NULL,
            created_at {int64} NOT NULL,
            UNIQUE (job_id, type)
        )""",
        """CREATE TABLE deliveries (
            seq {seq},
            id TEXT NOT NULL UNIQUE,
            tenant TEXT NOT NULL DEFAULT '{default_tenant}',
            event_id TEXT NOT NULL REFERENCES events (id),
            webhook_id TEXT NOT NULL REFERENCES webhooks (id),
            state TEXT NOT NULL CHECK (state IN ('pending', 'succeeded', 'failed', 'disabled')),
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at {int64},
            lease_owner TEXT,
            lease_expires_at {int64},
            created_at {int64} NOT NULL,
            last_attempt_at {int64},
            UNIQUE (event_id, webhook_id)
        )""",
        "CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE state = 'pending'",
        "CREATE INDEX deliveries_webhook ON deliveries (webhook_id, seq)",
        """CREATE TABLE delivery_attempts (
            id {seq},
            delivery_id TEXT NOT NULL REFERENCES deliveries (id),
            attempted_at {int64} NOT NULL,
            status_code INTEGER,
            error TEXT,
            duration_ms INTEGER NOT NULL
        )""",
        "CREATE INDEX delivery_attempts_delivery ON delivery_attempts (delivery_id, id)",
        postgres(*ACCESS_TABLES),
    ),
    # 2: failures are counted apart from claims (a takeover of a lease that ran out is not a failure).
    ("ALTER TABLE chunks ADD COLUMN failures INTEGER NOT NULL DEFAULT 0",),
    # 3: the Batch API: files stored in parts, batches, the jobs they run as and their requests; events belong to
    # a job or to a batch.
    (
        """CREATE TABLE files (
            seq {seq},
            id TEXT NOT NULL UNIQUE,
            tenant TEXT NOT NULL,
            purpose TEXT NOT NULL,
            filename TEXT NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('uploading', 'processed', 'deleted')),
            bytes {int64} NOT NULL DEFAULT 0,
            lines {int64} NOT NULL DEFAULT 0,
            created_at {int64} NOT NULL,
            expires_at {int64},
            deleted_at {int64}
        )""",
        "CREATE INDEX files_tenant ON files (tenant, seq)",
        "CREATE INDEX files_expiry ON files (expires_at) WHERE status = 'processed'",
        "CREATE INDEX files_uploading ON files (created_at) WHERE status = 'uploading'",
        """CREATE TABLE file_parts (
            file_id TEXT NOT NULL REFERENCES files (id),
            idx INTEGER NOT NULL,
            data {bytes} NOT NULL,
            PRIMARY KEY (file_id, idx)
        )""",
        """CREATE TABLE batches (
            seq {seq},
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
            output_expires_after {int64} NOT NULL,
            model TEXT,
            metadata TEXT NOT NULL,
            webhook_id TEXT REFERENCES webhooks (id),
            errors TEXT,
            total INTEGER NOT NULL DEFAULT 0,
            completed INTEGER NOT NULL DEFAULT 0,
            failed INTEGER NOT NULL DEFAULT 0,
            prompt_tokens {int64} NOT NULL DEFAULT 0,
            created_at {int64} NOT NULL,
            in_progress_at {int64},
            expires_at {int64} NOT NULL,
            finalizing_at {int64},
            completed_at {int64},
            failed_at {int64},
            expired_at {int64},
            cancelling_at {int64},
            cancelled_at {int64},
            lease_owner TEXT,
            lease_expires_at {int64}
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
        # SQLite cannot drop a NOT NULL, so it rebuilds the table (foreign keys are off while its migrations run).
        sqlite(
            """CREATE TABLE events_v2 (
                seq {seq},
                id TEXT NOT NULL UNIQUE,
                tenant TEXT NOT NULL DEFAULT '{default_tenant}',
                job_id TEXT REFERENCES jobs (id),
                batch_id TEXT REFERENCES batches (id),
                type TEXT NOT NULL,
                payload TEXT NOT NULL,
                created_at {int64} NOT NULL,
                CHECK ((job_id IS NULL) <> (batch_id IS NULL)),
                UNIQUE (job_id, type),
                UNIQUE (batch_id, type)
            )""",
            "INSERT INTO events_v2 (seq, id, tenant, job_id, type, payload, created_at)"
            " SELECT seq, id, tenant, job_id, type, payload, created_at FROM events",
            "DROP TABLE events",
            "ALTER TABLE events_v2 RENAME TO events",
        ),
        postgres(
            "ALTER TABLE events ALTER COLUMN job_id DROP NOT NULL",
            "ALTER TABLE events ADD COLUMN batch_id TEXT REFERENCES batches (id)",
            "ALTER TABLE events ADD CONSTRAINT events_subject CHECK ((job_id IS NULL) <> (batch_id IS NULL))",
            "ALTER TABLE events ADD CONSTRAINT events_batch_type UNIQUE (batch_id, type)",
        ),
    ),
    # 4: a store that ever held a key never runs open again (SQLite ensures the flags with the access tables).
    (postgres(*ACCESS_FLAGS),),
    # 5: the key that submitted a job is a column of its own; earlier jobs kept it among their options.
    (
        "ALTER TABLE jobs ADD COLUMN key_id TEXT",
        sqlite("UPDATE jobs SET key_id = json_extract(options, '$.key_id') WHERE key_id IS NULL"),
        postgres("UPDATE jobs SET key_id = options::jsonb ->> 'key_id' WHERE key_id IS NULL"),
    ),
    # 6: per-user limits (a key's own, a tenant's defaults), a job's end user, and usage by end user and price.
    (
        sqlite(*ACCESS_TABLES),
        "ALTER TABLE access_keys ADD COLUMN user_rpm INTEGER",
        "ALTER TABLE access_keys ADD COLUMN user_tpm INTEGER",
        "ALTER TABLE access_tenants ADD COLUMN user_rpm INTEGER",
        "ALTER TABLE access_tenants ADD COLUMN user_tpm INTEGER",
        "ALTER TABLE jobs ADD COLUMN end_user TEXT NOT NULL DEFAULT ''",
        # Both rebuild the table (SQLite cannot change a primary key); the rows keep their counts, unpriced.
        USAGE_BY_USER_AND_PRICE,
        "INSERT INTO access_usage_v6 (day, tenant, key_id, model, requests, tokens, job_requests, job_tokens)"
        " SELECT day, tenant, key_id, model, requests, tokens, job_requests, job_tokens FROM access_usage",
        "DROP TABLE access_usage",
        "ALTER TABLE access_usage_v6 RENAME TO access_usage",
    ),
    # 7: what a chunk's vectors hold: float32 (every chunk before), or the int8/uint8 bytes of a compact embedding
    # type (service.jobs.records.STORED_DTYPES).
    ("ALTER TABLE chunks ADD COLUMN dtype TEXT NOT NULL DEFAULT 'float32'",),
)
SCHEMA_VERSION = len(MIGRATIONS)


def upgrades(current: int, dialect: str, where: str) -> Iterator[tuple[int, list[str]]]:
    """(version, its statements) of each migration a database at version `current` lacks, in order."""
    if current > SCHEMA_VERSION:
        raise JobStoreError(f"{where}: schema version {current} is newer than this code ({SCHEMA_VERSION})")
    for version in range(current + 1, SCHEMA_VERSION + 1):
        yield version, statements(MIGRATIONS[version - 1], dialect)
