"""Optional OpenTelemetry tracing, exported over OTLP/gRPC; off unless `otlp_endpoint` is set, or the standard
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT` (either alone turns it on; `otlp_endpoint` wins).
`OTEL_SERVICE_NAME` names the service. TLS unless told otherwise: an `http://` endpoint, or
`OTEL_EXPORTER_OTLP_INSECURE=true` (or `..._TRACES_INSECURE`), is plaintext; `https://` or a bare host:port is TLS.

One span per call (kind SERVER, the child of the W3C `traceparent` the caller sent: Envoy forwards its own span's
context as gRPC metadata), with children `tokenize`, `queue` and `inference` laid out from the engine's measured
timings once the engine answers, so the engine's hot path creates no span objects. When tracing is off nothing is
created at all. The provider belongs to the server (no global tracer provider is installed).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from service.observability.context import CallInfo

SERVICE_NAME = "embeddings-service"
_PROPAGATED = ("traceparent", "tracestate")


def endpoint_address(endpoint: str) -> tuple[str, int]:
    """(host, port) of an OTLP/gRPC endpoint given as `http://host:port` or `host:port` (default port 4317)."""
    parts = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
    if not parts.hostname:
        raise ValueError(f"otlp_endpoint {endpoint!r} must look like http://host:4317")
    return parts.hostname, parts.port or 4317


@dataclass(frozen=True)
class Exporter:
    """Where spans go, resolved from the server's setting and the standard OTEL_* variables."""

    endpoint: str
    insecure: bool
    service_name: str = SERVICE_NAME


def _true(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def exporter_from(otlp_endpoint: str, environ: Mapping[str, str]) -> Exporter | None:
    """The exporter `otlp_endpoint` or the OTEL_* variables name; None when neither does (tracing off)."""
    endpoint = (
        otlp_endpoint
        or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
        or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    )
    if not endpoint:
        return None
    scheme = urlsplit(endpoint).scheme if "://" in endpoint else ""
    told = environ.get("OTEL_EXPORTER_OTLP_TRACES_INSECURE") or environ.get("OTEL_EXPORTER_OTLP_INSECURE")
    insecure = scheme == "http" or (scheme != "https" and _true(told))
    name = environ.get("OTEL_SERVICE_NAME", "").strip() or SERVICE_NAME
    return Exporter(endpoint, insecure, name)


class Tracing:
    def __init__(self, exporter: Exporter) -> None:
        host, port = endpoint_address(exporter.endpoint)
        self._provider = TracerProvider(resource=Resource.create({"service.name": exporter.service_name}))
        exporter = OTLPSpanExporter(endpoint=f"{host}:{port}", insecure=exporter.insecure)
        # Exported every second (the SDK's default is five), off the serving threads.
        self._provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=1000))
        self._tracer = self._provider.get_tracer("service.observability")
        self._propagator = TraceContextTextMapPropagator()

    def start_call(self, info: CallInfo, metadata: Sequence[tuple[str, str | bytes]] | None) -> None:
        carrier = {key: value for key, value in metadata or () if key in _PROPAGATED and isinstance(value, str)}
        parent = self._propagator.extract(carrier) if carrier else None
        info.span = self._tracer.start_span(
            info.rpc,
            context=parent,
            kind=SpanKind.SERVER,
            start_time=info.started_ns,
            attributes={"rpc.system": "grpc", "rpc.method": info.rpc, "request_id": info.request_id},
        )

    def end_call(self, info: CallInfo, code: str, end_ns: int) -> None:
        span = info.span
        if span is None:
            return
        if info.timings is not None:
            self._engine_spans(info)
        if info.model:
            span.set_attribute("embeddings.model", info.model)
        span.set_attribute("embeddings.tenant", info.tenant)
        span.set_attribute("rpc.grpc.status_code", code)
        if code != "OK":
            span.set_status(Status(StatusCode.ERROR, code))
        span.end(end_time=end_ns)

    def _engine_spans(self, info: CallInfo) -> None:
        """tokenize -> queue -> inference, back to back, ending when the engine answered."""
        timings = info.timings
        parent = set_span_in_context(info.span)
        inference_start = info.engine_done_ns - int(timings.inference_s * 1e9)
        queue_start = inference_start - int(timings.queue_s * 1e9)
        tokenize_start = queue_start - int(timings.tokenize_s * 1e9)
        attributes = {"embeddings.model": info.model, "embeddings.inputs": info.inputs}
        for name, start, end in (
            ("tokenize", tokenize_start, queue_start),
            ("queue", queue_start, inference_start),
            ("inference", inference_start, info.engine_done_ns),
        ):
            child = self._tracer.start_span(name, context=parent, start_time=start, attributes=attributes)
            child.end(end_time=end)

    def shutdown(self) -> None:
        """Export what is buffered, then stop."""
        self._provider.shutdown()
