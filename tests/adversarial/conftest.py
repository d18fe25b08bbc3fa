"""The adversarial suite: one server and one Envoy with API keys on, probed as an attacker would.

Every probe asserts the exact answer (status and OpenAI envelope over REST, gRPC code and ErrorInfo reason over
gRPC) and that the service still answers afterwards. The session's server and Envoy RSS is recorded once both are
warm, and the suite fails at its end if either grew by more than 50 MiB: refusing bad input must cost bounded
memory, whatever the input.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from tests.adversarial.probes import Stack, assert_still_serving, rss_mib, warm_up
from tests.serving import ROOT, EnvoyProcess, ServerProcess

MAX_GROWTH_MIB = 50
# Tenants: acme and globex probe each other's resources; capped holds few webhooks; ops is the admin's.
KEYS = {
    "admin": ("--tenant", "ops", "--admin"),
    "acme": ("--tenant", "acme"),
    "globex": ("--tenant", "globex"),
    "capped": ("--tenant", "capped"),
    "revoked": ("--tenant", "acme"),
}
MAX_WEBHOOKS = 3


def _admin(data_dir: Path, *args: str) -> str:
    command = [sys.executable, "-m", "service.admin", "--data-dir", str(data_dir), *args]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    return done.stdout.strip()


@dataclass(frozen=True)
class Memory:
    server_mib: int
    envoy_mib: int


@pytest.fixture(scope="package")
def stack(model_repo: Path, tmp_path_factory: pytest.TempPathFactory):
    data_dir = tmp_path_factory.mktemp("adversarial-data")
    keys = {name: _admin(data_dir, "keys", "create", "--name", name, *flags) for name, flags in KEYS.items()}
    _admin(data_dir, "keys", "revoke", keys["revoked"].split("-")[1])
    args = (
        *("--data-dir", str(data_dir), "--models", "all-minilm-l6-v2"),
        *("--max-webhooks-per-tenant", str(MAX_WEBHOOKS), "--webhook-retry-schedule", "1h"),
    )
    with (
        ServerProcess(model_repo, *args) as server,
        EnvoyProcess(server.port, tmp_path_factory.mktemp("adversarial-envoy")) as envoy,
        grpc.insecure_channel(server.address, options=[("grpc.max_send_message_length", -1)]) as channel,
        grpc.insecure_channel(f"127.0.0.1:{envoy.port}", options=[("grpc.max_send_message_length", -1)]) as gateway,
    ):
        stack = Stack(server, envoy, channel, gateway, keys, data_dir)
        warm_up(stack)
        before = Memory(rss_mib(server.proc.pid), rss_mib(envoy.proc.pid))
        yield stack
        after = Memory(rss_mib(server.proc.pid), rss_mib(envoy.proc.pid))
        assert after.server_mib - before.server_mib <= MAX_GROWTH_MIB, (before, after)
        assert after.envoy_mib - before.envoy_mib <= MAX_GROWTH_MIB, (before, after)


@pytest.fixture(autouse=True)
def still_serving_after(stack: Stack):
    """After every probe: the service still answers (health, and a keyed call on each port)."""
    yield
    assert_still_serving(stack)
