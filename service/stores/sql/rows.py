"""How each record reads from a row, declared once per record type: its columns (derived from the dataclass's
fields, qualified where a query joins tables) and how a stored value decodes (JSON text, 0/1 flags).

`JOB.select` is the SELECT list, `JOB(row)` the record; every query that returns a record uses both, so adding a
field to a record is one column in the schema and, at most, one decoder here.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from service.access.records import KeyRecord, TenantRecord
from service.batches.records import Batch, BatchRequest, FileRecord
from service.jobs.records import LEGACY_KEY_ID_OPTION, Chunk, Delivery, DeliveryAttempt, Job, JobEvent, Webhook

R = TypeVar("R")
Decode = Callable[[Any], Any]


@dataclass(frozen=True)
class RowMap(Generic[R]):
    record: Callable[..., R]
    fields: tuple[str, ...]
    columns: tuple[str, ...]
    decoders: Mapping[str, Decode]
    # Fixes values that depend on each other, after decoding.
    adjust: Callable[[dict[str, Any]], None] | None = None

    @property
    def select(self) -> str:
        return ", ".join(self.columns)

    def __call__(self, row: Any) -> R:
        values = dict(zip(self.fields, row, strict=True))
        for name, decode in self.decoders.items():
            values[name] = decode(values[name])
        if self.adjust is not None:
            self.adjust(values)
        return self.record(**values)

    def one(self, cursor: Any) -> R | None:
        """The record of the one row a query found, or None when it found none."""
        row = cursor.fetchone()
        return self(row) if row is not None else None

    def by_id(self, conn: Any, table: str, record_id: str, tenant: str | None = None) -> R | None:
        """The record of `table`'s row `record_id` (when `tenant` is given, only if it is that tenant's), or None."""
        sql, params = f"SELECT {self.select} FROM {table} WHERE id = ?", (record_id,)
        if tenant is not None:
            sql, params = sql + " AND tenant = ?", (record_id, tenant)
        return self.one(conn.execute(sql, params))


def row_map(
    record: type[R],
    *,
    table: str = "",
    columns: Mapping[str, str] | None = None,
    decode: Mapping[str, Decode] | None = None,
    adjust: Callable[[dict[str, Any]], None] | None = None,
) -> RowMap[R]:
    """`record`'s fields, each read from the column of its name (in `table`, an alias, when given) unless `columns`
    names another."""
    names = tuple(field.name for field in dataclasses.fields(record))  # type: ignore[arg-type]
    columns = columns or {}
    prefix = f"{table}." if table else ""
    return RowMap(record, names, tuple(columns.get(n, prefix + n) for n in names), decode or {}, adjust)


def optional(decode: Decode) -> Decode:
    return lambda value: None if value is None else decode(value)


def json_tuple(value: str) -> tuple[Any, ...]:
    return tuple(json.loads(value))


def key_id_from_options(values: dict[str, Any]) -> None:
    """Jobs submitted before the key id had a column of its own (or by a replica not yet upgraded) keep it among
    their options: it moves to `key_id`, and the options hold only embedding options, as for newer jobs."""
    legacy = values["options"].pop(LEGACY_KEY_ID_OPTION, None)
    if values["key_id"] is None:
        values["key_id"] = legacy


JOB = row_map(
    Job,
    columns={"user": "end_user"},
    decode={"options": json.loads, "metadata": json.loads, "error": optional(json.loads), "results_removed": bool},
    adjust=key_id_from_options,
)
CHUNK = row_map(
    Chunk,
    table="c",
    columns={
        "tenant": "j.tenant",
        "model": "j.model",
        "options": "j.options",
        "key_id": "j.key_id",
        "user": "j.end_user",
    },
    decode={"inputs": json.loads, "options": json.loads},
    adjust=key_id_from_options,
)
WEBHOOK = row_map(Webhook)
EVENT = row_map(JobEvent)
DELIVERY = row_map(
    Delivery,
    table="d",
    columns={
        "event_type": "e.type",
        "event_created_at": "e.created_at",
        "payload": "e.payload",
        "job_id": "e.job_id",
        "url": "w.url",
        "secret": "w.secret",
    },
)
ATTEMPT = row_map(
    DeliveryAttempt,
    table="a",
    columns={
        "event_id": "d.event_id",
        "event_type": "e.type",
        "job_id": "e.job_id",
        "webhook_id": "d.webhook_id",
        "delivery_state": "d.state",
        "attempt": "(SELECT COUNT(*) FROM delivery_attempts p WHERE p.delivery_id = a.delivery_id AND p.id <= a.id)",
    },
)
FILE = row_map(FileRecord)
BATCH = row_map(Batch, decode={"models": optional(json_tuple), "metadata": json.loads, "errors": optional(json.loads)})
BATCH_REQUEST = row_map(BatchRequest)
KEY = row_map(KeyRecord, decode={"models": optional(json_tuple)})
TENANT = row_map(TenantRecord)
