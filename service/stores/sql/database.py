"""What the shared SQL needs from a backend: transactions, row locks for concurrent writers, and retries."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol, TypeVar

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


class Connection(Protocol):
    """sqlite3's connection interface: rows read by position and by column name."""

    def execute(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> Any: ...

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> Any: ...


class Database(Protocol):
    # Names the database in messages; never a URL (it may hold a password).
    label: str
    # Suffixes for read-then-write statements: empty on SQLite (a write transaction holds the whole database),
    # " FOR UPDATE" and " FOR UPDATE SKIP LOCKED" on PostgreSQL, where writers run concurrently.
    for_update: str
    skip_locked: str

    def write(self) -> AbstractContextManager[Connection]:
        """One write transaction (committed on exit, rolled back on an error)."""
        ...

    def read(self) -> AbstractContextManager[Connection]:
        """One read transaction: every statement sees the same snapshot."""
        ...

    def lock(self, conn: Connection, name: str) -> None:
        """Serialize writers on `name` until the transaction ends (a no-op where writers are serialized anyway)."""
        ...

    def retrying(self, call: Callable[[], T]) -> T:
        """`call()`, run again while the database aborts its transaction as a deadlock or serialization failure."""
        ...

    def reclaim_space(self) -> None:
        """Give space freed by deletions back, where the database does not do it by itself."""
        ...

    def close(self) -> None: ...


def retried(method: F) -> F:
    """Marks a method that is one write transaction, so running it again after the database aborted it is safe."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        return self._db.retrying(lambda: method(self, *args, **kwargs))

    return wrapper  # type: ignore[return-value]


def claim_ids(db: Database, conn: Connection, sql: str, params: Sequence[Any]) -> list[Any]:
    """The ids `sql` selects, locked until the transaction ends; rows another writer holds are skipped."""
    return [row[0] for row in conn.execute(sql + db.skip_locked, params)]


def dumps(value: Any) -> str:
    """Compact JSON, as stored in TEXT columns."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class Store:
    """A store over one `Database`: `close` closes it; usable as a context manager."""

    _db: Database

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
