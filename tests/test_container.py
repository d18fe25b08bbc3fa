"""The container: its command runs Envoy and the server configured by environment, keyed by a bootstrapped admin key.

Docker is not on the test machines, so the image's command is run directly, with the image's own ENV (parsed from
the Dockerfile) and only ports and paths changed: REST and gRPC answer on every port the image exposes, the admin
key from a mounted secret file works (and is stored hashed, once, never logged), a restart changes nothing, and
without a key the image refuses to start on its public addresses. The Dockerfile itself is checked statically.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import signal
import sqlite3
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from service._gen.embeddings.v1 import admin_pb2, admin_pb2_grpc
from service._gen.embeddings.v1 import embeddings_pb2 as pb
from service._gen.embeddings.v1 import embeddings_pb2_grpc as pb_grpc
from service.access import keys
from tests.serving import ROOT, free_port
from tools.k8s_envoy import IMAGE_ROOT

DOCKERFILE = ROOT / "Dockerfile"
MODEL = "all-minilm-l6-v2"


@dataclass
class Stage:
    base: str
    env: dict[str, str]
    cmd: list[str] | None
    expose: set[int]
    instructions: list[str]


def logical_lines(text: str) -> list[str]:
    """Dockerfile instructions with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    return [line.strip() for line in joined.splitlines() if line.strip()]


def stages(text: str) -> list[Stage]:
    result: list[Stage] = []
    for line in logical_lines(text):
        keyword, _, rest = line.partition(" ")
        if keyword == "FROM":
            result.append(Stage(rest.split()[0], {}, None, set(), []))
            continue
        stage = result[-1]
        stage.instructions.append(line)
        if keyword == "ENV":
            stage.env.update(dict(item.split("=", 1) for item in shlex.split(rest)))
        elif keyword == "CMD":
            stage.cmd = json.loads(rest)
        elif keyword == "EXPOSE":
            stage.expose.update(int(port) for port in rest.split())
    return result


@pytest.fixture(scope="module")
def runtime() -> Stage:
    return stages(DOCKERFILE.read_text())[-1]


def test_the_runtime_stage_installs_the_wheel_and_runs_the_gateway(runtime: Stage) -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert runtime.cmd is not None and len(runtime.cmd) == 1
    assert scripts[runtime.cmd[0]] == "gateway.run:main"
    assert runtime.expose == {8080, 50051}
    assert runtime.env["EMBED_HOST"] == runtime.env["EMBED_HTTP_HOST"] == "0.0.0.0"
    assert "USER 10001" in runtime.instructions
    # Only the wheel reaches the runtime stage, never the sources (what runs is what the wheel test checks).
    copies = [line for line in runtime.instructions if line.startswith("COPY")]
    assert all("--from=build" in line for line in copies), copies
    assert any("embedgate-" in line and ".whl" in line and "pip install" in line for line in runtime.instructions)
    # The Kubernetes Envoy ConfigMap points at the files where this image's venv has them.
    python = re.match(r"python:(\d+\.\d+)", runtime.base)
    assert python and f"/opt/embedgate/lib/python{python.group(1)}/site-packages" == IMAGE_ROOT
    assert runtime.env["PATH"].startswith("/opt/embedgate/bin:")


@dataclass
class Container:
    """The image's command, run here: its ports and the admin key it was given."""

    proc: subprocess.Popen
    http_port: int
    grpc_port: int
    log_path: Path

    @property
    def log(self) -> str:
        return self.log_path.read_text()


def image_env(runtime: Stage, **overrides: str) -> dict[str, str]:
    """The image's ENV with ports and paths of this machine; PATH finds the console scripts of this checkout's venv."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBED_")}
    env.update({k: v for k, v in runtime.env.items() if k.startswith("EMBED_")})
    env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
    env.update(overrides)
    return env


def start(runtime: Stage, env: dict[str, str], log_path: Path) -> Container:
    log = log_path.open("a")
    proc = subprocess.Popen(runtime.cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=log_path.parent)
    log.close()
    return Container(proc, int(env["EMBED_HTTP_PORT"]), int(env["EMBED_PORT"]), log_path)


def wait_healthy(container: Container, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert container.proc.poll() is None, container.log
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{container.http_port}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"not healthy in {timeout} s:\n{container.log}")


def stop(container: Container) -> int:
    container.proc.send_signal(signal.SIGTERM)
    try:
        return container.proc.wait(60)
    except subprocess.TimeoutExpired:
        container.proc.kill()
        raise


@pytest.fixture
def settings(runtime: Stage, model_repo: Path, tmp_path: Path) -> tuple[dict[str, str], str]:
    """The image's environment with a mounted secret file holding the first admin key: (env, key)."""
    token = keys.issue().token
    secret = tmp_path / "secrets" / "admin_key"
    secret.parent.mkdir()
    secret.write_text(token + "\n")
    secret.chmod(0o600)
    env = image_env(
        runtime,
        EMBED_HTTP_PORT=str(free_port()),
        EMBED_PORT=str(free_port()),
        EMBED_ADMIN_PORT="0",
        EMBED_MODEL_REPO=str(model_repo),
        EMBED_MODELS=MODEL,
        EMBED_DATA_DIR=str(tmp_path / "data"),
        EMBED_ADMIN_KEY_FILE=str(secret),
    )
    return env, token


@pytest.fixture
def container(runtime: Stage, settings: tuple[dict[str, str], str], tmp_path: Path) -> Iterator[Container]:
    env, _ = settings
    running = start(runtime, env, tmp_path / "container.log")
    try:
        wait_healthy(running)
        yield running
    finally:
        if running.proc.poll() is None:
            stop(running)


def rest_embed(port: int, token: str | None) -> tuple[int, dict]:
    headers = {"content-type": "application/json"} | ({"authorization": f"Bearer {token}"} if token else {})
    body = json.dumps({"model": MODEL, "input": ["from the container"]}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/embeddings", data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def grpc_embed(port: int, token: str | None) -> pb.EmbedResponse:
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.EmbeddingServiceStub(channel)
        return stub.Embed(pb.EmbedRequest(model=MODEL, inputs=["from the container"]), metadata=metadata, timeout=60)


def stored_keys(data_dir: Path) -> list[sqlite3.Row]:
    with sqlite3.connect(data_dir / "jobs.sqlite3") as conn:
        conn.row_factory = sqlite3.Row
        return conn.execute("SELECT id, tenant, name, role, secret_hash, revoked_at FROM access_keys").fetchall()


def assert_keyed_and_serving(container: Container, token: str) -> None:
    status, body = rest_embed(container.http_port, None)
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
    status, body = rest_embed(container.http_port, token)
    assert status == 200 and len(body["data"][0]["embedding"]) == 384
    for port in (container.grpc_port, container.http_port):  # gRPC straight to the server and through Envoy
        with pytest.raises(grpc.RpcError) as refused:
            grpc_embed(port, None)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert len(grpc_embed(port, token).embeddings[0].values) == 384
    with grpc.insecure_channel(f"127.0.0.1:{container.grpc_port}") as channel:  # an admin key: it manages keys
        listed = admin_pb2_grpc.AdminServiceStub(channel).ListKeys(
            admin_pb2.ListKeysRequest(), metadata=(("authorization", f"Bearer {token}"),), timeout=30
        )
    assert [(k.tenant, k.name) for k in listed.data] == [("ops", "bootstrap")]


def test_the_image_command_serves_rest_and_grpc_keyed_by_the_bootstrapped_key(
    runtime: Stage, container: Container, settings: tuple[dict[str, str], str], tmp_path: Path
) -> None:
    env, token = settings
    data_dir = Path(env["EMBED_DATA_DIR"])
    assert_keyed_and_serving(container, token)
    secret = keys.split(token)[1]
    (row,) = stored_keys(data_dir)
    assert (row["role"], row["secret_hash"]) == ("admin", hashlib.sha256(secret.encode()).hexdigest())
    assert secret.encode() not in b"".join(p.read_bytes() for p in data_dir.rglob("*") if p.is_file())
    assert stop(container) == 0

    # A restart with the same secret changes nothing: the same single key, still working.
    restarted = start(runtime, env, container.log_path)
    try:
        wait_healthy(restarted)
        assert_keyed_and_serving(restarted, token)
        assert [tuple(r) for r in stored_keys(data_dir)] == [tuple(row)]
    finally:
        assert stop(restarted) == 0
    log = container.log
    assert "created from EMBED_ADMIN_KEY_FILE" in log and ": present" in log
    assert secret not in log and token not in log


def test_without_a_key_the_image_refuses_to_start_on_its_public_addresses(
    runtime: Stage, settings: tuple[dict[str, str], str], tmp_path: Path
) -> None:
    env, _ = settings
    env = {k: v for k, v in env.items() if k != "EMBED_ADMIN_KEY_FILE"}
    done = subprocess.run(runtime.cmd, env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "0.0.0.0" in done.stderr


@pytest.mark.parametrize("value", ["not-a-key", "sk-123-short"])
def test_a_malformed_bootstrap_key_is_refused_without_echoing_it(
    runtime: Stage, settings: tuple[dict[str, str], str], tmp_path: Path, value: str
) -> None:
    env, _ = settings
    env = {k: v for k, v in env.items() if k != "EMBED_ADMIN_KEY_FILE"} | {"EMBED_ADMIN_KEY": value}
    done = subprocess.run(runtime.cmd, env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 2 and "EMBED_ADMIN_KEY is not a key" in done.stderr
    assert value not in done.stdout + done.stderr
