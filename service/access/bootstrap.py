"""The first admin key from the deployment's secrets: `EMBED_ADMIN_KEY` (the key itself) or `EMBED_ADMIN_KEY_FILE`
(a mounted secret file holding it), so a container can start keyed on a public address without a manual step.

The key must have the form the server issues (`sk-<12 hex>-<43+ letters or digits>`; `embedgate-admin keys
generate` prints a fresh one). It is stored as its hash only, like every key, under tenant `ops`, name `bootstrap`.
Idempotent: on a restart (or on every replica) the key is found by its id and left alone; a revoked bootstrap key
stays revoked, a rotated one keeps its new secret. The key is never logged or printed: only its id, which is not secret.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from service.access import keys
from service.access.records import NewKey
from service.access.store import AccessStore
from service.config import Settings
from service.stores import open_access_store

KEY_VARIABLE = "EMBED_ADMIN_KEY"
FILE_VARIABLE = "EMBED_ADMIN_KEY_FILE"
SECRET_VARIABLES = (KEY_VARIABLE, FILE_VARIABLE)
TENANT = "ops"
NAME = "bootstrap"


@dataclass(frozen=True)
class Outcome:
    """What bootstrapping did, in words safe to log (the key id, never the key)."""

    key_id: str
    created: bool
    message: str


def configured_key(environ: Mapping[str, str]) -> tuple[str, str] | None:
    """(the key, where it came from) or None when neither variable is set. ValueError: both set, unreadable file."""
    inline, path = environ.get(KEY_VARIABLE, "").strip(), environ.get(FILE_VARIABLE, "").strip()
    if inline and path:
        raise ValueError(f"set {KEY_VARIABLE} or {FILE_VARIABLE}, not both")
    if path:
        try:
            return Path(path).read_text().strip(), f"{FILE_VARIABLE} ({path})"
        except OSError as exc:
            raise ValueError(f"{FILE_VARIABLE}: cannot read {path}: {exc.strerror}") from None
    return (inline, KEY_VARIABLE) if inline else None


def ensure_admin_key(store: AccessStore, token: str, source: str) -> Outcome:
    """The key is in the store, as an admin key: created if absent, left alone if present."""
    issued = keys.from_token(token)
    if issued is None:
        raise ValueError(
            f"{source} is not a key of the form sk-<12 hex>-<43 or more letters and digits> "
            "(embedgate-admin keys generate prints one)"
        )
    existing = store.get_key(issued.key_id)
    if existing is None:
        try:
            store.create_key(NewKey(TENANT, NAME, admin=True), int(time.time()), issued)
        except Exception:  # another replica created it first: fine if it is there now
            existing = store.get_key(issued.key_id)
            if existing is None:
                raise
        else:
            return Outcome(issued.key_id, True, f"admin key {issued.key_id} created from {source}")
    if existing.revoked_at is not None:
        state = "revoked, left revoked"
    elif existing.secret_hash != issued.secret_hash:
        state = "rotated since, its new secret kept"
    else:
        state = "present"
    return Outcome(issued.key_id, False, f"admin key {issued.key_id} from {source}: {state}")


def bootstrap_admin_key(settings: Settings, environ: Mapping[str, str]) -> Outcome | None:
    """`ensure_admin_key` in the settings' access store for the key the environment names; None when it names none.
    ValueError (or OSError) when the key or the store is unusable: a configuration error."""
    configured = configured_key(environ)
    if configured is None:
        return None
    store = open_access_store(settings)
    try:
        return ensure_admin_key(store, *configured)
    finally:
        store.close()


def without_secrets(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment minus the bootstrap variables: what child processes get once the key is stored."""
    return {name: value for name, value in environ.items() if name not in SECRET_VARIABLES}
