"""Start-up, readiness and graceful shutdown of the real server process."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import grpc

from service._gen.embeddings.v1 import embeddings_pb2 as pb
from service._gen.embeddings.v1 import embeddings_pb2_grpc as pb_grpc
from service._gen.embeddings.v1 import ops_pb2, ops_pb2_grpc
from tests.serving import ROOT, ServerProcess, free_port
from tests.test_observability import parse_metrics, value


def wait_until_queued(server: ServerProcess, model: str, timeout: float = 120.0) -> None:
    """Until the server's engine holds inputs of a call for `model` (its queue-depth gauge is above zero): the call
    is in flight, whatever the machine's load. The state is polled as fast as the server answers."""
    end = time.monotonic() + timeout
    with grpc.insecure_channel(server.address) as channel:
        stub = ops_pb2_grpc.OpsServiceStub(channel)
        while time.monotonic() < end:
            samples = parse_metrics(stub.GetMetrics(ops_pb2.GetMetricsRequest(), timeout=30).data)
            if value(samples, "embeddings_queue_depth", model=model) > 0:
                return
    raise AssertionError(f"no input of a call for {model} reached the engine within {timeout}s")


def test_sigterm_drains_in_flight_calls_then_exits_zero(served_repo):
    # A grace longer than the call can take on a loaded machine: the test is about draining, not about the grace.
    server = ServerProcess(served_repo, "--shutdown-grace-s", "600").start()
    texts = [f"in-flight request sentence {i} " * 12 for i in range(1500)]
    outcome: dict[str, object] = {}

    def long_call() -> None:
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.EmbeddingServiceStub(channel)
            try:
                outcome["response"] = stub.Embed(pb.EmbedRequest(model="all-minilm-l6-v2", inputs=texts), timeout=600)
            except grpc.RpcError as err:
                outcome["error"] = err

    caller = threading.Thread(target=long_call)
    caller.start()
    wait_until_queued(server, "all-minilm-l6-v2")  # the call is being computed
    server.signal(signal.SIGTERM)
    caller.join(600)
    code = server.wait(120)
    assert "error" not in outcome, outcome.get("error")
    assert len(outcome["response"].embeddings) == len(texts)
    assert code == 0
    assert "draining" in server.log and "stopped" in server.log


def test_new_calls_refused_after_shutdown(served_repo):
    server = ServerProcess(served_repo).start()
    server.signal(signal.SIGINT)
    assert server.wait(60) == 0
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.EmbeddingServiceStub(channel)
        try:
            stub.Embed(pb.EmbedRequest(model="all-minilm-l6-v2", inputs=["x"]), timeout=2)
            raise AssertionError("a stopped server answered")
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.UNAVAILABLE


def test_missing_model_repository_fails_clearly(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "service", "--model-repo", str(tmp_path / "nothing"), "--port", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "does not exist" in result.stderr and "make models" in result.stderr


def test_bad_setting_is_a_configuration_error(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "service", "--port", "not-a-port"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2 and "configuration error" in result.stderr


def test_unknown_execution_provider_is_a_configuration_error(served_repo):
    result = subprocess.run(
        [sys.executable, "-m", "service", "--model-repo", str(served_repo), "--providers", "NopeProvider"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "NopeProvider" in result.stderr and "Traceback" not in result.stderr


def _embeds(port: int) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.EmbeddingServiceStub(channel)
        return len(stub.Embed(pb.EmbedRequest(model="all-minilm-l6-v2", inputs=["x"]), timeout=60).embeddings) == 1


def test_reuse_port_lets_two_servers_share_a_port_and_either_serves_it(served_repo):
    port = free_port()
    shared = ("--reuse-port", "true", "--port", str(port), "--inference-workers", "1")
    first = ServerProcess(served_repo, *shared).start()
    second = ServerProcess(served_repo, *shared)
    try:
        # Its health check on the shared port could be answered by the first: wait for its own log instead.
        second.start(wait_ready=False)
        end = time.monotonic() + 600
        while "ready: serving" not in second.log:
            assert second.proc is not None and second.proc.poll() is None and time.monotonic() < end, second.log
            time.sleep(0.1)
        assert first.port == second.port == port
        first.signal(signal.SIGTERM)
        assert first.wait(60) == 0
        assert _embeds(port)  # the port is still served: by the second process
    finally:
        first.stop()
        second.stop()


def test_without_reuse_port_a_second_server_on_a_port_in_use_fails_to_start(served_repo):
    port = free_port()
    first = ServerProcess(served_repo, "--port", str(port)).start()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "service", "--model-repo", str(served_repo), "--port", str(port)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode != 0 and "Failed to bind" in result.stderr
        assert _embeds(port)  # the first server is untouched
    finally:
        first.stop()
