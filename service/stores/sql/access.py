"""Tenants, API keys (only their hashes), usage counts and the flag that keys are required."""

from __future__ import annotations

from collections.abc import Iterable

from service.access import keys
from service.access.records import KeyRecord, KeySnapshot, TenantRecord, UsageDelta, UsageRow
from service.stores.sql.database import Database, Store, dumps, retried
from service.stores.sql.rows import KEY, TENANT, USAGE

_SET_KEYS_REQUIRED = "INSERT INTO access_flags (name, set_at) VALUES ('keys_required', ?) ON CONFLICT (name) DO NOTHING"
_READ_KEYS_REQUIRED = "SELECT COUNT(*) FROM access_flags WHERE name = 'keys_required'"
_COUNTS = ("requests", "tokens", "job_requests", "job_tokens")


class AccessRows(Store):
    """`AccessStore` over a backend's `Database`."""

    _db: Database

    # --- keys

    @retried
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
        with self._db.write() as conn:
            conn.execute(
                f"INSERT INTO access_keys ({KEY.select}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (record.id, tenant, name, record.secret_hash, record.role,
                 dumps(list(models)) if models is not None else None, rpm, tpm, now, None, None),
            )  # fmt: skip
            conn.execute(_SET_KEYS_REQUIRED, (now,))
        return record, new.token

    def list_keys(self, tenant: str | None = None) -> list[KeyRecord]:
        with self._db.read() as conn:
            rows = conn.execute(
                f"SELECT {KEY.select} FROM access_keys WHERE (? IS NULL OR tenant = ?) ORDER BY created_at, id",
                (tenant, tenant),
            ).fetchall()
        return [KEY(row) for row in rows]

    def get_key(self, key_id: str) -> KeyRecord | None:
        with self._db.read() as conn:
            row = conn.execute(f"SELECT {KEY.select} FROM access_keys WHERE id = ?", (key_id,)).fetchone()
        return KEY(row) if row is not None else None

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

    def set_tenant(self, name: str, rpm: int | None, tpm: int | None, now: int) -> TenantRecord:
        with self._db.write() as conn:
            conn.execute(
                "INSERT INTO access_tenants (name, rpm, tpm, created_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET rpm = excluded.rpm, tpm = excluded.tpm",
                (name, rpm, tpm, now),
            )
        return TenantRecord(name, rpm, tpm)

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
        rows = sorted((d.day, d.tenant, d.key_id, d.model, *(getattr(d, c) for c in _COUNTS)) for d in deltas)
        if not rows:
            return
        added = ", ".join(f"{c} = u.{c} + excluded.{c}" for c in _COUNTS)
        with self._db.write() as conn:
            conn.executemany(
                f"INSERT INTO access_usage AS u (day, tenant, key_id, model, {', '.join(_COUNTS)})"
                f" VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (day, tenant, key_id, model) DO UPDATE SET {added}",
                rows,
            )

    def usage(self, tenant: str | None = None, since: str | None = None, until: str | None = None) -> list[UsageRow]:
        """Rows per (day, tenant, key, model); `since`/`until` are inclusive UTC days (YYYY-MM-DD)."""
        with self._db.read() as conn:
            rows = conn.execute(
                f"SELECT {USAGE.select} FROM access_usage"
                " WHERE (? IS NULL OR tenant = ?) AND (? IS NULL OR day >= ?) AND (? IS NULL OR day <= ?)"
                " ORDER BY day, tenant, key_id, model",
                (tenant, tenant, since, since, until, until),
            ).fetchall()
        return [USAGE(row) for row in rows]
