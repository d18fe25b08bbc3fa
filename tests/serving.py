"""Runs the real server as a child process for tests: ephemeral port, readiness via the health service."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.envoy import GatewayPorts, envoy_command, write_rendered

ROOT = Path(__file__).resolve().parent.parent
_LISTENING = re.compile(r"grpc listening on \S+:(\d+)")
# How long a start may take before it is reported as failed. Tests wait for the state (listening, SERVING, or the
# process exiting, which is reported at once); on a loaded 2-core machine loading and warming every model of the
# served repository (MPNet's 110M parameters included) took over 60 s, which failed tests that had nothing wrong.
START_TIMEOUT_S = 600.0


def stop_process(proc: subprocess.Popen | None, grace_s: float = 10.0) -> None:
    """SIGTERM a process still running, and SIGKILL it if it has not exited after `grace_s`."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class ServerProcess:
    """`python -m service` with its log captured; `port` is known once it listens."""

    def __init__(self, model_repo: Path, *args: str, env: dict[str, str] | None = None, cwd: Path = ROOT) -> None:
        """`cwd`: the tree whose `service` package runs (bench.revisions serves other checkouts of the repository)."""
        self.model_repo = model_repo
        self.cwd = cwd
        # Each server gets its own job store unless the caller shares one (restart tests do).
        self.data_dir = Path(tempfile.mkdtemp(prefix="embed-data-")) if "--data-dir" not in args else None
        own_data = ["--data-dir", str(self.data_dir)] if self.data_dir else []
        self.args = ["--model-repo", str(model_repo), "--port", "0", *own_data, *args]
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.lines: list[str] = []
        self._port_seen = threading.Event()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def start(self, timeout: float = START_TIMEOUT_S, wait_ready: bool = True) -> ServerProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service", *self.args],
            cwd=self.cwd,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()
        if not self._port_seen.wait(timeout) or not self.port:  # set when it listens, or when its output ends
            self.stop()
            raise RuntimeError(f"server did not start listening:\n{self.log}")
        if wait_ready:
            try:
                self.wait_serving(timeout)
            except BaseException:
                self.stop()  # a server that never got ready is not left running (the `with` never entered)
                raise
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            match = _LISTENING.search(line)
            if match and not self._port_seen.is_set():
                self.port = int(match.group(1))
                self._port_seen.set()
        self._port_seen.set()  # the process ended: whoever waits for the port learns it at once

    def health(self, service: str = "") -> int:
        with grpc.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status

    def wait_serving(self, timeout: float = START_TIMEOUT_S) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log}")
            try:
                if self.health() == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server not SERVING after {timeout}s:\n{self.log}")

    def signal(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        stop_process(self.proc, 30.0)
        if self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)
        return self.proc.returncode

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_server(model_repo: Path, args: Sequence[str] = ()) -> ServerProcess:
    return ServerProcess(model_repo, *args).start()


def free_port() -> int:
    """A port nothing listens on right now (the OS picks it), for processes that need a fixed port number."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class EnvoyProcess:
    """The real Envoy with the shipped envoy.yaml, rendered for an ephemeral port and a given upstream."""

    def __init__(
        self,
        upstream_port: int,
        tmp_dir: Path,
        otlp_endpoint: str = "",
        admin_port: int = 0,
        upstreams: Sequence[tuple[str, int]] = (),
    ) -> None:
        """`upstreams`: several replicas to balance over (gateway.envoy.add_replicas) instead of `upstream_port`."""
        self.port = free_port()
        self.admin_port = admin_port
        ports = GatewayPorts(self.port, upstream_port, admin=admin_port)
        self.config = write_rendered(ports, tmp_dir / "envoy.yaml", otlp_endpoint, upstreams=upstreams)
        self.command = envoy_command(self.config)
        self.cwd = ROOT
        self.proc: subprocess.Popen | None = None
        self.log_path = tmp_dir / "envoy.log"

    @classmethod
    def prepared(cls, port: int, command: Sequence[str], cwd: Path, log_path: Path) -> EnvoyProcess:
        """An Envoy whose configuration another tree rendered (bench.revisions): `command` run in `cwd`, listening
        on `port`."""
        envoy = cls.__new__(cls)
        envoy.port, envoy.admin_port, envoy.config = port, 0, None
        envoy.command, envoy.cwd, envoy.proc, envoy.log_path = list(command), cwd, None, log_path
        return envoy

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> EnvoyProcess:
        with self.log_path.open("w") as log:
            self.proc = subprocess.Popen(self.command, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"envoy exited:\n{self.log_path.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"envoy did not listen on {self.port}:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        stop_process(self.proc)

    def __enter__(self) -> EnvoyProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def http(gateway, method: str, path: str, body: bytes | str | dict | None = None, headers: dict | None = None):
    """(status, headers, parsed JSON) of one raw HTTP request."""
    data = json.dumps(body).encode() if isinstance(body, dict | list) else body
    data = data.encode() if isinstance(data, str) else data
    request = urllib.request.Request(f"{gateway.base_url}{path}", data=data, method=method, headers=headers or {})
    if data is not None:
        request.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            raw = response.read()
            return response.status, {k.lower(): v for k, v in response.headers.items()}, raw
    except urllib.error.HTTPError as err:
        return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()
