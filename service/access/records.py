"""The access domain's plain data: API keys (hashed), tenants' limits, usage counts, and the default tenant."""

from __future__ import annotations

from dataclasses import dataclass

# The tenant of calls made without a key (open mode) and of rows written before tenants existed.
DEFAULT_TENANT = "default"


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
