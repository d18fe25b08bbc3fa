"""The first admin key from EMBED_ADMIN_KEY / EMBED_ADMIN_KEY_FILE (service/access/bootstrap.py), on the real store."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.access import keys
from service.access.bootstrap import bootstrap_admin_key, without_secrets
from service.config import Settings


def stored(settings: Settings):
    from service.stores import open_access_store

    store = open_access_store(settings)
    try:
        return store.list_keys()
    finally:
        store.close()


def test_created_once_hashed_then_left_alone_even_when_revoked_or_rotated(tmp_path: Path) -> None:
    settings = Settings(data_dir=str(tmp_path))
    token = keys.issue().token
    environ = {"EMBED_ADMIN_KEY": token}
    first = bootstrap_admin_key(settings, environ)
    assert first is not None and first.created and token not in first.message
    (key,) = stored(settings)
    assert (key.id, key.role, key.tenant) == (keys.split(token)[0], "admin", "ops")
    assert key.secret_hash == keys.hash_secret(keys.split(token)[1])
    again = bootstrap_admin_key(settings, environ)
    assert again is not None and not again.created and again.message.endswith("present")

    from service.stores import open_access_store

    store = open_access_store(settings)
    try:
        store.rotate_key(key.id, now=1)
        assert bootstrap_admin_key(settings, environ).message.endswith("rotated since, its new secret kept")
        store.revoke_key(key.id, now=2)
        assert bootstrap_admin_key(settings, environ).message.endswith("revoked, left revoked")
    finally:
        store.close()
    (key,) = stored(settings)
    assert key.revoked_at is not None


def test_from_a_file_and_the_errors(tmp_path: Path) -> None:
    settings = Settings(data_dir=str(tmp_path))
    secret = tmp_path / "admin_key"
    secret.write_text(keys.issue().token + "\n")
    assert bootstrap_admin_key(settings, {"EMBED_ADMIN_KEY_FILE": str(secret)}).created
    assert bootstrap_admin_key(settings, {}) is None
    with pytest.raises(ValueError, match="not both"):
        bootstrap_admin_key(settings, {"EMBED_ADMIN_KEY_FILE": str(secret), "EMBED_ADMIN_KEY": "x"})
    with pytest.raises(ValueError, match="cannot read"):
        bootstrap_admin_key(settings, {"EMBED_ADMIN_KEY_FILE": str(tmp_path / "missing")})
    weak = "sk-0123456789ab-" + "a" * 20  # well-formed, but less secret than the server's own keys
    with pytest.raises(ValueError, match="is not a key") as refused:
        bootstrap_admin_key(settings, {"EMBED_ADMIN_KEY": weak})
    assert weak not in str(refused.value)
    assert without_secrets({"EMBED_ADMIN_KEY": "x", "EMBED_ADMIN_KEY_FILE": "y", "EMBED_PORT": "1"}) == {
        "EMBED_PORT": "1"
    }
