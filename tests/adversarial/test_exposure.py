"""What needs no key says nothing it should not, and what holds secrets is private.

/health and the health services answer SERVING / NOT_SERVING and nothing else (no model ids); the store's files
(API key hashes, webhook secrets, jobs) are readable by the service's user only."""

from __future__ import annotations

import stat

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service._gen.embeddings.v1 import rest_pb2
from tests.adversarial.probes import MODEL, Stack, raw_call


def test_health_names_no_model(stack: Stack):
    status, _, body = stack.rest("GET", "/health")
    assert status == 200 and body == {"status": "SERVING"}
    for channel in (stack.channel, stack.gateway):
        reply = rest_pb2.CheckHealthResponse.FromString(raw_call(channel, "/embeddings.v1.RestService/CheckHealth"))
        assert reply.status == "SERVING" and MODEL.encode() not in reply.SerializeToString()
        health = health_pb2_grpc.HealthStub(channel)
        assert (
            health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == health_pb2.HealthCheckResponse.SERVING
        )
        with pytest.raises(grpc.RpcError) as caught:  # no health entry per model: nothing to probe model ids with
            health.Check(health_pb2.HealthCheckRequest(service=MODEL), timeout=10)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_the_store_files_are_private(stack: Stack):
    files = sorted(stack.data_dir.iterdir())
    assert {f.name for f in files} >= {"jobs.sqlite3", "jobs.sqlite3-wal", "jobs.sqlite3-shm"}
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
