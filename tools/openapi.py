"""Build step: the OpenAPI 3 document of the REST surface, derived from the descriptor set
(`service/_gen/openapi.json`).

Every `google.api.http` rule of every service becomes an operation (additional bindings included): path
parameters from the template, the body from `body: "*"`, query parameters from the request's other fields (as the
transcoder maps them), schemas from the messages with their proto comments, field names as printed by the gateway
(`preserve_proto_field_names`). What the descriptor cannot say is written here by hand and checked by the tests:
the `google.protobuf.Value` input (a string, strings, token ids or arrays of token ids), the OpenAI JSON that
`google.api.HttpBody` methods write themselves (keyed by method), and the error envelope every error shares.
Served by the gateway at `GET /openapi.json` (OpsService.GetOpenApiDocument reads the generated file).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.api import annotations_pb2, field_behavior_pb2, http_pb2
from google.protobuf import descriptor_pb2

from service import assets
from service.api.rest import ASYNC_ONLY_FIELDS, ENCODING_FORMATS
from service.policy import MissingPolicy, contract_policies, policy_of

ROOT = Path(__file__).resolve().parent.parent
DESCRIPTOR = assets.DESCRIPTOR
OUTPUT = assets.OPENAPI
PACKAGE = "embeddings.v1"
HTTPBODY = ".google.api.HttpBody"
# String fields whose values the server checks against a list (kept strings in the proto for OpenAI's JSON): the
# list the server checks is the document's enum.
STRING_ENUMS = {".embeddings.v1.CreateEmbeddingRequest.encoding_format": list(ENCODING_FORMATS)}
# Fields of a request message several methods share that only some of them take (the others refuse them), by full
# name: the others' operations leave them out. CreateEmbeddingRequest's `metadata` is for async jobs only.
ONLY_FOR: dict[str, frozenset[str]] = {
    f"embeddings.v1.CreateEmbeddingRequest.{name}": frozenset({"embeddings.v1.JobService.AsyncEmbed"})
    for name in ASYNC_ONLY_FIELDS
}
VERBS = ("get", "put", "post", "delete", "patch")
F = descriptor_pb2.FieldDescriptorProto

_SCALARS: dict[int, dict[str, Any]] = {
    F.TYPE_STRING: {"type": "string"},
    F.TYPE_BOOL: {"type": "boolean"},
    F.TYPE_INT32: {"type": "integer", "format": "int32"},
    F.TYPE_SINT32: {"type": "integer", "format": "int32"},
    F.TYPE_SFIXED32: {"type": "integer", "format": "int32"},
    F.TYPE_UINT32: {"type": "integer", "format": "int32", "minimum": 0},
    F.TYPE_FIXED32: {"type": "integer", "format": "int32", "minimum": 0},
    # proto3 JSON prints 64-bit integers as strings.
    F.TYPE_INT64: {"type": "string", "format": "int64"},
    F.TYPE_SINT64: {"type": "string", "format": "int64"},
    F.TYPE_SFIXED64: {"type": "string", "format": "int64"},
    F.TYPE_UINT64: {"type": "string", "format": "uint64"},
    F.TYPE_FIXED64: {"type": "string", "format": "uint64"},
    F.TYPE_FLOAT: {"type": "number", "format": "float"},
    F.TYPE_DOUBLE: {"type": "number", "format": "double"},
    F.TYPE_BYTES: {"type": "string", "format": "byte"},
}

TOKEN_IDS = {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1}
# The only google.protobuf.Value fields of the contract are OpenAI's `input`.
EMBEDDING_INPUT = {
    "description": "A string, an array of strings, an array of token ids (cl100k_base), or an array of arrays of "
    "token ids.",
    "anyOf": [
        {"type": "string"},
        {"type": "array", "items": {"type": "string"}, "minItems": 1},
        TOKEN_IDS,
        {"type": "array", "items": TOKEN_IDS, "minItems": 1},
    ],
}
WELL_KNOWN: dict[str, dict[str, Any]] = {
    ".google.protobuf.Value": EMBEDDING_INPUT,
    ".google.protobuf.Struct": {"type": "object"},
}

# Hand-written schemas of what the HttpBody methods write (their real OpenAI shapes), keyed by method.


def _literal(*values: str) -> dict[str, Any]:
    """A string that is one of `values`: an OpenAI `object` tag, a status."""
    return {"type": "string", "enum": list(values)}


def _object(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object"}
    if required is not None:
        schema["required"] = required
    schema["properties"] = properties
    return schema


def _array(items: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": items}


_JSON = "application/json"


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {_JSON: {"schema": schema}}}


def _list_of(ref: str) -> dict[str, Any]:
    """One page of an OpenAI list (files, batches)."""
    return _object(
        {
            "object": _literal("list"),
            "data": _array({"$ref": ref}),
            "first_id": {"type": "string", "nullable": True},
            "last_id": {"type": "string", "nullable": True},
            "has_more": {"type": "boolean"},
        },
        ["object", "data", "has_more"],
    )


_STRING, _INTEGER = {"type": "string"}, {"type": "integer"}
_VECTOR = {
    "description": "Floats, or base64 of little-endian float32 when encoding_format is base64.",
    "anyOf": [_array({"type": "number"}), {"type": "string", "format": "byte"}],
}
_USAGE = _object(
    {
        "prompt_tokens": _INTEGER,
        "total_tokens": _INTEGER,
        # Tokens of inputs served from the embedding cache (counted in prompt_tokens too).
        "prompt_tokens_details": _object({"cached_tokens": _INTEGER}, ["cached_tokens"]),
    },
    ["prompt_tokens", "total_tokens"],
)
_EMBEDDING_LIST = _object(
    {
        "object": _literal("list"),
        "data": _array(
            _object(
                {"object": _literal("embedding"), "index": _INTEGER, "embedding": _VECTOR},
                ["object", "index", "embedding"],
            )
        ),
        "model": _STRING,
        "usage": _USAGE,
    },
    ["object", "data", "model", "usage"],
)
_HTML_PAGE = {"description": "An HTML page.", "content": {"text/html": {"schema": _STRING}}}
_PAGE_ASSET = {
    "description": "A file of the page: a script, style sheet or image (cached for good: its URL names the build).",
    "content": {
        "text/javascript": {"schema": _STRING},
        "text/css": {"schema": _STRING},
        "image/svg+xml": {"schema": _STRING},
        "image/png": {"schema": {"type": "string", "format": "binary"}},
    },
}
_EMBEDDING_RESPONSE_REF = {"$ref": "#/components/schemas/CreateEmbeddingResponse"}
HTTPBODY_RESPONSES: dict[str, dict[str, Any]] = {
    "embeddings.v1.RestService.CreateEmbedding": _json("OpenAI's embeddings response.", _EMBEDDING_RESPONSE_REF),
    "embeddings.v1.RestService.InferenceEmbed": _json(
        "The ScaiGrid envelope around the vectors.",
        _object(
            {
                "status": _literal("ok"),
                "data": _object(
                    {
                        "model": _STRING,
                        "data": _array(_object({"index": _INTEGER, "embedding": _VECTOR})),
                        "usage": _USAGE,
                    }
                ),
            },
            ["status", "data"],
        ),
    ),
    "embeddings.v1.JobService.GetJobResults": _json(
        "One page of a job's vectors: an embeddings response plus paging fields.",
        {
            "allOf": [
                _EMBEDDING_RESPONSE_REF,
                _object(
                    {"has_more": {"type": "boolean"}, "next_offset": {"type": "integer", "nullable": True}},
                    ["has_more"],
                ),
            ]
        },
    ),
    "embeddings.v1.OpsService.GetMetrics": {
        "description": "Prometheus metrics, text exposition format 0.0.4.",
        "content": {"text/plain": {"schema": _STRING}},
    },
    "embeddings.v1.OpsService.GetOpenApiDocument": _json("This document.", {"type": "object"}),
    "embeddings.v1.OpsService.GetDocs": _HTML_PAGE,
    "embeddings.v1.OpsService.GetDocsAsset": _PAGE_ASSET,
    "embeddings.v1.OpsService.GetConsole": _HTML_PAGE,
    "embeddings.v1.OpsService.GetConsoleAsset": _PAGE_ASSET,
}
# The Batch API's objects (OpenAI's shapes), written by the FileService and BatchService HttpBody methods.
_NULLABLE_STRING = {"type": "string", "nullable": True}
_FILE = _object(
    {
        "id": _STRING,
        "object": _literal("file"),
        "bytes": _INTEGER,
        "created_at": _INTEGER,
        "expires_at": {"type": "integer", "nullable": True},
        "filename": _STRING,
        "purpose": _literal("batch", "batch_output"),
        "status": _literal("processed"),
        "status_details": _NULLABLE_STRING,
    },
    ["id", "object", "bytes", "created_at", "filename", "purpose", "status"],
)
_TIMESTAMP = {"type": "integer", "nullable": True, "description": "Unix seconds, or null."}
_BATCH_ERRORS = {
    "type": "object",
    "nullable": True,
    "properties": {
        "object": _literal("list"),
        "data": _array(
            _object(
                {
                    "code": _STRING,
                    "message": _STRING,
                    "param": _NULLABLE_STRING,
                    "line": {"type": "integer", "nullable": True},
                }
            )
        ),
    },
}
_BATCH = _object(
    {
        "id": _STRING,
        "object": _literal("batch"),
        "endpoint": _literal("/v1/embeddings"),
        "model": _NULLABLE_STRING,
        "errors": _BATCH_ERRORS,
        "input_file_id": _STRING,
        "completion_window": _literal("24h"),
        "status": _literal(
            "validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling", "cancelled"
        ),
        "output_file_id": _NULLABLE_STRING,
        "error_file_id": _NULLABLE_STRING,
        **{
            name: _TIMESTAMP
            for name in (
                "in_progress_at", "expires_at", "finalizing_at", "completed_at", "failed_at", "expired_at",
                "cancelling_at", "cancelled_at",
            )
        },
        "created_at": _INTEGER,
        "request_counts": _object(
            {name: _INTEGER for name in ("total", "completed", "failed")}, ["total", "completed", "failed"]
        ),
        "usage": {"type": "object", "nullable": True},
        "metadata": {"type": "object", "nullable": True, "additionalProperties": _STRING},
    },
    ["id", "object", "endpoint", "input_file_id", "completion_window", "status", "created_at"],
)  # fmt: skip
_FILE_REF, _BATCH_REF = "#/components/schemas/OpenAIFile", "#/components/schemas/Batch"
HTTPBODY_RESPONSES.update(
    {
        "embeddings.v1.FileService.CreateFile": _json("The uploaded file.", {"$ref": _FILE_REF}),
        "embeddings.v1.FileService.ListFiles": _json("One page of files.", _list_of(_FILE_REF)),
        "embeddings.v1.FileService.RetrieveFile": _json("The file.", {"$ref": _FILE_REF}),
        "embeddings.v1.FileService.DeleteFile": _json(
            "The deleted file.",
            _object(
                {"id": _STRING, "object": _literal("file"), "deleted": {"type": "boolean"}}, ["id", "object", "deleted"]
            ),
        ),
        "embeddings.v1.FileService.GetFileContent": {
            "description": "The file's bytes (JSONL for batch files), streamed.",
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        },
        "embeddings.v1.BatchService.CreateBatch": _json("The batch, validating.", {"$ref": _BATCH_REF}),
        "embeddings.v1.BatchService.RetrieveBatch": _json("The batch.", {"$ref": _BATCH_REF}),
        "embeddings.v1.BatchService.CancelBatch": _json("The batch, cancelling.", {"$ref": _BATCH_REF}),
        "embeddings.v1.BatchService.ListBatches": _json("One page of batches, newest first.", _list_of(_BATCH_REF)),
    }
)
# Request bodies the descriptor cannot describe: client-streaming google.api.HttpBody uploads, keyed by method.
HTTPBODY_REQUESTS: dict[str, dict[str, Any]] = {
    "embeddings.v1.FileService.CreateFile": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "purpose"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "A .jsonl file of requests, up to 200 MiB and 50,000 lines.",
                        },
                        "purpose": {"type": "string", "enum": ["batch"]},
                        "expires_after[anchor]": {"type": "string", "enum": ["created_at"]},
                        "expires_after[seconds]": {"type": "integer", "minimum": 3600, "maximum": 2592000},
                    },
                }
            }
        },
    }
}
ERROR_ENVELOPE = {
    "type": "object",
    "description": "OpenAI's error envelope: every error, from the server or from the gateway.",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": "string", "nullable": True},
                "code": {"type": "string", "nullable": True},
            },
        }
    },
}
# Methods callable without an API key, as the contract declares them (their operations get `security: []`).
OPEN_METHODS = frozenset(policy.full_name for policy in contract_policies().values() if policy.is_open)
BEARER = "apiKey"
_ERROR_RESPONSE = {
    "description": "An error in OpenAI's envelope.",
    "content": {_JSON: {"schema": {"$ref": "#/components/schemas/Error"}}},
}


@dataclass(frozen=True)
class Route:
    """One HTTP binding of an RPC."""

    service: str  # embeddings.v1.RestService
    method: descriptor_pb2.MethodDescriptorProto
    verb: str
    template: str  # as written in the proto, e.g. /v1/models/{model=**}
    body: str
    comment: str

    @property
    def full_method(self) -> str:
        return f"{self.service}.{self.method.name}"

    @property
    def path(self) -> str:
        """The OpenAPI path: `{model=**}` becomes `{model}`."""
        return re.sub(r"\{([\w.]+)(=[^}]*)?\}", r"{\1}", self.template)

    @property
    def path_params(self) -> list[str]:
        return re.findall(r"\{([\w.]+)", self.template)


def load_files(descriptor_path: Path = DESCRIPTOR) -> list[descriptor_pb2.FileDescriptorProto]:
    return list(descriptor_pb2.FileDescriptorSet.FromString(descriptor_path.read_bytes()).file)


def _comments(proto: descriptor_pb2.FileDescriptorProto) -> dict[tuple[int, ...], str]:
    return {
        tuple(loc.path): " ".join(loc.leading_comments.split())
        for loc in proto.source_code_info.location
        if loc.leading_comments
    }


def _bindings(rule: http_pb2.HttpRule) -> Iterator[tuple[str, str, str]]:
    for verb in VERBS:
        template = getattr(rule, verb)
        if template:
            yield verb, template, rule.body
    for extra in rule.additional_bindings:
        yield from _bindings(extra)


def http_routes(files: list[descriptor_pb2.FileDescriptorProto]) -> list[Route]:
    """Every HTTP binding of every service in the descriptor set."""
    routes = []
    for proto in files:
        comments = _comments(proto)
        for s, service in enumerate(proto.service):
            for m, method in enumerate(service.method):
                if not method.options.HasExtension(annotations_pb2.http):
                    continue
                rule = method.options.Extensions[annotations_pb2.http]
                comment = comments.get((6, s, 2, m), "")
                for verb, template, body in _bindings(rule):
                    routes.append(Route(f"{proto.package}.{service.name}", method, verb, template, body, comment))
    return routes


class SchemaBuilder:
    """Message schemas, by full name, with their proto comments as descriptions."""

    def __init__(self, files: list[descriptor_pb2.FileDescriptorProto]) -> None:
        self.messages: dict[str, tuple[descriptor_pb2.DescriptorProto, dict[int, str], str]] = {}
        self.enums: dict[str, list[str]] = {}
        for proto in files:
            comments = _comments(proto)
            for i, message in enumerate(proto.message_type):
                self._add(f".{proto.package}", message, comments, (4, i))
            for enum in proto.enum_type:
                self.enums[f".{proto.package}.{enum.name}"] = [v.name for v in enum.value]
        self.schemas: dict[str, dict[str, Any]] = {}

    def _add(self, prefix: str, message, comments, path: tuple[int, ...]) -> None:
        name = f"{prefix}.{message.name}"
        field_comments = {j: comments.get((*path, 2, j), "") for j in range(len(message.field))}
        self.messages[name] = (message, field_comments, comments.get(path, ""))
        for k, nested in enumerate(message.nested_type):
            self._add(name, nested, comments, (*path, 3, k))
        for enum in message.enum_type:
            self.enums[f"{name}.{enum.name}"] = [v.name for v in enum.value]

    def ref(self, full_name: str) -> dict[str, Any]:
        """A $ref to the message's schema (built on first use)."""
        if full_name in WELL_KNOWN:
            return WELL_KNOWN[full_name]
        short = full_name.rsplit(".", 1)[-1]
        if short not in self.schemas:
            self.schemas[short] = {}  # recursion guard
            self.schemas[short] = self.message_schema(full_name)
        return {"$ref": f"#/components/schemas/{short}"}

    def message_schema(self, full_name: str, skip: frozenset[str] = frozenset()) -> dict[str, Any]:
        message, field_comments, comment = self.messages[full_name]
        properties = {}
        required = []
        for j, field in enumerate(message.field):
            if field.name in skip:
                continue
            schema = dict(self.field_schema(field))
            if f"{full_name}.{field.name}" in STRING_ENUMS:
                schema["enum"] = STRING_ENUMS[f"{full_name}.{field.name}"]
            if field_comments.get(j):
                schema = {**schema, "description": field_comments[j]} if "$ref" not in schema else schema
            properties[field.name] = schema
            if field_behavior_pb2.REQUIRED in field.options.Extensions[field_behavior_pb2.field_behavior]:
                required.append(field.name)
        schema: dict[str, Any] = {"type": "object", "properties": properties}
        if required:
            schema["required"] = required
        if comment:
            schema["description"] = comment
        return schema

    def field_schema(self, field: descriptor_pb2.FieldDescriptorProto) -> dict[str, Any]:
        if field.type == F.TYPE_MESSAGE:
            entry = self.messages.get(field.type_name)
            if entry is not None and entry[0].options.map_entry:
                value_field = entry[0].field[1]
                return {"type": "object", "additionalProperties": self.field_schema(value_field)}
            item = self.ref(field.type_name)
        elif field.type == F.TYPE_ENUM:
            item = {"type": "string", "enum": self.enums[field.type_name]}
        else:
            item = dict(_SCALARS[field.type])
        if field.label == F.LABEL_REPEATED:
            return {"type": "array", "items": item}
        return item


def fields_not_taken(full_method: str, request_name: str) -> frozenset[str]:
    """The fields of the method's request message that the method refuses (see ONLY_FOR), by name."""
    prefix = f"{request_name.lstrip('.')}."
    return frozenset(
        key.removeprefix(prefix)
        for key, methods in ONLY_FOR.items()
        if key.startswith(prefix) and full_method not in methods
    )


def _parameter(name: str, where: str, schema: dict[str, Any], description: str = "") -> dict[str, Any]:
    parameter = {"name": name, "in": where, "required": where == "path", "schema": schema}
    if description:
        parameter["description"] = description
    return parameter


def _operation(route: Route, builder: SchemaBuilder, operation_id: str, open_method: bool) -> dict[str, Any]:
    request_name = route.method.input_type
    message, field_comments, _ = builder.messages[request_name]
    by_name = {f.name: (f, field_comments.get(j, "")) for j, f in enumerate(message.field)}
    params = [_parameter(p, "path", builder.field_schema(by_name[p][0]), by_name[p][1]) for p in route.path_params]
    operation: dict[str, Any] = {
        "operationId": operation_id,
        "summary": route.comment.split(". ")[0].rstrip("."),
        "description": route.comment,
        "tags": [route.service.rsplit(".", 1)[-1]],
    }
    path_fields = frozenset(route.path_params)
    left_out = path_fields | fields_not_taken(route.full_method, request_name)
    if route.full_method in HTTPBODY_REQUESTS:
        operation["requestBody"] = HTTPBODY_REQUESTS[route.full_method]
    elif route.body == "*":
        schema = builder.message_schema(request_name, skip=left_out)
        operation["requestBody"] = {"required": True, "content": {_JSON: {"schema": schema}}}
    else:
        for name, (field, comment) in by_name.items():
            if name not in left_out and field.type != F.TYPE_MESSAGE:
                params.append(_parameter(name, "query", builder.field_schema(field), comment))
    if params:
        operation["parameters"] = params
    if route.method.output_type == HTTPBODY:
        if route.full_method not in HTTPBODY_RESPONSES:
            raise KeyError(f"{route.full_method} returns google.api.HttpBody: describe its body in HTTPBODY_RESPONSES")
        success = HTTPBODY_RESPONSES[route.full_method]
    else:
        success = {
            "description": "OK",
            "content": {_JSON: {"schema": builder.ref(route.method.output_type)}},
        }
    operation["responses"] = {"200": success, "4XX": _ERROR_RESPONSE, "5XX": _ERROR_RESPONSE}
    if open_method:
        operation["security"] = []
    return operation


def build_document(files: list[descriptor_pb2.FileDescriptorProto]) -> dict[str, Any]:
    """The document; MissingPolicy if a method with an HTTP route declares no policy."""
    builder = SchemaBuilder(files)
    routes = http_routes(files)
    policies = {route.full_method: policy_of(route.service, route.method) for route in routes}
    missing = {name for name, policy in policies.items() if policy is None}
    if missing:
        raise MissingPolicy(missing)
    paths: dict[str, dict[str, Any]] = {}
    seen: dict[str, int] = {}
    for route in routes:
        base = f"{route.service.rsplit('.', 1)[-1]}_{route.method.name}"
        seen[base] = seen.get(base, 0) + 1
        operation_id = base if seen[base] == 1 else f"{base}_{seen[base]}"
        open_method = policies[route.full_method].is_open  # type: ignore[union-attr]
        paths.setdefault(route.path, {})[route.verb] = _operation(route, builder, operation_id, open_method)
    builder.schemas["CreateEmbeddingResponse"] = _EMBEDDING_LIST
    builder.schemas["Error"] = ERROR_ENVELOPE
    builder.schemas["OpenAIFile"] = _FILE
    builder.schemas["Batch"] = _BATCH
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "Embeddings service",
            "version": "v1",
            "description": "OpenAI-compatible embeddings, the Batch API (files and batches), async jobs, webhooks and "
            "operator routes, served by Envoy's gRPC-JSON transcoder from the embeddings.v1 contract. Generated from "
            "the descriptor set by tools/openapi.py.",
        },
        "servers": [{"url": "http://127.0.0.1:8080"}],
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": dict(sorted(builder.schemas.items())),
            "securitySchemes": {
                BEARER: {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key (sk-...), as `Authorization: Bearer`. Not needed while the server "
                    "runs open (no keys, loopback).",
                }
            },
        },
        # A key, or none while the server runs open.
        "security": [{BEARER: []}, {}],
    }


def write(descriptor_path: Path = DESCRIPTOR, output: Path = OUTPUT) -> dict[str, Any]:
    document = build_document(load_files(descriptor_path))
    output.write_text(json.dumps(document, indent=1, sort_keys=False) + "\n")
    return document


def main() -> int:
    document = write()
    print(f"openapi: {len(document['paths'])} path(s) -> {OUTPUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
