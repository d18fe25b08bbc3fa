"""`make run`'s supervisor (python -m gateway.run): server and Envoy together, stopped together."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import grpc

from service._gen.embeddings.v1 import embeddings_pb2 as pb
from service._gen.embeddings.v1 import embeddings_pb2_grpc as pb_grpc
from tests.serving import ROOT, free_port


def start_stack(model_repo) -> tuple[subprocess.Popen, int, int]:
    http_port, grpc_port = free_port(), free_port()
    command = [
        *(sys.executable, "-m", "gateway.run", "--http-port", str(http_port), "--admin-port", "0"),
        *("--port", str(grpc_port), "--model-repo", str(model_repo)),
    ]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    end = time.monotonic() + 60
    while time.monotonic() < end:
        assert proc.poll() is None, proc.stdout.read()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/health", timeout=2) as response:
                if response.status == 200:
                    return proc, http_port, grpc_port
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise AssertionError("stack did not become healthy")


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def test_rest_and_native_grpc_then_sigterm_stops_both(served_repo):
    proc, http_port, grpc_port = start_stack(served_repo)
    try:
        request = urllib.request.Request(
            f"http://127.0.0.1:{http_port}/v1/embeddings",
            data=json.dumps({"model": "all-minilm-l6-v2", "input": "hi"}).encode(),
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            assert len(json.loads(response.read())["data"][0]["embedding"]) == 384
        for port in (grpc_port, http_port):  # native gRPC directly and through Envoy
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                reply = pb_grpc.EmbeddingServiceStub(channel).Embed(
                    pb.EmbedRequest(model="all-minilm-l6-v2", inputs=["native"]), timeout=30
                )
                assert len(reply.embeddings[0].values) == 384
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    assert code == 0
    assert not listening(http_port) and not listening(grpc_port)


def test_envoy_dying_stops_the_server_and_fails(served_repo):
    proc, http_port, grpc_port = start_stack(served_repo)
    envoy = subprocess.run(["pgrep", "-f", f"envoy-{http_port}.yaml"], capture_output=True, text=True)
    pids = [int(p) for p in envoy.stdout.split()]
    assert pids, "envoy process not found"
    for pid in pids:
        subprocess.run(["kill", "-KILL", str(pid)], check=False)
    code = proc.wait(60)
    output = proc.stdout.read()
    assert code != 0
    assert "envoy exited" in output and "stopping server" in output
    assert not listening(grpc_port)
