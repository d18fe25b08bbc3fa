"""The OpenAPI document (service/_gen/openapi.json, generated from the descriptor set by the build): it validates,
covers every `google.api.http` rule and field of every service, is served at GET /openapi.json, and survives generated
and mutated requests against the real gateway (schemathesis): no 5xx, every error in OpenAI's envelope."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import pytest
import requests
import schemathesis
from google.api import annotations_pb2
from hypothesis import HealthCheck, settings
from openapi_spec_validator import validate

from service import assets
from service._gen.embeddings.v1 import rest_pb2
from tests.serving import EnvoyProcess, ServerProcess, http
from tools import openapi

ROOT = Path(__file__).resolve().parent.parent
DOCUMENT = assets.OPENAPI
PROTO_MODULES = sorted(p.stem for p in (ROOT / "proto" / "embeddings" / "v1").glob("*.proto"))
HTTPBODY = "google.api.HttpBody"


@pytest.fixture(scope="module")
def document() -> dict:
    return json.loads(DOCUMENT.read_text())


def _bindings(rule):
    for verb in openapi.VERBS:
        if getattr(rule, verb):
            yield verb, getattr(rule, verb), rule.body
    for extra in rule.additional_bindings:
        yield from _bindings(extra)


def http_methods():
    """(method descriptor, verb, path template, body) of every HTTP rule, read from the generated Python modules."""
    for name in PROTO_MODULES:
        module = importlib.import_module(f"service._gen.embeddings.v1.{name}_pb2")
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                options = method.GetOptions()
                if options.HasExtension(annotations_pb2.http):
                    for verb, template, body in _bindings(options.Extensions[annotations_pb2.http]):
                        yield method, verb, re.sub(r"\{(\w+)(=[^}]*)?\}", r"{\1}", template), body


def test_document_is_valid_openapi_3(document):
    validate(document)
    assert document["openapi"].startswith("3.")


def test_every_http_rule_and_field_is_documented(document):
    rules = list(http_methods())
    assert len(rules) >= 20
    documented = {(verb, path) for path, item in document["paths"].items() for verb in item}
    assert documented == {(verb, path) for _, verb, path, _ in rules}
    for method, verb, path, body in rules:
        operation = document["paths"][path][verb]
        params = {(p["name"], p["in"]) for p in operation.get("parameters", [])}
        path_fields = set(re.findall(r"\{(\w+)\}", path))
        not_taken = openapi.fields_not_taken(method.full_name, method.input_type.full_name)
        for field in method.input_type.fields:
            if field.name in not_taken:  # a shared message's field this method refuses: left out
                assert field.name not in json.dumps(operation.get("parameters", [])), (method.full_name, field.name)
                if body == "*":
                    schema = operation["requestBody"]["content"]["application/json"]["schema"]
                    assert field.name not in schema["properties"], (method.full_name, field.name)
            elif field.name in path_fields:
                assert (field.name, "path") in params, (method.full_name, field.name)
            elif method.full_name in openapi.HTTPBODY_REQUESTS:  # a streamed upload: its form, written by hand
                assert operation["requestBody"] == openapi.HTTPBODY_REQUESTS[method.full_name]
            elif body == "*":
                schema = operation["requestBody"]["content"]["application/json"]["schema"]
                assert field.name in schema["properties"], (method.full_name, field.name)
            elif field.message_type is None:
                assert (field.name, "query") in params, (method.full_name, field.name)
        responses = operation["responses"]
        assert responses["4XX"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
        if method.output_type.full_name == HTTPBODY:
            assert method.full_name in openapi.HTTPBODY_RESPONSES, f"{method.full_name}: no hand-written schema"
            assert responses["200"] == openapi.HTTPBODY_RESPONSES[method.full_name]
        else:
            schema = responses["200"]["content"]["application/json"]["schema"]
            assert schema == {"$ref": f"#/components/schemas/{method.output_type.name}"}
            documented_fields = set(document["components"]["schemas"][method.output_type.name]["properties"])
            assert documented_fields == {f.name for f in method.output_type.fields}


def test_open_routes_match_the_auth_interceptor(document):
    from service.access.interceptor import OPEN_METHODS

    assert {m.lstrip("/").replace("/", ".") for m in OPEN_METHODS} == openapi.OPEN_METHODS
    unauthenticated = {
        operation["operationId"]
        for item in document["paths"].values()
        for operation in item.values()
        if operation.get("security") == []
    }
    assert unauthenticated == {
        "RestService_CheckHealth",
        "OpsService_GetOpenApiDocument",
        "OpsService_GetDocs",
        "OpsService_GetDocsAsset",
        "OpsService_GetConsole",
        "OpsService_GetConsoleAsset",
    }
    assert document["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"


def test_file_upload_is_described_as_openais_multipart_form(document):
    form = document["paths"]["/v1/files"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["required"] == ["file", "purpose"] and form["properties"]["file"]["format"] == "binary"
    batch = document["components"]["schemas"]["Batch"]
    assert {"request_counts", "output_file_id", "error_file_id", "in_progress_at"} <= set(batch["properties"])


def test_input_accepts_openai_shapes(document):
    body = document["paths"]["/v1/embeddings"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    shapes = body["properties"]["input"]["anyOf"]
    assert {"type": "string"} in shapes and len(shapes) == 4


def test_async_only_fields_are_documented_on_the_async_route_only(document):
    """AsyncEmbed and the synchronous routes share CreateEmbeddingRequest: the async body lists every field of it,
    `metadata` included; the synchronous ones (which refuse `metadata`) all the others."""

    def body(path: str) -> dict:
        return document["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]

    fields = [f.name for f in rest_pb2.CreateEmbeddingRequest.DESCRIPTOR.fields]
    assert "metadata" in fields and openapi.ONLY_FOR
    assert list(body("/v1/async/embeddings")["properties"]) == fields
    assert body("/v1/async/embeddings")["properties"]["metadata"]["additionalProperties"] == {"type": "string"}
    for path in ("/v1/embeddings", "/oai/v1/embeddings", "/v1/inference/embed"):
        assert list(body(path)["properties"]) == [f for f in fields if f != "metadata"], path
        assert body(path)["required"] == body("/v1/async/embeddings")["required"] == ["model", "input"]


def test_served_at_openapi_json_through_the_gateway(gateway, document):
    status, headers, body = http(gateway, "GET", "/openapi.json")
    assert status == 200 and headers["content-type"].startswith("application/json")
    assert json.loads(body) == document


# --- property-based: generated and mutated requests against the real gateway ----------------------------------


@pytest.fixture(scope="module")
def fuzzed_gateway(served_repo, tmp_path_factory):
    """A server and Envoy of their own: the jobs and webhooks the fuzzer creates stay out of the session's server."""
    server = ServerProcess(served_repo, "--max-inputs-per-request", "64")
    with server, EnvoyProcess(server.port, tmp_path_factory.mktemp("fuzz-envoy")) as envoy:
        yield envoy


# Positive (schema-conforming) and negative (mutated) requests, both generation modes by default.
schema = schemathesis.openapi.from_path(DOCUMENT)
session = requests.Session()


@schema.parametrize()
@settings(max_examples=15, derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck))
def test_generated_requests_get_no_5xx_and_openai_errors(case, fuzzed_gateway):
    response = case.call(base_url=fuzzed_gateway.base_url, session=session, timeout=120)
    assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.status_code} {response.text}"
    if response.status_code >= 400:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}, response.text
        assert isinstance(error["message"], str) and error["message"]


def test_body_the_transcoder_cannot_encode_is_a_400_not_a_500(gateway):
    """Found by the property test: an object as a map value reaches the server as corrupt protobuf."""
    body = {"model": "all-minilm-l6-v2", "input": "x", "metadata": {"key": {}}}
    status, _, raw = http(gateway, "POST", "/v1/async/embeddings", body)
    assert status == 400, raw
    error = json.loads(raw)["error"]
    assert error["code"] == "invalid_request" and error["type"] == "invalid_request_error"
