"""What a call may do, decided in one place: who it is (API key), which models, how fast, and what it used.

`AccessControl` keeps a snapshot of the active keys and tenant limits, re-read from the store every second (so the
admin CLI's changes apply to a running server), the rate limiter and the usage meter. Whether calls without a key
are served is `OpenMode`'s decision, taken again at every refresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import grpc

from service import errors
from service.access import keys
from service.access.limits import (
    _EPSILON,
    Kind,
    LocalRateLimiter,
    Quota,
    RateLimiter,
    Refusal,
    rate_headers,
    retry_headers,
)
from service.access.records import DEFAULT_TENANT, KeyRecord, KeySnapshot, TenantRecord
from service.access.store import AccessStore
from service.access.usage import UsageMeter
from service.config import setting

log = logging.getLogger(__name__)

REFRESH_S = 1.0
JOB_WAIT_STEP_S = 1.0
# The longest `user` (OpenAI's end-user id) a call may name: it keys rate-limit buckets and usage rows. OpenAI sets
# no limit; ids are usually hashes or UUIDs, far shorter.
MAX_USER_CHARS = 256


@dataclass(frozen=True)
class Limits:
    """Defaults per minute (0: unlimited) and the share of a bucket that async jobs leave to interactive calls.
    `user_rpm`/`user_tpm`: each end user's limits within a key (0: none); `usage_by_user`: record the end user in
    usage for every key (else only for keys with per-user limits)."""

    key_rpm: int = setting("rate_limit_rpm", 0)
    key_tpm: int = setting("rate_limit_tpm", 0)
    tenant_rpm: int = setting("tenant_rate_limit_rpm")
    tenant_tpm: int = setting("tenant_rate_limit_tpm")
    job_reserve: float = setting("job_rate_limit_reserve")
    user_rpm: int = setting("user_rate_limit_rpm")
    user_tpm: int = setting("user_rate_limit_tpm")
    usage_by_user: bool = False


@dataclass(frozen=True)
class Principal:
    """Who is calling: set per call by the interceptor, read by the servicers. A call made for an end user (OpenAI's
    `user`) is its key's principal `as_user` that user: the user's own bucket joins the quotas."""

    tenant: str
    # None while the server runs open (no keys).
    key_id: str | None
    admin: bool
    # Model ids or aliases the key may use; None: all.
    models: tuple[str, ...] | None
    quotas: tuple[Quota, ...]
    # Requests and tokens per minute of each end user of the key (0: no limit).
    user_rpm: int = 0
    user_tpm: int = 0
    # Whether usage records the end user (the key has per-user limits, or the server records users for all keys).
    record_users: bool = False
    # The end user this call is made for ("" none).
    user: str = ""

    def may_use(self, names: list[str]) -> bool:
        """Whether any of a model's names (id and aliases) is among the key's models."""
        if self.models is None:
            return True
        allowed = {m.casefold() for m in self.models}
        return any(name.casefold() in allowed for name in names)

    def as_user(self, user: str) -> Principal:
        """This caller acting for end user `user`: with per-user limits, the (key, user) bucket joins the quotas,
        charged with the others (all or nothing) and reported in the headers when tightest. No user: unchanged."""
        if not user or self.user:
            return self
        quotas = self.quotas
        if self.key_id is not None and (self.user_rpm > 0 or self.user_tpm > 0):
            quotas = (*quotas, Quota("user", user, self.user_rpm, self.user_tpm, parent=self.key_id))
        return replace(self, quotas=quotas, user=user)

    @property
    def usage_user(self) -> str:
        """The user this call's usage is recorded under ("" when the key does not record users)."""
        return self.user if self.record_users else ""


OPEN_PRINCIPAL = Principal(DEFAULT_TENANT, None, True, None, ())


def checked_user(user: str) -> str:
    """OpenAI's `user`, if it is short enough to key buckets and usage rows by; else 400 (`user`)."""
    if len(user) > MAX_USER_CHARS:
        raise errors.invalid_input(
            f"'user' must be at most {MAX_USER_CHARS} characters, got {len(user)}.", field="user"
        )
    return user


def is_loopback(host: str) -> bool:
    host = host.strip().strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class OpenMode:
    """Whether calls without an API key are served: decided here and nowhere else.

    The service runs open (every caller is an admin of tenant `default`) only while no key is active, and only on
    purpose: with `allow_open`, or when every address a caller can reach it on (the gRPC listener and any gateway
    in front of it) is loopback and the store never held a key. So revoking the last key closes the service (401
    to everything) instead of opening it, and a REST listener on 0.0.0.0 counts as much as the gRPC one.
    """

    # Every address the service is reachable on: the gRPC host and the gateway's (Envoy's) REST/gRPC host(s).
    listeners: tuple[str, ...]
    allow_open: bool

    def public_listeners(self) -> list[str]:
        return [host for host in self.listeners if not is_loopback(host)]

    def serves_open(self, snapshot: KeySnapshot) -> bool:
        if snapshot.active_keys:
            return False
        return self.allow_open or (not snapshot.keys_required and not self.public_listeners())

    def refusal(self, snapshot: KeySnapshot) -> str | None:
        """Why the service must not start (no active key on a non-loopback address), or None if it may."""
        public = self.public_listeners()
        if snapshot.active_keys or self.allow_open or not public:
            return None
        return (
            f"refusing to listen on {', '.join(public)} without API keys: anyone who can reach it could use it. "
            "Create a key first (python -m service.admin keys create --tenant NAME --name NAME --admin), bind to "
            "127.0.0.1, or set allow_open (--allow-open true) to run open on purpose."
        )


def unauthenticated(message: str) -> errors.ApiError:
    return errors.ApiError(grpc.StatusCode.UNAUTHENTICATED, message, "invalid_api_key")


def permission_denied(message: str) -> errors.ApiError:
    return errors.ApiError(grpc.StatusCode.PERMISSION_DENIED, message, "insufficient_permissions")


def rate_limited(refusal: Refusal) -> errors.ApiError:
    metadata = {
        "scope": refusal.quota.scope,
        "limit_type": refusal.kind,
        "limit": str(refusal.limit),
        "requested": str(refusal.requested),
    }
    if refusal.too_large:
        # Waiting never helps: 400, which clients do not retry.
        return errors.ApiError(
            grpc.StatusCode.INVALID_ARGUMENT,
            refusal.message,
            "max_tokens_per_request",
            metadata=metadata,
            headers={"x-should-retry": "false"},
        )
    return errors.ApiError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        refusal.message,
        "rate_limit_exceeded",
        metadata=metadata,
        headers=retry_headers(refusal.retry_after_s),
    )


def _first(*values: int | None) -> int:
    """The first value that is set (the last one always is)."""
    return next(value for value in values if value is not None)


def _tenant_quota(name: str, tenant: TenantRecord | None, limits: Limits) -> Quota:
    rpm = _first(tenant.rpm if tenant else None, limits.tenant_rpm)
    tpm = _first(tenant.tpm if tenant else None, limits.tenant_tpm)
    return Quota("tenant", name, rpm, tpm)


def _principal(key: KeyRecord, tenant: TenantRecord | None, limits: Limits) -> Principal:
    key_quota = Quota("key", key.id, _first(key.rpm, limits.key_rpm), _first(key.tpm, limits.key_tpm))
    # Per-user limits: the key's own, else its tenant's, else the server's.
    user_rpm = _first(key.user_rpm, tenant.user_rpm if tenant else None, limits.user_rpm)
    user_tpm = _first(key.user_tpm, tenant.user_tpm if tenant else None, limits.user_tpm)
    return Principal(
        key.tenant,
        key.id,
        key.admin,
        key.models,
        (key_quota, _tenant_quota(key.tenant, tenant, limits)),
        user_rpm=user_rpm,
        user_tpm=user_tpm,
        record_users=limits.usage_by_user or user_rpm > 0 or user_tpm > 0,
    )


class AccessControl:
    def __init__(
        self,
        store: AccessStore,
        limits: Limits,
        *,
        open_mode: OpenMode,
        limiter: RateLimiter | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.limits = limits
        self.open_mode = open_mode
        self.limiter = limiter or LocalRateLimiter()
        self.meter = UsageMeter(store)
        self._clock = clock
        # Told (tenant, "requests" or "tokens") of every call a limit refuses: the rate-limit metrics hang here.
        self.on_refusal: Callable[[str, str], None] | None = None
        self._keys: dict[str, tuple[str, Principal]] = {}
        self._tenants: dict[str, TenantRecord] = {}
        self._active_keys = 0
        self._open = False
        self._open_principal = replace(OPEN_PRINCIPAL, record_users=limits.usage_by_user)
        self._task: asyncio.Task | None = None
        self.refresh()

    # --- keys

    def refresh(self) -> None:
        """Re-read keys and tenant limits (blocking: run it off the event loop once serving)."""
        self._apply(self.store.snapshot())

    def _apply(self, snapshot: KeySnapshot) -> None:
        self._keys = {
            key_id: (key.secret_hash, _principal(key, snapshot.tenants.get(key.tenant), self.limits))
            for key_id, key in snapshot.keys.items()
        }
        self._tenants = snapshot.tenants
        serves_open = self.open_mode.serves_open(snapshot)
        if self._active_keys and not snapshot.active_keys and not serves_open:
            log.warning("no active API key left: every call is refused until a key is created")
        self._active_keys = snapshot.active_keys
        self._open = serves_open

    @property
    def running_open(self) -> bool:
        return self._open

    @property
    def active_keys(self) -> int:
        return self._active_keys

    def authenticate(self, authorization: str | None) -> Principal:
        """The caller's principal, or 401 `invalid_api_key`. Never logs or echoes the key (only a mask)."""
        if self._active_keys == 0:
            if self._open:
                return self._open_principal
            raise unauthenticated(
                "This server has no active API keys and does not run open: ask your administrator for a key."
            )
        token = keys.bearer_token(authorization or "")
        if token is None:
            raise unauthenticated(
                "You didn't provide an API key. You need to provide your API key in an Authorization header "
                "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
            )
        parts = keys.split(token)
        entry = self._keys.get(parts[0]) if parts else None
        secret = parts[1] if parts else token
        if not keys.matches(secret, entry[0] if entry else None) or entry is None:
            raise unauthenticated(f"Incorrect API key provided: {keys.mask(token)}. Ask your administrator for a key.")
        return entry[1]

    # --- limits

    async def charge(self, principal: Principal, requests: int = 0, tokens: int = 0) -> None:
        """Charge a call's requests and tokens to every bucket that applies (key, tenant, and the end user's when the
        principal acts for one with per-user limits), all or nothing: a call refused (429 `rate_limit_exceeded`, or
        400 `max_tokens_per_request`) consumes nothing."""
        if not principal.quotas:
            return
        amounts: dict[Kind, int] = {"requests": requests, "tokens": tokens}
        refusal = await self.limiter.acquire(principal.quotas, amounts, self._clock())
        if refusal is not None:
            self._refused(principal, refusal)
            raise rate_limited(refusal)

    def _refused(self, principal: Principal, refusal: Refusal) -> None:
        if self.on_refusal is not None:
            self.on_refusal(principal.tenant, refusal.kind)

    async def headers(self, principal: Principal) -> dict[str, str]:
        if not principal.quotas:
            return {}
        return rate_headers(await self.limiter.state(principal.quotas, self._clock()))

    def job_principal(self, tenant: str, key_id: str | None, user: str = "") -> Principal:
        """Whom an async job of `tenant` (submitted with `key_id`, for end user `user`) runs as, with today's
        limits: the key's principal as that user; the tenant alone once the key is revoked; no limits while
        running open."""
        entry = self._keys.get(key_id) if key_id else None
        if entry is not None:
            return entry[1].as_user(user)
        if self._active_keys == 0:
            return replace(self._open_principal, tenant=tenant, key_id=key_id, user=user)
        quota = _tenant_quota(tenant, self._tenants.get(tenant), self.limits)
        return Principal(tenant, key_id, False, None, (quota,), record_users=self.limits.usage_by_user, user=user)

    def job_quotas(self, tenant: str, key_id: str | None, user: str = "") -> tuple[Quota, ...]:
        """The buckets an async job of `tenant` (submitted with `key_id`, for `user`) draws on; none running open."""
        return self.job_principal(tenant, key_id, user).quotas

    async def admit_job_tokens(self, tenant: str, key_id: str | None, tokens: int, user: str = "") -> None:
        """Charge a job chunk's tokens from the room above the interactive reserve, in parts when the chunk is larger
        than that room, waiting for each: the buckets are never overdrawn and interactive calls always find the
        reserve. Never fails; the limits are re-read at every step (a key or tenant changed meanwhile applies)."""
        remaining = float(tokens)
        while remaining > _EPSILON:
            quotas = self.job_quotas(tenant, key_id, user)
            charged, wait = await self.limiter.acquire_background(
                quotas, remaining, self.limits.job_reserve, self._clock()
            )
            remaining -= charged
            if remaining > _EPSILON and charged <= 0:
                await asyncio.sleep(min(wait, JOB_WAIT_STEP_S))

    # --- background upkeep

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._upkeep(), name="access-upkeep")

    async def _upkeep(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_S)
            try:
                snapshot = await asyncio.to_thread(self.store.snapshot)
                self._apply(snapshot)
                await asyncio.to_thread(self.meter.flush)
            except Exception:
                log.exception("refreshing API keys or writing usage failed")

    async def stop(self) -> None:
        """Stop the upkeep, write the last usage and close the rate limiter's connections."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await asyncio.to_thread(self.meter.flush)
        await self.limiter.close()
