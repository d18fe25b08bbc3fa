"""Per-method policy, declared once in the contract (`option (policy)` on every RPC, proto/embeddings/v1/policy.proto)
and read here from the descriptors: who may call a method, what it charges, whether the gateway may retry it, how
the gateway takes its body, how large a request message may be. The access interceptor, the server, the gateway's
Envoy rendering and the OpenAPI generator all ask this module; none keeps a list of method names of its own.

A method without a complete policy (no option, or access or metering left unspecified) is an error
(`MissingPolicy`): the server refuses to start, the build's OpenAPI generation fails, and so does a test.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType, ModuleType

from google.protobuf import descriptor_pb2

from service._gen.embeddings.v1 import admin_pb2, batches_pb2, embeddings_pb2, jobs_pb2, ops_pb2, policy_pb2, rest_pb2
from service.fields import derive

# The contract's files, in the order their services are listed wherever order shows (the gateway's retry routes).
CONTRACT_MODULES: tuple[ModuleType, ...] = (embeddings_pb2, rest_pb2, jobs_pb2, batches_pb2, admin_pb2, ops_pb2)
# Services whose protos are not ours, served beside the contract and open by nature: health (per replica, checked
# by the gateway), reflection (grpcurl), and Envoy's pre-body check (the caller's key is in its message).
FOREIGN_OPEN_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.", "/envoy.service.auth.v3.Authorization/")


class MissingPolicy(ValueError):
    """Methods of the contract without a complete `option (policy)`."""

    def __init__(self, methods: Iterable[str]) -> None:
        self.methods = sorted(methods)
        super().__init__(
            "every RPC must declare its policy (option (policy) = {access: ..., metering: ...}, "
            f"proto/embeddings/v1/policy.proto); missing or incomplete on: {', '.join(self.methods)}"
        )


@dataclass(frozen=True)
class MethodPolicy:
    """The policy of one RPC, as declared in the contract: its name, and the fields of its `option (policy)` (each
    field here named after one of policy.proto's `MethodPolicy` message)."""

    service: str  # embeddings.v1.RestService
    method: str  # CreateEmbedding
    access: int  # policy_pb2.Access
    metering: int  # policy_pb2.Metering
    retry_safe: bool
    max_request_bytes: int  # 0: the gateway's default cap
    streamed_body: bool
    max_message_bytes: int = 0  # 0: only the server's max_message_bytes setting

    @property
    def path(self) -> str:
        """The gRPC path, `/embeddings.v1.RestService/CreateEmbedding` (also what transcoded REST calls route as)."""
        return f"/{self.service}/{self.method}"

    @property
    def full_name(self) -> str:
        return f"{self.service}.{self.method}"

    @property
    def is_open(self) -> bool:
        return self.access == policy_pb2.ACCESS_OPEN

    @property
    def needs_admin(self) -> bool:
        return self.access in (policy_pb2.ACCESS_ADMIN, policy_pb2.ACCESS_ADMIN_KEY)

    @property
    def needs_admin_key(self) -> bool:
        """An admin key even while the server runs open (whose callers are all admins, without a key)."""
        return self.access == policy_pb2.ACCESS_ADMIN_KEY

    @property
    def charges_request_first(self) -> bool:
        """One request charged before the request message is read (the embedding calls charge theirs with their
        tokens, once counted)."""
        return self.metering in (policy_pb2.METERING_REQUEST, policy_pb2.METERING_JOB)

    @property
    def meters_embedding(self) -> bool:
        return self.metering == policy_pb2.METERING_EMBEDDING

    @property
    def meters_job(self) -> bool:
        return self.metering == policy_pb2.METERING_JOB

    def message_cap(self, server_cap: int) -> int:
        """The largest request message the server takes for this method: its declared cap, within the server's."""
        return min(self.max_message_bytes or server_cap, server_cap)


def policy_of(service: str, method: descriptor_pb2.MethodDescriptorProto) -> MethodPolicy | None:
    """The declared policy of `method` of `service` (full name), or None if it has none or an incomplete one."""
    if not method.options.HasExtension(policy_pb2.policy):
        return None
    declared = method.options.Extensions[policy_pb2.policy]
    if declared.access == policy_pb2.ACCESS_UNSPECIFIED or declared.metering == policy_pb2.METERING_UNSPECIFIED:
        return None
    return derive(MethodPolicy, declared, service=service, method=method.name)


def policies_in(files: Iterable[descriptor_pb2.FileDescriptorProto]) -> dict[str, MethodPolicy]:
    """Every method's policy, by gRPC path, in file, service and method order; MissingPolicy if any lacks one."""
    policies: dict[str, MethodPolicy] = {}
    missing = []
    for proto in files:
        for service in proto.service:
            full_service = f"{proto.package}.{service.name}" if proto.package else service.name
            for method in service.method:
                policy = policy_of(full_service, method)
                if policy is None:
                    missing.append(f"{full_service}.{method.name}")
                else:
                    policies[policy.path] = policy
    if missing:
        raise MissingPolicy(missing)
    return policies


def file_protos(modules: Iterable[ModuleType]) -> list[descriptor_pb2.FileDescriptorProto]:
    """The FileDescriptorProtos of generated `*_pb2` modules (options, the policy included, parsed)."""
    return [descriptor_pb2.FileDescriptorProto.FromString(module.DESCRIPTOR.serialized_pb) for module in modules]


@functools.cache
def contract_policies() -> Mapping[str, MethodPolicy]:
    """The policy of every RPC of the contract, by gRPC path (read once); MissingPolicy if any lacks one."""
    return MappingProxyType(policies_in(file_protos(CONTRACT_MODULES)))


def contract_services() -> list[str]:
    """The full names of the contract's services, in CONTRACT_MODULES order."""
    return [service.full_name for module in CONTRACT_MODULES for service in module.DESCRIPTOR.services_by_name.values()]


def is_foreign_open(path: str) -> bool:
    """Whether `path` (/package.Service/Method) belongs to a served service that is not ours and is open."""
    return path.startswith(FOREIGN_OPEN_PREFIXES)


def open_methods(policies: Mapping[str, MethodPolicy]) -> frozenset[str]:
    """The gRPC paths callable without a key."""
    return frozenset(path for path, policy in policies.items() if policy.is_open)
