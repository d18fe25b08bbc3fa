"""The standard metric names beside the service's own: process_*, a build_info, and the gRPC server metrics that
common dashboards query (go-grpc-prometheus names and labels); and tracing switched on by the standard OTEL_*
variables alone."""

from __future__ import annotations

from service.observability.metrics import Metrics, grpc_code_label
from service.observability.tracing import SERVICE_NAME, Exporter, exporter_from


def series(text: str, name: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(name)]


def test_grpc_server_metrics_process_metrics_and_build_info() -> None:
    metrics = Metrics()
    metrics.record_grpc("embeddings.v1.EmbeddingService/Embed", "OK", 0.02)
    metrics.record_grpc("embeddings.v1.EmbeddingService/Embed", "INVALID_ARGUMENT", 0.01)
    text = metrics.exposition().decode()
    handled = series(text, "grpc_server_handled_total{")
    assert (
        'grpc_server_handled_total{grpc_code="InvalidArgument",grpc_method="Embed",'
        'grpc_service="embeddings.v1.EmbeddingService"} 1.0' in handled
    )
    assert len(handled) == 2
    assert series(text, "grpc_server_handling_seconds_count{")[0].endswith(" 2.0")
    assert series(text, "process_resident_memory_bytes ") and series(text, "process_cpu_seconds_total ")
    (build,) = series(text, "embeddings_build_info{")
    assert 'version="' in build and 'onnxruntime="' in build and build.endswith(" 1.0")


def test_grpc_code_labels_are_the_standard_spelling() -> None:
    assert [grpc_code_label(c) for c in ("OK", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED")] == [
        "OK",
        "ResourceExhausted",
        "DeadlineExceeded",
    ]


def test_otel_variables_turn_tracing_on_with_tls_unless_told_otherwise() -> None:
    assert exporter_from("", {}) is None
    assert exporter_from("", {"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4317"}) == Exporter(
        "collector:4317", False, SERVICE_NAME
    )
    assert exporter_from("", {"OTEL_EXPORTER_OTLP_ENDPOINT": "https://c:4317", "OTEL_EXPORTER_OTLP_INSECURE": "true"})
    assert not exporter_from("", {"OTEL_EXPORTER_OTLP_ENDPOINT": "https://c:4317"}).insecure
    told = {"OTEL_EXPORTER_OTLP_ENDPOINT": "c:4317", "OTEL_EXPORTER_OTLP_INSECURE": "true", "OTEL_SERVICE_NAME": "x"}
    assert exporter_from("", told) == Exporter("c:4317", True, "x")
    assert exporter_from("", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}).insecure
    # The server's own setting wins; the traces-specific variable before the general one.
    assert exporter_from("http://mine:4317", told).endpoint == "http://mine:4317"
    both = {"OTEL_EXPORTER_OTLP_ENDPOINT": "a:1", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "b:2"}
    assert exporter_from("", both).endpoint == "b:2"
