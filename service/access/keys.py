"""API keys: `sk-<key id>-<secret>`, 256 random bits of secret, stored as a SHA-256 hash, never in clear.

The key id is not secret: it finds the stored hash (and names the key in logs, usage and the admin API); the secret
is then compared in constant time. A plain SHA-256 is enough (no salt or slow hash): a 256-bit random secret cannot
be guessed from its hash, unlike a password.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
from dataclasses import dataclass

KEY_PREFIX = "sk-"
KEY_ID_BYTES = 6  # 12 hex characters
# 43 letters and digits: log2(62) * 43 = 256 bits. No '-' or '_', so a key selects with one double-click.
SECRET_ALPHABET = string.ascii_letters + string.digits
SECRET_LENGTH = 43
_DUMMY_HASH = hashlib.sha256(b"no such key").hexdigest()


@dataclass(frozen=True)
class IssuedKey:
    """A key as created: `token` is shown once and never stored; `secret_hash` is what the store keeps."""

    key_id: str
    token: str
    secret_hash: str


def new_key_id() -> str:
    return secrets.token_hex(KEY_ID_BYTES)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def issue(key_id: str | None = None) -> IssuedKey:
    """A fresh key (a new secret for `key_id` when rotating)."""
    key_id = key_id or new_key_id()
    secret = "".join(secrets.choice(SECRET_ALPHABET) for _ in range(SECRET_LENGTH))
    return IssuedKey(key_id, f"{KEY_PREFIX}{key_id}-{secret}", hash_secret(secret))


def from_token(token: str) -> IssuedKey | None:
    """A key made outside the server (an operator's bootstrap key) in the form `issue` makes, with at least as much
    secret; None if it is not one."""
    parts = split(token)
    if parts is None:
        return None
    key_id, secret = parts
    well_formed = all(c in string.hexdigits.lower() for c in key_id) and len(secret) >= SECRET_LENGTH
    if not well_formed or any(c not in SECRET_ALPHABET for c in secret):
        return None
    return IssuedKey(key_id, token, hash_secret(secret))


def split(token: str) -> tuple[str, str] | None:
    """(key id, secret) of a well-formed key, else None."""
    if not token.startswith(KEY_PREFIX):
        return None
    key_id, sep, secret = token[len(KEY_PREFIX) :].partition("-")
    if not sep or len(key_id) != 2 * KEY_ID_BYTES or not secret:
        return None
    return key_id, secret


def matches(secret: str, secret_hash: str | None) -> bool:
    """Constant-time check of `secret` against a stored hash; None (no such key) costs the same and fails."""
    expected = secret_hash if secret_hash is not None else _DUMMY_HASH
    return hmac.compare_digest(hash_secret(secret), expected) and secret_hash is not None


def mask(token: str) -> str:
    """What an error message may show of a presented key: its first and last characters only, OpenAI style."""
    if len(token) < 24:
        return "***"
    return f"{token[:6]}***{token[-4:]}"


def bearer_token(authorization: str) -> str | None:
    """The key in an `Authorization: Bearer <key>` header value."""
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()
