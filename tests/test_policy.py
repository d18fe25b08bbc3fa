"""Per-method policy, declared once in the contract (`option (policy)`, proto/embeddings/v1/policy.proto): every RPC
has one, an RPC without one fails the check (a compiled proto of its own), and what the gateway, the OpenAPI
document and the interceptor do follows from it."""

from __future__ import annotations

import copy
import importlib
from pathlib import Path

import pytest
import yaml
from google.protobuf import descriptor_pb2
from grpc_tools import protoc

from gateway import envoy
from service import policy
from tools import genproto, openapi

ROOT = Path(__file__).resolve().parent.parent
CONTRACT_DIR = ROOT / "proto" / "embeddings" / "v1"
MIB = 1 << 20

TOY_PROTO = """
syntax = "proto3";
package toy.v1;
import "embeddings/v1/policy.proto";
import "google/api/annotations.proto";
service ToyService {
  rpc Declared(Ping) returns (Ping) {
    option (embeddings.v1.policy) = {access: ACCESS_AUTHENTICATED, metering: METERING_NONE};
    option (google.api.http) = {get: "/v1/toy/declared"};
  }
  rpc Forgotten(Ping) returns (Ping) {
    option (google.api.http) = {post: "/v1/toy/forgotten" body: "*"};
  }
  rpc Unmetered(Ping) returns (Ping) {
    option (embeddings.v1.policy) = {access: ACCESS_OPEN};
  }
}
message Ping {}
"""


def compile_proto(tmp_path: Path, source: str) -> list[descriptor_pb2.FileDescriptorProto]:
    """`source` compiled by protoc (grpcio-tools) against the contract, as a descriptor set."""
    (tmp_path / "toy.proto").write_text(source)
    out = tmp_path / "toy.pb"
    includes = [f"-I{tmp_path}", f"-I{genproto.PROTO_DIR}", f"-I{genproto.googleapis_root()}"]
    includes.append(f"-I{genproto.protobuf_include()}")
    code = protoc.main(["protoc", *includes, "--include_imports", f"--descriptor_set_out={out}", "toy.proto"])
    assert code == 0
    return list(descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file)


def test_every_rpc_of_the_contract_declares_a_policy():
    policies = policy.contract_policies()  # raises MissingPolicy otherwise
    declared_files = {p.stem for p in CONTRACT_DIR.glob("*.proto")} - {"policy"}
    served = set()
    for name in declared_files:
        module = importlib.import_module(f"service._gen.embeddings.v1.{name}_pb2")
        for service in module.DESCRIPTOR.services_by_name.values():
            served |= {f"/{service.full_name}/{method.name}" for method in service.methods}
    assert set(policies) == served  # no contract file left out of policy.CONTRACT_MODULES
    assert len(served) == 37


def test_an_rpc_without_a_policy_fails_the_check(tmp_path):
    files = compile_proto(tmp_path, TOY_PROTO)
    with pytest.raises(policy.MissingPolicy) as refused:
        policy.policies_in(files)
    # Forgotten has no option; Unmetered has one without metering, which must never default to "charges nothing".
    assert refused.value.methods == ["toy.v1.ToyService.Forgotten", "toy.v1.ToyService.Unmetered"]
    with pytest.raises(policy.MissingPolicy) as refused:
        openapi.build_document(files)  # the build fails too (for the methods it documents: those with routes)
    assert refused.value.methods == ["toy.v1.ToyService.Forgotten"]


def test_a_declared_policy_is_read_from_the_descriptor(tmp_path):
    files = compile_proto(tmp_path, TOY_PROTO.split("  rpc Forgotten")[0] + "}\nmessage Ping {}\n")
    (declared,) = policy.policies_in(files).values()
    assert declared.path == "/toy.v1.ToyService/Declared"
    assert not declared.is_open and not declared.needs_admin and not declared.retry_safe


def test_policies_say_what_the_interceptor_does():
    policies = policy.contract_policies()
    admin = {p.path for p in policies.values() if p.needs_admin}
    key_management = {p for p in policies if p.startswith("/embeddings.v1.AdminService/")}
    assert admin == {*key_management, "/embeddings.v1.OpsService/GetMetrics"}
    assert {p.path for p in policies.values() if p.needs_admin_key} == key_management
    charged_first = {p.path for p in policies.values() if p.charges_request_first}
    assert charged_first == {
        "/embeddings.v1.JobService/AsyncEmbed",
        "/embeddings.v1.JobService/CreateWebhook",
        "/embeddings.v1.FileService/CreateFile",
        "/embeddings.v1.BatchService/CreateBatch",
    }
    embedding = {p.path for p in policies.values() if p.meters_embedding}
    assert embedding == {
        "/embeddings.v1.EmbeddingService/Embed",
        "/embeddings.v1.RestService/CreateEmbedding",
        "/embeddings.v1.RestService/InferenceEmbed",
    }
    assert all(p.retry_safe for p in policies.values() if p.meters_embedding)


def test_the_embedding_methods_cap_their_messages_below_the_servers():
    """32 MiB for interactive calls: 2048 inputs of the 4,096 characters the default model reads, at 4 bytes (UTF-8's
    widest), and twice the gateway's 16 MiB body cap, so any REST body of texts fits once transcoded; token ids
    (11 bytes each as protobuf) fit ~3M to a request. Async jobs keep the server's 256 MiB."""
    caps = {path: p.max_message_bytes for path, p in policy.contract_policies().items() if p.max_message_bytes}
    assert caps == {
        "/embeddings.v1.EmbeddingService/Embed": 32 * MIB,
        "/embeddings.v1.RestService/CreateEmbedding": 32 * MIB,
        "/embeddings.v1.RestService/InferenceEmbed": 32 * MIB,
        "/embeddings.v1.JobService/AsyncEmbed": 256 * MIB,
    }
    embed = policy.contract_policies()["/embeddings.v1.EmbeddingService/Embed"]
    assert (embed.message_cap(256 * MIB), embed.message_cap(8 * MIB)) == (32 * MIB, 8 * MIB)
    unbounded = policy.contract_policies()["/embeddings.v1.JobService/CreateWebhook"]
    assert unbounded.message_cap(256 * MIB) == 256 * MIB


def test_the_gateway_retries_only_retry_safe_calls():
    matches = envoy.retry_safe_matches(policy.contract_policies())
    prefixes = {m["prefix"] for m in matches if "prefix" in m}
    paths = {m["path"] for m in matches if "path" in m}
    assert prefixes == {"/embeddings.v1.EmbeddingService/", "/embeddings.v1.RestService/", "/embeddings.v1.OpsService/"}
    assert "/embeddings.v1.JobService/GetJob" in paths and "/embeddings.v1.AdminService/ListKeys" in paths
    assert not paths & {"/embeddings.v1.JobService/AsyncEmbed", "/embeddings.v1.AdminService/CreateKey"}


def _routes(config: dict) -> list[dict]:
    return envoy._manager(config)["route_config"]["virtual_hosts"][0]["routes"]


def test_envoy_yaml_agrees_with_the_policies(tmp_path):
    config = yaml.safe_load(envoy.CONFIG.read_text())
    files = policy.file_protos(policy.CONTRACT_MODULES)
    policies = policy.contract_policies()
    assert envoy.policy_mismatches(config, policies, files) == []

    no_health = copy.deepcopy(config)
    _routes(no_health)[:] = [r for r in _routes(no_health) if r["match"].get("path") != "/health"]
    assert envoy.policy_mismatches(no_health, policies, files) == [
        "/health (embeddings.v1.RestService.CheckHealth): ext_authz must be off"
    ]
    everything_open = copy.deepcopy(config)
    for route in _routes(everything_open):
        route["typed_per_filter_config"] = _routes(config)[0]["typed_per_filter_config"]
    mismatches = envoy.policy_mismatches(everything_open, policies, files)
    assert "/v1/embeddings (embeddings.v1.RestService.CreateEmbedding): ext_authz must be on" in mismatches
    uncapped = copy.deepcopy(config)
    for route in _routes(uncapped):
        route.pop("metadata", None)
    assert envoy.policy_mismatches(uncapped, policies, files) == [
        f"{path} (embeddings.v1.{method}): message cap 0, declared {cap}"
        for path, method, cap in [
            ("/v1/embeddings", "RestService.CreateEmbedding", 32 * MIB),
            ("/oai/v1/embeddings", "RestService.CreateEmbedding", 32 * MIB),
            ("/v1/inference/embed", "RestService.InferenceEmbed", 32 * MIB),
            ("/v1/async/embeddings", "JobService.AsyncEmbed", 256 * MIB),
        ]
    ]
    broken = tmp_path / "envoy.yaml"
    broken.write_text(yaml.safe_dump(no_health))
    with pytest.raises(ValueError, match="disagrees with the contract"):
        envoy.render(envoy.GatewayPorts(), source=broken)  # the gateway does not start with it


def test_open_routes_in_the_openapi_document_follow_the_policies():
    document = openapi.build_document(openapi.load_files())
    open_operations = {
        operation["operationId"]
        for item in document["paths"].values()
        for operation in item.values()
        if operation.get("security") == []
    }
    declared_open = {p.full_name for p in policy.contract_policies().values() if p.is_open}
    assert open_operations == {name.removeprefix("embeddings.v1.").replace(".", "_") for name in declared_open}


def test_a_servicer_reached_without_the_interceptor_has_no_caller():
    from service import errors
    from service.access.interceptor import caller_of

    with pytest.raises(errors.ApiError) as refused:
        caller_of(object())  # a bare context: no authenticated caller, so the call fails (closed)
    assert refused.value.reason == "internal_error"
