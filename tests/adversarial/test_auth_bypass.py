"""Authentication bypass: every RPC of every service on both ports, and every REST route, without a valid key.

No key, a wrong key and a revoked key each get UNAUTHENTICATED `invalid_api_key` (gRPC, straight to the server and
through Envoy's listener) or 401 in OpenAI's envelope (REST); a non-admin key gets PERMISSION_DENIED
`insufficient_permissions` / 403 on admin operations. Only health, reflection, the API description and the browser
pages (docs, console) are open.
"""

from __future__ import annotations

import json

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from service import assets
from service._gen.embeddings.v1 import admin_pb2, batches_pb2, embeddings_pb2, jobs_pb2, ops_pb2, rest_pb2
from tests.adversarial.probes import WRONG_KEY, Stack, assert_openai_error, assert_still_serving, refused

OPEN_METHODS = {
    "/embeddings.v1.RestService/CheckHealth",
    "/embeddings.v1.OpsService/GetOpenApiDocument",
    # The browser pages and their static files (the pages' own calls carry the key).
    "/embeddings.v1.OpsService/GetDocs",
    "/embeddings.v1.OpsService/GetDocsAsset",
    "/embeddings.v1.OpsService/GetConsole",
    "/embeddings.v1.OpsService/GetConsoleAsset",
}
ADMIN_METHODS_EXTRA = {"/embeddings.v1.OpsService/GetMetrics"}
OPENAPI = json.loads(assets.OPENAPI.read_text())


def all_methods() -> list[str]:
    methods = []
    for module in (embeddings_pb2, rest_pb2, jobs_pb2, admin_pb2, ops_pb2, batches_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            methods += [f"/{service.full_name}/{method.name}" for method in service.methods]
    return methods


METHODS = all_methods()
GUARDED = [m for m in METHODS if m not in OPEN_METHODS]
ADMIN = [m for m in METHODS if m.startswith("/embeddings.v1.AdminService/") or m in ADMIN_METHODS_EXTRA]


def rest_routes() -> list[tuple[str, str]]:
    routes = []
    for path, operations in OPENAPI["paths"].items():
        for method, operation in operations.items():
            if operation.get("security") != []:  # [] marks the open routes
                routes.append(
                    (method.upper(), path.replace("{id}", "x").replace("{name}", "x").replace("{model}", "x"))
                )
    return routes


def test_the_enumeration_covers_every_service():
    services = {m.split("/")[1] for m in METHODS}
    assert services == {
        "embeddings.v1.EmbeddingService",
        "embeddings.v1.RestService",
        "embeddings.v1.JobService",
        "embeddings.v1.AdminService",
        "embeddings.v1.OpsService",
        "embeddings.v1.FileService",
        "embeddings.v1.BatchService",
    }
    assert len(GUARDED) == 31 and len(rest_routes()) == 30


@pytest.mark.parametrize("method", GUARDED)
def test_every_rpc_refuses_a_caller_without_a_valid_key(stack: Stack, method: str):
    for channel in (stack.channel, stack.gateway):
        for key in (None, WRONG_KEY, stack.keys["revoked"]):
            error = refused(channel, method, key=key)
            assert (error.code, error.reason) == (grpc.StatusCode.UNAUTHENTICATED, "invalid_api_key"), (method, key)
            assert WRONG_KEY not in error.message and stack.keys["revoked"] not in error.message


@pytest.mark.parametrize("method", ADMIN)
def test_admin_rpcs_refuse_a_user_key(stack: Stack, method: str):
    for channel in (stack.channel, stack.gateway):
        error = refused(channel, method, key=stack.keys["acme"])
        assert (error.code, error.reason) == (grpc.StatusCode.PERMISSION_DENIED, "insufficient_permissions")


@pytest.mark.parametrize(("verb", "path"), rest_routes())
def test_every_rest_route_refuses_a_caller_without_a_valid_key(stack: Stack, verb: str, path: str):
    body = {} if verb in ("POST", "PUT") else None
    for key in (None, WRONG_KEY, stack.keys["revoked"]):
        status, headers, answer = stack.rest(verb, path, key, body)
        assert_openai_error(status, answer, 401, "invalid_api_key", "authentication_error")
        assert not any(name.startswith("grpc-") for name in headers)


@pytest.mark.parametrize(
    ("verb", "path"),
    [(verb, path) for verb, path in rest_routes() if path.startswith("/v1/admin") or path == "/metrics"],
)
def test_admin_rest_routes_refuse_a_user_key(stack: Stack, verb: str, path: str):
    body = {} if verb in ("POST", "PUT") else None
    status, _, answer = stack.rest(verb, path, stack.keys["acme"], body)
    assert_openai_error(status, answer, 403, "insufficient_permissions", "permission_error")


def test_only_health_reflection_and_the_api_description_are_open(stack: Stack):
    assert stack.rest("GET", "/health")[0] == 200
    assert stack.rest("GET", "/openapi.json")[0] == 200
    for channel in (stack.channel, stack.gateway):
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        [answer] = list(reflection.ServerReflectionInfo(iter([request]), timeout=10))
        listed = {service.name for service in answer.list_services_response.service}
        assert "embeddings.v1.EmbeddingService" in listed
        assert "envoy.service.auth.v3.Authorization" not in listed  # the gateway's check is not an API


def test_the_gateways_key_check_is_not_reachable_through_the_gateway_without_a_key(stack: Stack):
    """The ext_authz servicer answers Envoy on the server's port; through Envoy it is behind the same check."""
    error = refused(stack.gateway, "/envoy.service.auth.v3.Authorization/Check")
    assert (error.code, error.reason) == (grpc.StatusCode.UNAUTHENTICATED, "invalid_api_key")


def test_a_malformed_authorization_header_is_a_401(stack: Stack):
    for value in ("Bearer", "Basic dXNlcjpwYXNz", "Bearer sk-", "bearer  " + "x" * 5000, "Bearer sk-%00-x"):
        status, _, answer = stack.rest(
            "POST", "/v1/embeddings", None, {"model": "m", "input": "x"}, {"authorization": value}
        )
        assert_openai_error(status, answer, 401, "invalid_api_key", "authentication_error")
    assert_still_serving(stack)
