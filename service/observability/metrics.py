"""Prometheus metrics of one server, in its own `CollectorRegistry` (no process-global state).

Exposed as `GET /metrics` through Envoy (OpsService.GetMetrics returns the text exposition as an HttpBody).
Hot-path cost: a handful of counter increments and histogram observations per call, with labelled children
cached in plain dicts (no `.labels()` lookup, no per-input work); batch metrics are recorded once per batch,
queue depth and job counts are read only when scraped.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

from service.observability.context import CallInfo

# What generate_latest writes: the classic text format, which every Prometheus version scrapes.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "embeddings_"
JOB_STATUSES = ("queued", "in_progress", "completed", "failed", "cancelled")
# Seconds: sub-millisecond tokenization up to multi-second long-text batches.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
BATCH_TOKEN_BUCKETS = (16, 64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536)


@dataclass
class Metrics:
    """Every metric the service exports. Pass it to whatever records; `registry` is what gets scraped."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        counter, gauge, histogram = self._counter, self._gauge, self._histogram
        self.requests = counter(
            "requests", "Calls answered, by RPC, model and gRPC status code.", "rpc", "model", "code"
        )
        self.request_seconds = histogram("request_duration_seconds", "End-to-end time of a call in the server.", "rpc")
        self.tokenize_seconds = histogram("tokenize_duration_seconds", "Time a call spent tokenizing.", "model")
        self.queue_seconds = histogram("queue_wait_seconds", "Time a call waited for its first batch.", "model")
        self.inference_seconds = histogram("inference_duration_seconds", "Time one inference batch ran.", "model")
        self.batch_size = histogram("batch_size", "Inputs per inference batch.", "model", buckets=BATCH_SIZE_BUCKETS)
        self.batch_tokens = histogram(
            "batch_tokens",
            "Padded tokens (longest x inputs) per inference batch.",
            "model",
            buckets=BATCH_TOKEN_BUCKETS,
        )
        self.queue_depth = gauge("queue_depth", "Interactive inputs waiting for inference.", "model")
        self.tokens = counter("tokens", "Tokens embedded (calls and async jobs).", "model", "tenant")
        self.jobs = gauge("jobs", "Async jobs in the store, by status.", "status")
        self.job_chunks = counter("job_chunks", "Async job chunks embedded.", "model")
        self.job_inputs = counter("job_inputs", "Async job inputs embedded.", "model")
        self.webhook_deliveries = counter("webhook_deliveries", "Webhook delivery attempts, by outcome.", "outcome")
        self.rate_limited = counter("rate_limited", "Calls refused by a rate limit.", "tenant", "limit")
        self._children: dict[tuple, object] = {}

    def _counter(self, name: str, doc: str, *labels: str) -> Counter:
        return Counter(PREFIX + name, doc, labels, registry=self.registry)

    def _gauge(self, name: str, doc: str, *labels: str) -> Gauge:
        return Gauge(PREFIX + name, doc, labels, registry=self.registry)

    def _histogram(self, name: str, doc: str, *labels: str, buckets: tuple = LATENCY_BUCKETS) -> Histogram:
        return Histogram(PREFIX + name, doc, labels, buckets=buckets, registry=self.registry)

    def _child(self, metric, *labels: str):
        """The labelled child, cached: `.labels()` takes a lock and builds a tuple on every call."""
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    # --- recording ---------------------------------------------------------------------------------------------

    def record_call(self, info: CallInfo, code: str, seconds: float) -> None:
        self._child(self.requests, info.rpc, info.model, code).inc()
        self._child(self.request_seconds, info.rpc).observe(seconds)
        timings = info.timings
        if timings is not None:
            self._child(self.tokenize_seconds, info.model).observe(timings.tokenize_s)
            self._child(self.queue_seconds, info.model).observe(timings.queue_s)
            self.record_tokens(info.model, info.tenant, info.tokens)

    def record_tokens(self, model: str, tenant: str, tokens: int) -> None:
        self._child(self.tokens, model, tenant).inc(tokens)

    def batch_observer(self, model: str) -> Callable[[int, int, float], None]:
        """The batcher's per-batch hook for `model`."""
        size, tokens, seconds = (
            self.batch_size.labels(model),
            self.batch_tokens.labels(model),
            self.inference_seconds.labels(model),
        )

        def observe(inputs: int, padded_tokens: int, run_s: float) -> None:
            size.observe(inputs)
            tokens.observe(padded_tokens)
            seconds.observe(run_s)

        return observe

    def watch_queue(self, model: str, depth: Callable[[], float]) -> None:
        self.queue_depth.labels(model).set_function(depth)

    def record_chunk(self, model: str, tenant: str, inputs: int, tokens: int) -> None:
        self._child(self.job_chunks, model).inc()
        self._child(self.job_inputs, model).inc(inputs)
        self.record_tokens(model, tenant, tokens)

    def record_delivery(self, outcome: str) -> None:
        self._child(self.webhook_deliveries, outcome).inc()

    def record_rate_limited(self, tenant: str, limit: str) -> None:
        self._child(self.rate_limited, tenant, limit).inc()

    def set_job_counts(self, counts: Mapping[str, int]) -> None:
        for status in JOB_STATUSES:
            self.jobs.labels(status).set(counts.get(status, 0))

    def exposition(self) -> bytes:
        """The Prometheus text format of everything registered."""
        return generate_latest(self.registry)
