"""A PostgreSQL database as a `Database`, for several replicas writing at once.

- One autocommit connection per calling thread, explicit transactions; a read is one REPEATABLE READ snapshot.
- Writers run concurrently (SQLite serializes them on the file), so read-then-write statements take row locks
  (`for_update`, `skip_locked`), and a transaction PostgreSQL aborts as a deadlock or serialization failure is run
  again (`retrying`: each store method is one transaction, so repeating it is safe).
- The schema is versioned in `schema_migrations` and applied at start-up under an advisory lock: replicas starting
  together apply each migration once.
- SQL is written once in SQLite's parameter style (`?`, `:name`) and translated; `? IS NULL` gets a `::text`
  cast, since PostgreSQL cannot type a bare NULL parameter.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import psycopg
import psycopg.errors

from service.jobs.records import JobStoreError
from service.stores import schema

log = logging.getLogger(__name__)

T = TypeVar("T")

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


class PostgresDatabase:
    """The database at `url`, migrated to the current schema. Thread-safe."""

    label = "postgresql"  # never the URL: it may hold a password
    for_update = " FOR UPDATE"
    skip_locked = " FOR UPDATE SKIP LOCKED"

    def __init__(self, url: str) -> None:
        self.url = url
        self._local = threading.local()
        self._all: list[psycopg.Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        self._migrate()

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
    def _transaction(self, read_only: bool) -> Iterator[Connection]:
        if self._closed:
            raise JobStoreError("the store is closed")
        conn = self.connection()
        with conn.raw.transaction():
            if read_only:
                # One snapshot for every statement of the read, as SQLite's deferred read transaction gives.
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            yield conn

    def write(self) -> Any:
        return self._transaction(read_only=False)

    def read(self) -> Any:
        return self._transaction(read_only=True)

    def lock(self, conn: Connection, name: str) -> None:
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(?))", (name,))

    def retrying(self, call: Callable[[], T]) -> T:
        for attempt in range(RETRIES):
            try:
                return call()
            except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure):
                if attempt == RETRIES - 1:
                    raise
                time.sleep(0.01 * (attempt + 1))
        raise AssertionError("unreachable")

    def reclaim_space(self) -> None:
        """PostgreSQL's autovacuum reuses the space of deleted rows."""

    def _migrate(self) -> None:
        """Apply the migrations this database lacks, once, however many replicas start at the same time."""
        with self.write() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('embeddings-migrations:' || current_schema()))")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)"
            )
            current = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchone()[0]
            for version, statements in schema.upgrades(current, schema.POSTGRES, "the database"):
                for statement in statements:
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
