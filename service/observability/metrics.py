"""Prometheus metrics of one server, in its own `CollectorRegistry` (no process-global state).

Exposed as `GET /metrics` through Envoy (OpsService.GetMetrics returns the text exposition as an HttpBody).
Every value is recorded on the server's event loop thread (servicers, the batcher's completion callbacks, the job
workers) and read there when scraped, so the series here are plain Python numbers without locks: a counter
increment is a dict update, a histogram observation a bisect and two additions (prometheus_client's own metric
types take a lock per update, ~4x the cost on this path). `prometheus_client` turns them into the text format at
scrape time. Queue depth and job counts are read only when scraped.
"""

from __future__ import annotations

import platform
from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from typing import TYPE_CHECKING, ClassVar

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from service.observability.context import CallInfo

if TYPE_CHECKING:
    from service.engine.cache import CacheCounters, LocalVectors

# What generate_latest writes: the classic text format, which every Prometheus version scrapes.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "embeddings_"
GRPC_LABELS = ("grpc_service", "grpc_method")


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "unknown"


BUILD_LABELS = {
    "version": _version("embedgate"),
    "python": platform.python_version(),
    "grpcio": _version("grpcio"),
    "onnxruntime": _version("onnxruntime-gpu") if _version("onnxruntime-gpu") != "unknown" else _version("onnxruntime"),
}


def grpc_code_label(code: str) -> str:
    """grpc.StatusCode names as go-grpc-prometheus writes them: OK, InvalidArgument, ResourceExhausted, ..."""
    return "OK" if code == "OK" else "".join(part.capitalize() for part in code.split("_"))


JOB_STATUSES = ("queued", "in_progress", "completed", "failed", "cancelled")
# Seconds: sub-millisecond tokenization up to multi-second long-text batches.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
BATCH_TOKEN_BUCKETS = (16, 64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536)

Labels = tuple[str, ...]


@dataclass
class _ValueSeries:
    """One value per label set: stored (`values`), or read at scrape time (`functions`: counts kept elsewhere, a
    backend's), exposed as a `metric_family`."""

    name: str
    doc: str
    labels: Labels
    values: dict[Labels, float] = field(default_factory=dict)
    functions: dict[Labels, Callable[[], float]] = field(default_factory=dict)
    metric_family: ClassVar[type[CounterMetricFamily | GaugeMetricFamily]]

    def family(self) -> Metric:
        family = self.metric_family(self.name, self.doc, labels=self.labels)
        for key, value in self.values.items():
            family.add_metric(key, value)
        for key, read in self.functions.items():
            family.add_metric(key, float(read()))
        return family


@dataclass
class CounterSeries(_ValueSeries):
    metric_family: ClassVar[type[CounterMetricFamily]] = CounterMetricFamily

    def inc(self, key: Labels, amount: float = 1.0) -> None:
        self.values[key] = self.values.get(key, 0.0) + amount


@dataclass
class GaugeSeries(_ValueSeries):
    metric_family: ClassVar[type[GaugeMetricFamily]] = GaugeMetricFamily


@dataclass(slots=True)
class _Buckets:
    counts: list[int]
    total: float = 0.0


@dataclass
class HistogramSeries:
    name: str
    doc: str
    labels: Labels
    bounds: tuple[float, ...] = LATENCY_BUCKETS
    series: dict[Labels, _Buckets] = field(default_factory=dict)

    def observe(self, key: Labels, value: float) -> None:
        buckets = self.series.get(key)
        if buckets is None:
            buckets = self.series[key] = _Buckets([0] * (len(self.bounds) + 1))
        buckets.counts[bisect_left(self.bounds, value)] += 1  # the first bound >= value: Prometheus' `le`
        buckets.total += value

    def family(self) -> Metric:
        family = HistogramMetricFamily(self.name, self.doc, labels=self.labels)
        for key, buckets in self.series.items():
            cumulative, running = [], 0
            for bound, count in zip((*map(_bound, self.bounds), "+Inf"), buckets.counts, strict=True):
                running += count
                cumulative.append((bound, running))
            family.add_metric(key, cumulative, buckets.total)
        return family


def _bound(value: float) -> str:
    return str(float(value))


class Metrics(Collector):
    """Every metric the service exports. Pass it to whatever records; `registry` is what gets scraped."""

    def __init__(self) -> None:
        self.requests = CounterSeries(
            PREFIX + "requests", "Calls answered, by RPC, model and gRPC status code.", ("rpc", "model", "code")
        )
        self.request_seconds = HistogramSeries(
            PREFIX + "request_duration_seconds", "End-to-end time of a call in the server.", ("rpc",)
        )
        self.tokenize_seconds = HistogramSeries(
            PREFIX + "tokenize_duration_seconds", "Time a call spent tokenizing.", ("model",)
        )
        self.queue_seconds = HistogramSeries(
            PREFIX + "queue_wait_seconds", "Time a call waited for its first batch.", ("model",)
        )
        self.inference_seconds = HistogramSeries(
            PREFIX + "inference_duration_seconds", "Time one inference batch ran.", ("model",)
        )
        self.batch_size = HistogramSeries(
            PREFIX + "batch_size", "Inputs per inference batch.", ("model",), BATCH_SIZE_BUCKETS
        )
        self.batch_tokens = HistogramSeries(
            PREFIX + "batch_tokens", "Padded tokens (longest x inputs) per batch.", ("model",), BATCH_TOKEN_BUCKETS
        )
        self.queue_depth = GaugeSeries(PREFIX + "queue_depth", "Interactive inputs waiting for inference.", ("model",))
        self.solo_graph_batches = CounterSeries(
            PREFIX + "solo_graph_batches",
            "Lone small batches run from the model's offline-fused solo graph (start-up warm-up included).",
            ("model",),
        )
        self.tokens = CounterSeries(PREFIX + "tokens", "Tokens embedded (calls and async jobs).", ("model", "tenant"))
        self.truncated_inputs = CounterSeries(
            PREFIX + "truncated_inputs", "Inputs cut to the model's limit (calls and async jobs).", ("model",)
        )
        self.jobs = GaugeSeries(PREFIX + "jobs", "Async jobs in the store, by status.", ("status",))
        self.job_chunks = CounterSeries(PREFIX + "job_chunks", "Async job chunks embedded.", ("model",))
        self.job_inputs = CounterSeries(PREFIX + "job_inputs", "Async job inputs embedded.", ("model",))
        self.webhook_deliveries = CounterSeries(
            PREFIX + "webhook_deliveries", "Webhook delivery attempts, by outcome.", ("outcome",)
        )
        self.rate_limited = CounterSeries(
            PREFIX + "rate_limited", "Calls refused by a rate limit.", ("tenant", "limit")
        )
        # The names and labels standard gRPC dashboards use (go-grpc-prometheus), beside the service's own.
        self.grpc_handled = CounterSeries(
            "grpc_server_handled", "RPCs completed on the server, by status code.", (*GRPC_LABELS, "grpc_code")
        )
        self.grpc_handling_seconds = HistogramSeries(
            "grpc_server_handling_seconds", "Time the server took to answer an RPC.", GRPC_LABELS
        )
        self.build_info = GaugeSeries(
            PREFIX + "build_info", "1, labelled with the versions this server runs.", tuple(BUILD_LABELS)
        )
        self.build_info.values[tuple(BUILD_LABELS.values())] = 1.0
        # The embedding cache's counters, by model, and its in-process tier: read when scraped.
        self._cache_counters: dict[str, CacheCounters] = {}
        self._cache_local: LocalVectors | None = None
        # (method, code) -> the label tuples of record_grpc: a bounded set (the served methods x 17 codes).
        self._grpc_keys: dict[tuple[str, str], tuple[Labels, Labels]] = {}
        self.registry = CollectorRegistry()
        self.registry.register(self)
        # process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds, ... (Linux /proc).
        ProcessCollector(registry=self.registry)

    def collect(self) -> Iterator[Metric]:
        for series in vars(self).values():
            if isinstance(series, _ValueSeries | HistogramSeries):
                yield series.family()
        yield from self._cache_families()

    def _cache_families(self) -> Iterator[Metric]:
        hits = CounterMetricFamily(
            PREFIX + "cache_hits", "Inputs served from the embedding cache.", labels=("model", "tier")
        )
        misses = CounterMetricFamily(
            PREFIX + "cache_misses", "Distinct inputs the cache lacked (embedded).", labels=("model",)
        )
        repeats = CounterMetricFamily(
            PREFIX + "deduplicated_inputs",
            "Inputs repeating another input of their call (embedded once).",
            labels=("model",),
        )
        for model, counters in self._cache_counters.items():
            hits.add_metric((model, "local"), counters.hits)
            hits.add_metric((model, "shared"), counters.shared_hits)
            misses.add_metric((model,), counters.misses)
            repeats.add_metric((model,), counters.deduplicated)
        yield from (hits, misses, repeats)
        local = self._cache_local
        if local is not None:
            yield CounterMetricFamily(
                PREFIX + "cache_evictions", "Entries evicted from the in-process cache.", value=local.evictions
            )
            yield GaugeMetricFamily(PREFIX + "cache_bytes", "Bytes held by the in-process cache.", value=local.bytes)
            yield GaugeMetricFamily(PREFIX + "cache_entries", "Vectors held by the in-process cache.", value=len(local))

    # --- recording (event loop thread only) ---------------------------------------------------------------------

    def record_call(self, info: CallInfo, code: str, seconds: float) -> None:
        self.requests.inc((info.rpc, info.model, code))
        self.request_seconds.observe((info.rpc,), seconds)
        timings = info.timings
        if timings is not None:
            model = (info.model,)
            self.tokenize_seconds.observe(model, timings.tokenize_s)
            self.queue_seconds.observe(model, timings.queue_s)
            self.tokens.inc((info.model, info.tenant), info.tokens)
            if info.truncated:
                self.truncated_inputs.inc(model, info.truncated)

    def record_grpc(self, full_method: str, code: str, seconds: float) -> None:
        """`full_method` is "package.Service/Method"; `code` a grpc.StatusCode name (INVALID_ARGUMENT)."""
        keys = self._grpc_keys.get((full_method, code))
        if keys is None:  # the labels of a method and code, worked out once
            service, _, method = full_method.partition("/")
            keys = self._grpc_keys[full_method, code] = ((service, method, grpc_code_label(code)), (service, method))
        self.grpc_handled.inc(keys[0])
        self.grpc_handling_seconds.observe(keys[1], seconds)

    def batch_observer(self, model: str) -> Callable[[int, int, float], None]:
        """The batcher's per-batch hook for `model` (called on the event loop when a batch finishes)."""
        key = (model,)
        size, tokens, seconds = self.batch_size, self.batch_tokens, self.inference_seconds

        def observe(inputs: int, padded_tokens: int, run_s: float) -> None:
            size.observe(key, inputs)
            tokens.observe(key, padded_tokens)
            seconds.observe(key, run_s)

        return observe

    def watch_queue(self, model: str, depth: Callable[[], float]) -> None:
        self.queue_depth.functions[(model,)] = depth

    def watch_solo_graph(self, model: str, batches: Callable[[], float]) -> None:
        self.solo_graph_batches.functions[(model,)] = batches

    def watch_cache(self, model: str, counters: CacheCounters) -> None:
        self._cache_counters[model] = counters

    def watch_cache_size(self, local: LocalVectors) -> None:
        self._cache_local = local

    def record_chunk(self, model: str, tenant: str, inputs: int, tokens: int, truncated: int = 0) -> None:
        self.job_chunks.inc((model,))
        self.job_inputs.inc((model,), inputs)
        self.tokens.inc((model, tenant), tokens)
        if truncated:
            self.truncated_inputs.inc((model,), truncated)

    def record_delivery(self, outcome: str) -> None:
        self.webhook_deliveries.inc((outcome,))

    def record_rate_limited(self, tenant: str, limit: str) -> None:
        self.rate_limited.inc((tenant, limit))

    def set_job_counts(self, counts: Mapping[str, int]) -> None:
        for status in JOB_STATUSES:
            self.jobs.values[(status,)] = counts.get(status, 0)

    def exposition(self) -> bytes:
        """The Prometheus text format of everything registered (call it on the event loop)."""
        return generate_latest(self.registry)
