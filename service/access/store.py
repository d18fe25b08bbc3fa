"""The interface of the access store: tenants, API keys (hashed), usage, and the flag that keys are required.

The admin CLI writes the store while the server runs; the server re-reads the keys every second, so a key created,
revoked or rotated by the CLI takes effect without a restart. The backends (the SQLite file beside the jobs, or
PostgreSQL for several replicas) are in `service.stores`; the records in `records`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from service.access import keys
from service.access.records import KeyRecord, KeySnapshot, NewKey, TenantRecord, UsageDelta, UsageQuery, UsageRow


class AccessStore(Protocol):
    def create_key(self, new: NewKey, now: int, issued: keys.IssuedKey | None = None) -> tuple[KeyRecord, str]:
        """The new key and its token (`sk-...`): the only time the token exists outside the caller. `issued`: a key
        made elsewhere (an operator's bootstrap key, service/access/bootstrap.py) instead of a fresh one."""
        ...

    def list_keys(self, tenant: str | None = None) -> list[KeyRecord]: ...

    def get_key(self, key_id: str) -> KeyRecord | None: ...

    def revoke_key(self, key_id: str, now: int) -> KeyRecord | None: ...

    def rotate_key(self, key_id: str, now: int) -> tuple[KeyRecord, str] | None:
        """A new secret for an active key (same id, tenant and limits); the old one stops working."""
        ...

    def set_tenant(self, tenant: TenantRecord, now: int) -> TenantRecord:
        """A tenant's own limits (None: the server's default), and its keys' per-user defaults, set as a whole."""
        ...

    def list_tenants(self) -> list[TenantRecord]: ...

    def snapshot(self) -> KeySnapshot: ...

    def active_key_count(self) -> int: ...

    def add_usage(self, deltas: Iterable[UsageDelta]) -> None: ...

    def usage(self, query: UsageQuery) -> list[UsageRow]:
        """Per day, tenant, key and model (and end user, when `group_by_user`), with its cost."""
        ...

    def close(self) -> None: ...
