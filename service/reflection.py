"""Server reflection as both `grpc.reflection.v1` (what current grpcurl, buf curl and Postman ask for first) and
`grpc.reflection.v1alpha` (older clients).

grpcio-reflection ships only v1alpha. v1 is the same protocol under another package (same messages, same field
numbers), so one servicer answers both: its v1alpha messages are the v1 messages on the wire. The v1 file is added to
the descriptor pool (v1alpha's with the package renamed), so `describe grpc.reflection.v1.ServerReflection` answers
too.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2
from grpc_reflection.v1alpha import reflection_pb2_grpc as v1alpha_grpc

V1ALPHA = "grpc.reflection.v1alpha"
V1 = "grpc.reflection.v1"
SERVICE = "ServerReflection"
METHOD = "ServerReflectionInfo"
V1_SERVICE_NAME = f"{V1}.{SERVICE}"
SERVICE_NAMES = (reflection.SERVICE_NAME, V1_SERVICE_NAME)


def _v1_file() -> descriptor_pb2.FileDescriptorProto:
    """v1alpha's reflection.proto as grpc/reflection/v1/reflection.proto, package grpc.reflection.v1."""
    proto = descriptor_pb2.FileDescriptorProto.FromString(reflection_pb2.DESCRIPTOR.serialized_pb)
    proto.name = "grpc/reflection/v1/reflection.proto"
    proto.package = V1
    proto.options.Clear()
    old, new = f".{V1ALPHA}.", f".{V1}."
    for message in proto.message_type:
        for field in message.field:
            if field.HasField("type_name"):
                field.type_name = field.type_name.replace(old, new)
    for service in proto.service:
        for method in service.method:
            method.input_type = method.input_type.replace(old, new)
            method.output_type = method.output_type.replace(old, new)
    return proto


def register_v1_descriptor(pool: descriptor_pool.DescriptorPool | None = None) -> None:
    pool = pool or descriptor_pool.Default()
    try:
        pool.FindFileByName("grpc/reflection/v1/reflection.proto")
    except KeyError:
        pool.Add(_v1_file())


def enable(service_names: Sequence[str], server: grpc.aio.Server) -> None:
    """Reflection over `service_names` (both reflection services are added to them), under v1 and v1alpha."""
    register_v1_descriptor()
    servicer = reflection.aio.ReflectionServicer([*service_names, *SERVICE_NAMES])
    v1alpha_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    v1_handler = grpc.method_handlers_generic_handler(
        V1_SERVICE_NAME,
        {
            METHOD: grpc.stream_stream_rpc_method_handler(
                servicer.ServerReflectionInfo,
                request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
                response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
            )
        },
    )
    server.add_generic_rpc_handlers((v1_handler,))
