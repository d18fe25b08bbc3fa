"""Tenants, API keys (only their hashes), usage counts and the flag that keys are required."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import astuple, replace
from typing import Any

from service.access import keys
from service.access.records import KeyRecord, KeySnapshot, NewKey, TenantRecord, UsageDelta, UsageQuery, UsageRow
from service.engine.prices import cost
from service.fields import derive
from service.stores.sql.database import Database, Store, dumps, retried
from service.stores.sql.rows import KEY, TENANT

_SET_KEYS_REQUIRED = "INSERT INTO access_flags (name, set_at) VALUES ('keys_required', ?) ON CONFLICT (name) DO NOTHING"
_READ_KEYS_REQUIRED = "SELECT COUNT(*) FROM access_flags WHERE name = 'keys_required'"
_COUNTS = ("requests", "tokens", "job_requests", "job_tokens")
_GROUP = "day, tenant, key_id, model"


class AccessRows(Store):
    """`AccessStore` over a backend's `Database`."""

    _db: Database

    # --- keys

    @retried
    def create_key(self, new: NewKey, now: int, issued: keys.IssuedKey | None = None) -> tuple[KeyRecord, str]:
        issued = issued or keys.issue()
        record = derive(
            KeyRecord,
            new,
            id=issued.key_id,
            secret_hash=issued.secret_hash,
            role=new.role,
            created_at=now,
            rotated_at=None,
            revoked_at=None,
        )
        stored = astuple(replace(record, models=dumps(list(new.models)) if new.models is not None else None))
        with self._db.write() as conn:
            conn.execute(f"INSERT INTO access_keys ({KEY.select}) VALUES ({', '.join('?' * len(stored))})", stored)
            conn.execute(_SET_KEYS_REQUIRED, (now,))
        return record, issued.token

    def list_keys(self, tenant: str | None = None) -> list[KeyRecord]:
        with self._db.read() as conn:
            rows = conn.execute(
                f"SELECT {KEY.select} FROM access_keys WHERE (? IS NULL OR tenant = ?) ORDER BY created_at, id",
                (tenant, tenant),
            ).fetchall()
        return [KEY(row) for row in rows]

    def get_key(self, key_id: str) -> KeyRecord | None:
        with self._db.read() as conn:
            return KEY.by_id(conn, "access_keys", key_id)

    def revoke_key(self, key_id: str, now: int) -> KeyRecord | None:
        with self._db.write() as conn:
            conn.execute("UPDATE access_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (now, key_id))
        return self.get_key(key_id)

    def rotate_key(self, key_id: str, now: int) -> tuple[KeyRecord, str] | None:
        new = keys.issue(key_id)
        with self._db.write() as conn:
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
        with self._db.read() as conn:
            return conn.execute("SELECT COUNT(*) FROM access_keys WHERE revoked_at IS NULL").fetchone()[0]

    # --- tenants

    def set_tenant(self, tenant: TenantRecord, now: int) -> TenantRecord:
        with self._db.write() as conn:
            conn.execute(
                "INSERT INTO access_tenants (name, rpm, tpm, created_at, user_rpm, user_tpm) VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET rpm = excluded.rpm, tpm = excluded.tpm,"
                " user_rpm = excluded.user_rpm, user_tpm = excluded.user_tpm",
                (tenant.name, tenant.rpm, tenant.tpm, now, tenant.user_rpm, tenant.user_tpm),
            )
        return tenant

    def list_tenants(self) -> list[TenantRecord]:
        with self._db.read() as conn:
            return [TENANT(row) for row in conn.execute(f"SELECT {TENANT.select} FROM access_tenants").fetchall()]

    def snapshot(self) -> KeySnapshot:
        """Read in one transaction: keys, tenants and the flag agree with each other."""
        with self._db.read() as conn:
            rows = conn.execute(f"SELECT {KEY.select} FROM access_keys WHERE revoked_at IS NULL").fetchall()
            tenant_rows = conn.execute(f"SELECT {TENANT.select} FROM access_tenants").fetchall()
            required = conn.execute(_READ_KEYS_REQUIRED).fetchone()[0] > 0
        active = {record.id: record for record in map(KEY, rows)}
        tenants = {record.name: record for record in map(TENANT, tenant_rows)}
        return KeySnapshot(active, tenants, len(active), required)

    # --- usage

    @retried
    def add_usage(self, deltas: Iterable[UsageDelta]) -> None:
        """Upserts adding to the stored counts."""
        # Sorted: concurrent flushes of several replicas lock the same rows in the same order (no deadlock).
        rows = sorted(
            (d.day, d.tenant, d.key_id, d.model, d.user, d.price, *(getattr(d, c) for c in _COUNTS)) for d in deltas
        )
        if not rows:
            return
        added = ", ".join(f"{c} = u.{c} + excluded.{c}" for c in _COUNTS)
        with self._db.write() as conn:
            conn.executemany(
                f"INSERT INTO access_usage AS u (day, tenant, key_id, model, end_user, price, {', '.join(_COUNTS)})"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                f" ON CONFLICT (day, tenant, key_id, model, end_user, price) DO UPDATE SET {added}",
                rows,
            )

    def usage(self, query: UsageQuery) -> list[UsageRow]:
        """Rows per (day, tenant, key, model), or per (day, tenant, key, model, user) when `group_by_user`. Each
        row's cost sums its tokens (interactive and job) at the prices they were recorded at."""
        group = _GROUP + (", end_user" if query.group_by_user else "")
        sums = ", ".join(f"SUM({c})" for c in _COUNTS)
        with self._db.read() as conn:
            rows = conn.execute(
                f"SELECT {group}, price, {sums} FROM access_usage"
                " WHERE (? IS NULL OR tenant = ?) AND (? IS NULL OR day >= ?) AND (? IS NULL OR day <= ?)"
                f" GROUP BY {group}, price ORDER BY {group}, price",
                (query.tenant, query.tenant, query.since, query.since, query.until, query.until),
            ).fetchall()
        return _priced_rows(rows, query.group_by_user)


def _priced_rows(rows: Sequence[Sequence[Any]], group_by_user: bool) -> list[UsageRow]:
    """One report row per group, from the database's rows per (group, price): counts added, each price's tokens
    costed at that price."""
    width = 5 if group_by_user else 4
    merged: dict[tuple, UsageRow] = {}
    for row in rows:
        group, price = tuple(row[:width]), row[width]
        counts = dict(zip(_COUNTS, (int(v) for v in row[width + 1 :]), strict=True))
        spent = cost(counts["tokens"] + counts["job_tokens"], price)
        before = merged.get(group)
        if before is None:
            merged[group] = UsageRow(*group[:4], **counts, user=group[4] if group_by_user else "", cost=spent)
            continue
        added = {c: getattr(before, c) + counts[c] for c in _COUNTS}
        merged[group] = replace(before, **added, cost=before.cost + spent)
    return list(merged.values())
