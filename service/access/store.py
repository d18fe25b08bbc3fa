"""Durable access state: tenants, API keys (hashed) and usage, in the same SQLite file as the jobs (WAL).

The admin CLI writes here while the server runs (WAL lets both work at once); the server re-reads the keys every
second, so a key created, revoked or rotated by the CLI takes effect without a restart. `AccessStore` is what the
rest of the service codes against; a PostgreSQL implementation can follow for multi-replica deployments.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from service.access import keys
from service.private_files import private_sqlite_file

DB_NAME = "jobs.sqlite3"
BUSY_TIMEOUT_MS = 10_000

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS access_tenants (
        name TEXT PRIMARY KEY,
        rpm INTEGER,
        tpm INTEGER,
        created_at INTEGER NOT NULL
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
        created_at INTEGER NOT NULL,
        rotated_at INTEGER,
        revoked_at INTEGER
    )""",
    "CREATE INDEX IF NOT EXISTS access_keys_tenant ON access_keys (tenant, created_at)",
    """CREATE TABLE IF NOT EXISTS access_usage (
        day TEXT NOT NULL,
        tenant TEXT NOT NULL,
        key_id TEXT NOT NULL,
        model TEXT NOT NULL,
        requests INTEGER NOT NULL DEFAULT 0,
        tokens INTEGER NOT NULL DEFAULT 0,
        job_requests INTEGER NOT NULL DEFAULT 0,
        job_tokens INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (day, tenant, key_id, model)
    )""",
    # Facts about the store that never revert. `keys_required`: a key was created here once, so the service never
    # runs open on this store again (not even after every key is revoked) unless told to (allow_open).
    """CREATE TABLE IF NOT EXISTS access_flags (
        name TEXT PRIMARY KEY,
        set_at INTEGER NOT NULL
    )""",
    # Stores made before the flag existed: one that holds keys has held keys.
    "INSERT OR IGNORE INTO access_flags (name, set_at) SELECT 'keys_required', MIN(created_at) FROM access_keys"
    " HAVING COUNT(*) > 0",
)

_SET_KEYS_REQUIRED = "INSERT INTO access_flags (name, set_at) VALUES ('keys_required', ?) ON CONFLICT (name) DO NOTHING"
_READ_KEYS_REQUIRED = "SELECT COUNT(*) FROM access_flags WHERE name = 'keys_required'"

_KEY_COLUMNS = "id, tenant, name, secret_hash, role, models, rpm, tpm, created_at, rotated_at, revoked_at"


@dataclass(frozen=True)
class KeyRecord:
    id: str
    tenant: str
    name: str
    secret_hash: str
    role: str
    # Model ids or aliases the key may use; None: every model.
    models: tuple[str, ...] | None
    # Per-key overrides of the default limits; None: the server's defaults.
    rpm: int | None
    tpm: int | None
    created_at: int
    rotated_at: int | None
    revoked_at: int | None

    @property
    def admin(self) -> bool:
        return self.role == "admin"

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True)
class TenantRecord:
    name: str
    rpm: int | None
    tpm: int | None


@dataclass(frozen=True)
class UsageDelta:
    """Counts to add to one (day, tenant, key, model) row."""

    day: str
    tenant: str
    key_id: str
    model: str
    requests: int = 0
    tokens: int = 0
    job_requests: int = 0
    job_tokens: int = 0


@dataclass(frozen=True)
class UsageRow(UsageDelta):
    pass


@dataclass(frozen=True)
class KeySnapshot:
    """Everything the server needs to authenticate and limit calls, read in one go."""

    keys: dict[str, KeyRecord]
    tenants: dict[str, TenantRecord]
    active_keys: int
    # A key was ever created in this store (it stays true after every key is revoked).
    keys_required: bool = False


class AccessStore(Protocol):
    def create_key(
        self,
        tenant: str,
        name: str,
        *,
        admin: bool = False,
        models: tuple[str, ...] | None = None,
        rpm: int | None = None,
        tpm: int | None = None,
        now: int,
        issued: keys.NewKey | None = None,
    ) -> tuple[KeyRecord, str]:
        """The new key and its token (`sk-...`): the only time the token exists outside the caller. `issued`: a key
        made elsewhere (an operator's bootstrap key, service/access/bootstrap.py) instead of a fresh one."""
        ...

    def list_keys(self, tenant: str | None = None) -> list[KeyRecord]: ...

    def get_key(self, key_id: str) -> KeyRecord | None: ...

    def revoke_key(self, key_id: str, now: int) -> KeyRecord | None: ...

    def rotate_key(self, key_id: str, now: int) -> tuple[KeyRecord, str] | None:
        """A new secret for an active key (same id, tenant and limits); the old one stops working."""
        ...

    def set_tenant(self, name: str, rpm: int | None, tpm: int | None, now: int) -> TenantRecord: ...

    def list_tenants(self) -> list[TenantRecord]: ...

    def snapshot(self) -> KeySnapshot: ...

    def active_key_count(self) -> int: ...

    def add_usage(self, deltas: Iterable[UsageDelta]) -> None: ...

    def usage(
        self, tenant: str | None = None, since: str | None = None, until: str | None = None
    ) -> list[UsageRow]: ...

    def close(self) -> None: ...


def _key(row: sqlite3.Row) -> KeyRecord:
    models = tuple(json.loads(row["models"])) if row["models"] is not None else None
    return KeyRecord(
        row["id"],
        row["tenant"],
        row["name"],
        row["secret_hash"],
        row["role"],
        models,
        row["rpm"],
        row["tpm"],
        row["created_at"],
        row["rotated_at"],
        row["revoked_at"],
    )


class SqliteAccessStore:
    """`AccessStore` on `<data_dir>/jobs.sqlite3`. Thread-safe: one connection behind a lock (calls are small)."""

    def __init__(self, path: Path) -> None:
        self.path = private_sqlite_file(path)  # it holds key hashes: 0600
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000
        )
        self._conn.row_factory = sqlite3.Row
        self._conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        # The job store wants these before any table exists; whichever store creates the file sets them.
        self._conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        self._conn.execute("PRAGMA journal_mode = WAL")
        self._conn.execute("PRAGMA synchronous = NORMAL")
        with self._transaction() as conn:
            for statement in SCHEMA:
                conn.execute(statement)

    @classmethod
    def in_data_dir(cls, data_dir: str | Path) -> SqliteAccessStore:
        return cls(Path(data_dir) / DB_NAME)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _query(self, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    # --- keys

    def create_key(
        self,
        tenant: str,
        name: str,
        *,
        admin: bool = False,
        models: tuple[str, ...] | None = None,
        rpm: int | None = None,
        tpm: int | None = None,
        now: int,
        issued: keys.NewKey | None = None,
    ) -> tuple[KeyRecord, str]:
        if not tenant.strip():
            raise ValueError("a key needs a tenant")
        new = issued or keys.issue()
        record = KeyRecord(
            new.key_id, tenant, name, new.secret_hash, "admin" if admin else "user", models, rpm, tpm, now, None, None
        )
        with self._transaction() as conn:
            conn.execute(
                f"INSERT INTO access_keys ({_KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.id,
                    tenant,
                    name,
                    record.secret_hash,
                    record.role,
                    json.dumps(list(models)) if models is not None else None,
                    rpm,
                    tpm,
                    now,
                    None,
                    None,
                ),
            )
            conn.execute(_SET_KEYS_REQUIRED, (now,))
        return record, new.token

    def list_keys(self, tenant: str | None = None) -> list[KeyRecord]:
        rows = self._query(
            f"SELECT {_KEY_COLUMNS} FROM access_keys WHERE (? IS NULL OR tenant = ?) ORDER BY created_at, id",
            (tenant, tenant),
        )
        return [_key(r) for r in rows]

    def get_key(self, key_id: str) -> KeyRecord | None:
        rows = self._query(f"SELECT {_KEY_COLUMNS} FROM access_keys WHERE id = ?", (key_id,))
        return _key(rows[0]) if rows else None

    def revoke_key(self, key_id: str, now: int) -> KeyRecord | None:
        with self._transaction() as conn:
            conn.execute("UPDATE access_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (now, key_id))
        return self.get_key(key_id)

    def rotate_key(self, key_id: str, now: int) -> tuple[KeyRecord, str] | None:
        new = keys.issue(key_id)
        with self._transaction() as conn:
            changed = conn.execute(
                "UPDATE access_keys SET secret_hash = ?, rotated_at = ? WHERE id = ? AND revoked_at IS NULL",
                (new.secret_hash, now, key_id),
            ).rowcount
        if not changed:
            return None
        record = self.get_key(key_id)
        assert record is not None
        return record, new.token

    def active_key_count(self) -> int:
        return self._query("SELECT COUNT(*) FROM access_keys WHERE revoked_at IS NULL")[0][0]

    # --- tenants

    def set_tenant(self, name: str, rpm: int | None, tpm: int | None, now: int) -> TenantRecord:
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO access_tenants (name, rpm, tpm, created_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET rpm = excluded.rpm, tpm = excluded.tpm",
                (name, rpm, tpm, now),
            )
        return TenantRecord(name, rpm, tpm)

    def list_tenants(self) -> list[TenantRecord]:
        return [TenantRecord(r["name"], r["rpm"], r["tpm"]) for r in self._query("SELECT * FROM access_tenants")]

    def snapshot(self) -> KeySnapshot:
        with self._lock:
            self._conn.execute("BEGIN")
            try:
                rows = self._conn.execute(f"SELECT {_KEY_COLUMNS} FROM access_keys WHERE revoked_at IS NULL").fetchall()
                tenant_rows = self._conn.execute("SELECT name, rpm, tpm FROM access_tenants").fetchall()
                required = self._conn.execute(_READ_KEYS_REQUIRED).fetchone()[0] > 0
            finally:
                self._conn.execute("ROLLBACK")
        active = {r["id"]: _key(r) for r in rows}
        tenants = {r["name"]: TenantRecord(r["name"], r["rpm"], r["tpm"]) for r in tenant_rows}
        return KeySnapshot(active, tenants, len(active), required)

    # --- usage

    def add_usage(self, deltas: Iterable[UsageDelta]) -> None:
        rows = [
            (d.day, d.tenant, d.key_id, d.model, d.requests, d.tokens, d.job_requests, d.job_tokens) for d in deltas
        ]
        if not rows:
            return
        with self._transaction() as conn:
            conn.executemany(
                "INSERT INTO access_usage (day, tenant, key_id, model, requests, tokens, job_requests, job_tokens)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (day, tenant, key_id, model) DO UPDATE SET"
                " requests = requests + excluded.requests, tokens = tokens + excluded.tokens,"
                " job_requests = job_requests + excluded.job_requests, job_tokens = job_tokens + excluded.job_tokens",
                rows,
            )

    def usage(self, tenant: str | None = None, since: str | None = None, until: str | None = None) -> list[UsageRow]:
        """Rows per (day, tenant, key, model); `since`/`until` are inclusive UTC days (YYYY-MM-DD)."""
        rows = self._query(
            "SELECT day, tenant, key_id, model, requests, tokens, job_requests, job_tokens FROM access_usage"
            " WHERE (? IS NULL OR tenant = ?) AND (? IS NULL OR day >= ?) AND (? IS NULL OR day <= ?)"
            " ORDER BY day, tenant, key_id, model",
            (tenant, tenant, since, since, until, until),
        )
        return [UsageRow(*r) for r in rows]

    def close(self) -> None:
        with self._lock:
            self._conn.close()
