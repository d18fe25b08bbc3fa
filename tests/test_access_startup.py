"""Safe defaults: no API keys means loopback only, for the server and for `make run`'s gateway; keys are hashed."""

from __future__ import annotations

import json
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from dataclasses import dataclass

import grpc
import pytest

from service._gen.embeddings.v1 import embeddings_pb2 as pb
from service._gen.embeddings.v1 import embeddings_pb2_grpc as pb_grpc
from service.access.control import OpenMode
from service.access.limits import format_duration
from service.access.records import KeySnapshot, NewKey
from service.stores.sqlite import SqliteAccessStore, SqliteJobStore
from tests.serving import ROOT, ServerProcess, free_port, http


def run(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


def admin(data_dir, *args: str) -> subprocess.CompletedProcess:
    done = run("service.admin", "--data-dir", str(data_dir), *args)
    assert done.returncode == 0, done.stderr
    return done


@dataclass(frozen=True)
class Gateway:
    base_url: str


def _status(gateway: Gateway, method: str, path: str, body: dict | None, headers: dict) -> int | None:
    try:
        return http(gateway, method, path, body, headers)[0]
    except OSError:
        return None  # not listening yet


def wait_until(predicate, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError("condition not met in time")


def test_server_refuses_a_public_address_without_keys(tmp_path, model_repo):
    done = run(
        "service", "--host", "0.0.0.0", "--port", "0", "--data-dir", str(tmp_path), "--model-repo", str(model_repo)
    )
    assert done.returncode == 2
    assert "refusing to listen on 0.0.0.0 without API keys" in done.stderr and "--allow-open" in done.stderr
    assert "loaded" not in done.stderr  # refused before any model was loaded


def test_gateway_refuses_a_public_http_host_without_keys(tmp_path, model_repo):
    args = ("--http-host", "0.0.0.0", "--http-port", str(free_port()), "--admin-port", "0")
    done = run("gateway.run", *args, "--port", str(free_port()), "--data-dir", str(tmp_path))
    assert done.returncode == 2 and "refusing to listen on 0.0.0.0 without API keys" in done.stderr


def test_a_key_or_allow_open_lifts_the_refusal_check():
    none, one = KeySnapshot({}, {}, 0), KeySnapshot({}, {}, 1, keys_required=True)
    assert OpenMode(("0.0.0.0",), allow_open=False).refusal(none) is not None
    assert OpenMode(("127.0.0.1", "0.0.0.0"), allow_open=False).refusal(none) is not None  # Envoy's host counts too
    assert OpenMode(("0.0.0.0",), allow_open=False).refusal(one) is None
    assert OpenMode(("0.0.0.0",), allow_open=True).refusal(none) is None
    assert OpenMode(("127.0.0.1", "::1", "localhost"), allow_open=False).refusal(none) is None


def test_open_mode_is_a_deliberate_choice():
    loopback, public = OpenMode(("127.0.0.1", "[::1]"), False), OpenMode(("127.0.0.1", "0.0.0.0"), False)
    never, revoked, active = (
        KeySnapshot({}, {}, 0),
        KeySnapshot({}, {}, 0, keys_required=True),
        KeySnapshot({}, {}, 1, keys_required=True),
    )
    assert loopback.serves_open(never)  # a fresh local install
    assert not loopback.serves_open(revoked)  # every key revoked: closed, not open
    assert not public.serves_open(never)  # any listener off loopback (gRPC or REST)
    assert not loopback.serves_open(active) and not OpenMode(("0.0.0.0",), True).serves_open(active)
    assert OpenMode(("0.0.0.0",), True).serves_open(revoked)  # allow_open: on purpose


def test_a_store_that_held_a_key_remembers_it(tmp_path):
    store = SqliteAccessStore.in_data_dir(tmp_path)
    assert not store.snapshot().keys_required
    record, _ = store.create_key(NewKey("acme", "ci"), 1)
    store.revoke_key(record.id, now=2)
    store.close()
    reopened = SqliteAccessStore.in_data_dir(tmp_path)
    snapshot = reopened.snapshot()
    reopened.close()
    assert snapshot.active_keys == 0 and snapshot.keys_required


def test_a_store_from_before_the_flag_that_holds_keys_requires_them(tmp_path):
    store = SqliteAccessStore.in_data_dir(tmp_path)
    store.create_key(NewKey("acme", "ci"), 1)
    store.close()
    with sqlite3.connect(tmp_path / "jobs.sqlite3") as conn:
        conn.execute("DROP TABLE access_flags")  # as a store written by the previous version
    reopened = SqliteAccessStore.in_data_dir(tmp_path)
    assert reopened.snapshot().keys_required
    reopened.close()


def test_revoking_the_last_key_closes_a_public_gateway(tmp_path, model_repo):
    """The issue's reproduction: REST on 0.0.0.0 (gRPC on loopback), one key, revoked while running -> 401, not open."""
    token = admin(tmp_path, "keys", "create", "--tenant", "ops", "--name", "root", "--admin").stdout.strip()
    http_port = free_port()
    command = [
        *(sys.executable, "-m", "gateway.run", "--http-host", "0.0.0.0", "--http-port", str(http_port)),
        *("--admin-port", "0", "--port", str(free_port()), "--data-dir", str(tmp_path)),
        *("--model-repo", str(model_repo), "--models", "all-minilm-l6-v2"),
    ]
    gateway = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = Gateway(f"http://127.0.0.1:{http_port}")
    try:
        embedding = {"model": "all-minilm-l6-v2", "input": "x"}
        bearer = {"authorization": f"Bearer {token}"}
        wait_until(lambda: _status(base, "POST", "/v1/embeddings", embedding, bearer) == 200)
        key_id = token.split("-")[1]
        admin(tmp_path, "keys", "revoke", key_id)
        wait_until(lambda: _status(base, "POST", "/v1/embeddings", embedding, bearer) == 401)  # the server saw it
        for method, path, body in [
            ("POST", "/v1/embeddings", embedding),
            ("GET", "/metrics", None),
            ("POST", "/v1/webhooks", {"url": "https://example.com/hook"}),
        ]:
            status, _, raw = http(base, method, path, body)
            assert status == 401, (path, raw)
            assert json.loads(raw)["error"]["code"] == "invalid_api_key"
    finally:
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(60)


def test_a_loopback_server_whose_keys_were_all_revoked_refuses_everyone(tmp_path, model_repo):
    record = admin(tmp_path, "keys", "create", "--tenant", "ops", "--name", "root").stdout.strip()
    admin(tmp_path, "keys", "revoke", record.split("-")[1])
    args = ("--data-dir", str(tmp_path), "--models", "all-minilm-l6-v2")
    with ServerProcess(model_repo, *args) as server, grpc.insecure_channel(server.address) as channel:
        with pytest.raises(grpc.RpcError) as caught:
            pb_grpc.EmbeddingServiceStub(channel).Embed(pb.EmbedRequest(model="all-minilm-l6-v2", inputs=["x"]))
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "no active API key" in server.log and "running open" not in server.log


def test_the_gateways_exit_2_with_one_line_when_postgresql_is_unreachable(tmp_path):
    unreachable = f"postgresql://nobody:secret-pw@127.0.0.1:{free_port()}/none"
    for module in ("gateway.run", "gateway.cluster"):
        done = run(module, "--http-port", str(free_port()), "--admin-port", "0", "--store-url", unreachable)
        assert done.returncode == 2, (module, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "cannot connect to the PostgreSQL store" in lines[0], done.stderr
        assert "secret-pw" not in done.stderr and "Traceback" not in done.stderr


def test_the_loopback_server_without_keys_says_it_runs_open(server: ServerProcess):
    assert "running open (no API keys)" in server.log


def test_keys_are_stored_hashed(tmp_path):
    store = SqliteAccessStore.in_data_dir(tmp_path)
    record, token = store.create_key(NewKey("acme", "ci"), 0)
    store.close()
    secret = token.split("-", 2)[2]
    with sqlite3.connect(tmp_path / "jobs.sqlite3") as conn:
        dump = "\n".join(conn.iterdump())
    assert record.id in dump and secret not in dump and token not in dump


def test_reset_durations_use_openais_format():
    cases = {0: "0s", 0.012: "12ms", 1: "1s", 1.5: "1.5s", 59.72: "59.72s", 360: "6m0s", 3723: "1h2m3s"}
    assert {seconds: format_duration(seconds) for seconds in cases} == cases


def test_running_open_key_management_still_needs_an_admin_key(gateway):
    status, _, raw = http(gateway, "POST", "/v1/admin/keys", {"tenant": "t", "name": "n"})
    assert status == 403 and json.loads(raw)["error"]["code"] == "insufficient_permissions"
    assert http(gateway, "POST", "/v1/embeddings", {"model": "all-minilm-l6-v2", "input": "open"})[0] == 200


def test_the_store_files_are_private(tmp_path):
    """Key hashes, webhook secrets and jobs: the data directory we create is 0700, the database and its WAL 0600."""
    data_dir = tmp_path / "new" / "data"
    access = SqliteAccessStore.in_data_dir(data_dir)
    jobs = SqliteJobStore(data_dir / "jobs.sqlite3")
    access.create_key(NewKey("acme", "ci"), 1)
    jobs.create_webhook("acme", "https://example.com/hook", "", "whsec_c2VjcmV0", now=1)
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in data_dir.iterdir()}
    access.close()
    jobs.close()
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    assert modes == {"jobs.sqlite3": 0o600, "jobs.sqlite3-wal": 0o600, "jobs.sqlite3-shm": 0o600}


def test_an_existing_store_readable_by_others_is_tightened(tmp_path):
    SqliteAccessStore.in_data_dir(tmp_path).close()
    database = tmp_path / "jobs.sqlite3"
    database.chmod(0o644)
    SqliteAccessStore.in_data_dir(tmp_path).close()
    assert stat.S_IMODE(database.stat().st_mode) == 0o600
