"""Lists in pages, by creation order (`seq`), with a cursor that is the last id of the previous page."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from service.jobs.records import InvalidCursor, Page
from service.stores.sql.database import Connection
from service.stores.sql.rows import RowMap

R = TypeVar("R")


def tenant_page(
    conn: Connection,
    table: str,
    rows: RowMap[R],
    tenant: str,
    limit: int,
    after: str | None,
    *,
    noun: str,
    where: str = "",
    params: Sequence[Any] = (),
    ascending: bool = False,
) -> Page[R]:
    """Up to `limit` of `tenant`'s rows of `table` (and `where`), newest first unless `ascending`, after the row
    `after` names (InvalidCursor if it names no row of this tenant)."""
    cursor = None
    if after is not None:
        row = conn.execute(f"SELECT seq FROM {table} WHERE id = ? AND tenant = ?", (after, tenant)).fetchone()
        if row is None:
            raise InvalidCursor(f"No {noun} '{after}' to list after.")
        cursor = row[0]
    compare, order = (">", "ASC") if ascending else ("<", "DESC")
    found = conn.execute(
        f"SELECT {rows.select} FROM {table} WHERE tenant = ?{where} AND (? IS NULL OR seq {compare} ?)"
        f" ORDER BY seq {order} LIMIT ?",
        (tenant, *params, cursor, cursor, limit + 1),
    ).fetchall()
    return Page([rows(row) for row in found[:limit]], has_more=len(found) > limit)
