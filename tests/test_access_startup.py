"""Safe defaults: no API keys means loopback only, for the server and for `make run`'s gateway; keys are hashed."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

from service.access.limits import format_duration
from service.access.store import SqliteAccessStore
from tests.serving import ROOT, ServerProcess, free_port, http


def run(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


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


def test_a_key_or_allow_open_lifts_the_refusal_check(tmp_path):
    from service.access.control import open_mode_refusal

    assert open_mode_refusal(["0.0.0.0"], 0, allow_open=False) is not None
    assert open_mode_refusal(["0.0.0.0"], 1, allow_open=False) is None
    assert open_mode_refusal(["0.0.0.0"], 0, allow_open=True) is None
    assert open_mode_refusal(["127.0.0.1", "::1", "localhost"], 0, allow_open=False) is None


def test_the_loopback_server_without_keys_says_it_runs_open(server: ServerProcess):
    assert "running open (no API keys)" in server.log


def test_keys_are_stored_hashed(tmp_path):
    store = SqliteAccessStore.in_data_dir(tmp_path)
    record, token = store.create_key("acme", "ci", now=0)
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
