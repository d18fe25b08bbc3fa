"""One SQLite file (WAL, synchronous=NORMAL, foreign keys on, busy_timeout) as a `Database`.

Threading: thread-safe. Writes go through one connection behind a lock, each in a `BEGIN IMMEDIATE` transaction:
writers are serialized in-process without SQLite's busy-wait polling, and across processes (another replica or the
admin CLI on the same file) by the file lock and busy_timeout. Reads use one connection per calling thread, each
read in its own deferred transaction, so they see one consistent snapshot and run in parallel with a write (WAL).
Made for `asyncio.to_thread`: the default executor's threads are few and long-lived, so reader connections are too;
`close` closes them all.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from service.jobs.records import JobStoreError
from service.private_files import private_sqlite_file
from service.stores import schema

T = TypeVar("T")

BUSY_TIMEOUT_MS = 10_000
WAL_SIZE_LIMIT = 64 * 1024 * 1024


def connect(path: Path) -> sqlite3.Connection:
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


class SqliteDatabase:
    """The file at `path`, made private (0600: it holds key hashes, webhook secrets, the jobs' texts and vectors)
    and migrated to the current schema."""

    for_update = ""
    skip_locked = ""

    def __init__(self, path: Path) -> None:
        self.path = private_sqlite_file(path)
        self.label = str(self.path)
        self._write_lock = threading.Lock()
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._closed = False
        self._writer = connect(self.path)
        # Before any table exists (a no-op on an existing file): lets deletions give pages back to the OS.
        self._writer.execute("PRAGMA auto_vacuum = INCREMENTAL")
        self._writer.execute("PRAGMA journal_mode = WAL")
        # Results are written in bulk: let the WAL shrink back after checkpoints instead of keeping its peak size.
        self._writer.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
        self._migrate()

    def _migrate(self) -> None:
        """Apply missing migrations in one transaction, foreign keys off (they cannot be switched inside one):
        SQLite changes a column's constraints by rebuilding its table, which a live foreign key would refuse. The
        keys are checked before the commit. The access tables are ensured every time (see `schema`)."""
        self._writer.execute("PRAGMA foreign_keys = OFF")
        try:
            with self.write() as conn:
                conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
                current = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] or 0
                for version, statements in schema.upgrades(current, schema.SQLITE, self.label):
                    for statement in statements:
                        conn.execute(statement)
                    conn.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
                for statement in schema.statements(schema.ACCESS_SCHEMA, schema.SQLITE):
                    conn.execute(statement)
                broken = conn.execute("PRAGMA foreign_key_check").fetchall()
                if broken:
                    raise JobStoreError(f"{self.path}: migration left broken foreign keys: {broken[:5]}")
        finally:
            self._writer.execute("PRAGMA foreign_keys = ON")

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        with self._write_lock:
            if self._closed:
                raise JobStoreError("the store is closed")
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
    def read(self) -> Iterator[sqlite3.Connection]:
        if self._closed:
            raise JobStoreError("the store is closed")
        conn = getattr(self._local, "conn", None)
        if conn is None:
            with self._readers_lock:
                if self._closed:
                    raise JobStoreError("the store is closed")
                conn = connect(self.path)
                conn.execute("PRAGMA query_only = ON")
                self._readers.append(conn)
            self._local.conn = conn
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            conn.execute("ROLLBACK")

    def lock(self, conn: sqlite3.Connection, name: str) -> None:
        """A write transaction already holds the whole database."""

    def retrying(self, call: Callable[[], T]) -> T:
        """Writers wait for each other (busy_timeout) instead of aborting: nothing to retry."""
        return call()

    def reclaim_space(self) -> None:
        with self._write_lock:
            if self._closed:
                return
            # Give the freed pages back to the file system (auto_vacuum = INCREMENTAL). Through executescript:
            # `execute` steps the pragma once, which frees a single page.
            self._writer.executescript("PRAGMA incremental_vacuum;")

    def close(self) -> None:
        with self._write_lock, self._readers_lock:
            if self._closed:
                return
            self._closed = True
            for conn in self._readers:
                conn.close()
            self._writer.close()
