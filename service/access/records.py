"""The access domain's plain data: API keys (hashed), tenants' limits, usage counts, and the default tenant."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

# The tenant of calls made without a key (open mode) and of rows written before tenants existed.
DEFAULT_TENANT = "default"


@dataclass(frozen=True)
class NewKey:
    """A key to create (`AccessStore.create_key`): its tenant and name, whether it is an admin's, the models it may
    use (None: every one), its own limits and those of each of its end users (None: the tenant's, else the server's).
    """

    tenant: str
    name: str
    admin: bool = False
    models: tuple[str, ...] | None = None
    rpm: int | None = None
    tpm: int | None = None
    user_rpm: int | None = None
    user_tpm: int | None = None

    def __post_init__(self) -> None:
        if not self.tenant.strip():
            raise ValueError("a key needs a tenant")

    @property
    def role(self) -> str:
        return "admin" if self.admin else "user"


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
    # Limits of each end user (OpenAI's `user`) of the key; None: the tenant's, else the server's defaults.
    user_rpm: int | None = None
    user_tpm: int | None = None

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
    # Defaults for the per-user limits of the tenant's keys; None: the server's.
    user_rpm: int | None = None
    user_tpm: int | None = None


@dataclass(frozen=True)
class UsageLine:
    """What a key (with an end user: for one of them) used of a model on a UTC day: the counts a delta adds to a
    stored line and a report reads back."""

    day: str
    tenant: str
    key_id: str
    model: str
    requests: int = 0
    tokens: int = 0
    job_requests: int = 0
    job_tokens: int = 0
    # The end user (OpenAI's `user`), else "": a delta names one when the key records users, a report when it is
    # grouped by user.
    user: str = ""


@dataclass(frozen=True)
class UsageDelta(UsageLine):
    """Counts to add to one (day, tenant, key, model, user, price) row."""

    # The model's price per million tokens when the tokens were used (exact decimal text), "" when unpriced.
    price: str = ""


@dataclass(frozen=True)
class UsageRow(UsageLine):
    """A line of a usage report, and what it cost at the prices in effect when it was used."""

    cost: Decimal = field(default=Decimal(0))


@dataclass(frozen=True)
class UsageQuery:
    """Which usage a report covers (`AccessStore.usage`): one tenant's (None: all), from `since` to `until`
    (inclusive UTC days, YYYY-MM-DD; None: no bound), with a row per end user when `group_by_user`."""

    tenant: str | None = None
    since: str | None = None
    until: str | None = None
    group_by_user: bool = False


@dataclass(frozen=True)
class KeySnapshot:
    """Everything the server needs to authenticate and limit calls, read in one go."""

    keys: dict[str, KeyRecord]
    tenants: dict[str, TenantRecord]
    active_keys: int
    # A key was ever created in this store (it stays true after every key is revoked).
    keys_required: bool = False
