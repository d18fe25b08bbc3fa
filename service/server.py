"""Assembles the gRPC server: API servicers, health, reflection; start-up and graceful shutdown."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from service import assets, policy, reflection
from service._gen.embeddings.v1 import (
    batches_pb2_grpc,
    embeddings_pb2_grpc,
    jobs_pb2_grpc,
    ops_pb2_grpc,
    rest_pb2_grpc,
)
from service.access.control import AccessControl, Limits, OpenMode
from service.access.ext_authz import add_authorization_service
from service.access.interceptor import AuthInterceptor
from service.api.admin import add_admin_service
from service.api.batches import BatchServicer, FileServicer
from service.api.embeddings import EmbeddingServicer
from service.api.jobs import JobServicer
from service.api.ops import OpsServicer
from service.api.rest import RestServicer
from service.batches.files import UploadLimits
from service.batches.runner import BatchSettings, BatchWorkers, announce_batch
from service.compression import ResponseCompressionInterceptor
from service.config import Settings, from_settings
from service.embedding import Embedder
from service.engine.batcher import BatchLimits
from service.engine.registry import EngineOptions, ModelRegistry
from service.engine.tokenize import TokenIdDecoder
from service.jobs import webhooks
from service.jobs.runner import JobSettings, JobWorkers, announce
from service.message_bounds import MessageBoundsInterceptor
from service.observability.interceptor import TelemetryInterceptor
from service.observability.metrics import Metrics
from service.observability.tracing import Tracing, exporter_from
from service.pricing import PriceList
from service.stores import open_access_store, open_job_store, open_rate_limiter, open_vector_store

log = logging.getLogger(__name__)

# The contract's services: all are served, listed by reflection and reported by health, each method guarded by its
# declared policy.
CONTRACT_SERVICES = tuple(policy.contract_services())
OPENAPI_DOCUMENT = assets.OPENAPI
SWAGGER_UI = assets.SWAGGER_UI
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# Keepalive pings a client may send, even between calls (embeddings_client's grpc_config.json pings every 30 s).
MIN_CLIENT_PING_INTERVAL_MS = 20_000
METADATA_LIMIT_BYTES = 64 * 1024


def engine_options(settings: Settings) -> EngineOptions:
    """What the engine is told of the server's settings: every field of the engine's options (and of its batch
    limits) that a setting of the same name holds, plus the settings the engine takes parsed or renamed."""
    return from_settings(
        EngineOptions,
        settings,
        model_repo=Path(settings.model_repo),
        aliases=settings.alias_map(),
        provider_options=settings.provider_option_map(),
        batching=from_settings(BatchLimits, settings, background_min_share=settings.job_min_share),
    )


def job_settings(settings: Settings) -> JobSettings:
    """The job engine's settings, with the webhook retry schedule parsed."""
    schedule = webhooks.parse_delays(settings.webhook_retry_schedule)
    retry = webhooks.RetryPolicy(schedule, timeout_s=settings.webhook_timeout_s)
    return from_settings(JobSettings, settings, webhook_policy=retry)


class GenericHandlersOnly:
    """The server as the generated `add_*_to_server` functions (and health and reflection) see it: their handlers are
    added as generic handlers only, never also as registered methods.

    grpc.aio (1.85) keeps one pending request per registered method and, for every call it accepts, waits on all of
    them again (`asyncio.wait`: a done-callback added to and removed from each): with the contract's 42 methods that
    was work on the event loop proportional to the whole API for every call. Served as generic handlers, calls are
    matched by name (a dictionary per service) and one pending request serves them all. Measured with the null
    backend, two servers side by side, passes interleaved: server CPU per gRPC call -8% at 32 clients (1.15 -> 1.06
    ms on a slow day), -9% for one client (p50 -7%). Nothing else changes: grpc core's registered-method matching
    only saves the lookup these handlers do anyway.
    """

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server = server

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(self, service_name: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        """Left out: the same handlers are already added as a generic handler (which the generated code always does
        first)."""


class EmbeddingServer:
    """The running server. Listens at once (health NOT_SERVING), turns SERVING once every model is loaded."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        policies = policy.contract_policies()  # MissingPolicy (a ValueError): an RPC without one is never served
        self.access = access_control(settings)  # first: refuses to start open on a public address, at once
        self.registry = ModelRegistry(engine_options(settings), open_vector_store(settings))
        # The embed use case of every way in: the caller's models only, its limits charged, its usage metered.
        self.prices = PriceList(settings.price_map(), settings.currency)
        self.embedder = Embedder(
            self.registry, self.access, self.prices, cache_per_tenant=settings.cache_scope == "tenant"
        )
        self.health = health.aio.HealthServicer()
        self.serving = False
        self.metrics = Metrics()
        self.access.on_refusal = self.metrics.record_rate_limited
        exporter = exporter_from(settings.otlp_endpoint, os.environ)
        self.tracing = Tracing(exporter) if exporter is not None else None
        # Outermost first: gzip responses for the calls that ask; per-call telemetry; authentication before any
        # message is read; then each message measured against its method's cap before it is parsed.
        interceptors = [
            ResponseCompressionInterceptor(),
            TelemetryInterceptor(self.metrics, self.tracing),
            AuthInterceptor(self.access, policies),
            MessageBoundsInterceptor(policies, settings.max_message_bytes),
        ]
        self._server = grpc.aio.server(
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length", settings.max_message_bytes),
                ("grpc.max_send_message_length", settings.max_message_bytes),
                # Metadata: enough for anything the gateway lets through (16 KiB of headers, plus the copy of the
                # path and the few headers it adds), the same for direct callers; beyond, RESOURCE_EXHAUSTED.
                ("grpc.max_metadata_size", METADATA_LIMIT_BYTES),
                ("grpc.absolute_max_metadata_size", METADATA_LIMIT_BYTES),
                ("grpc.so_reuseport", int(settings.reuse_port)),
                # Accept the keepalive pings of the shipped client configuration (every 30 s, also between calls);
                # gRPC's default would answer pings more often than every 5 min with GOAWAY (too_many_pings).
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_recv_ping_interval_without_data_ms", MIN_CLIENT_PING_INTERVAL_MS),
            ],
        )
        services: Any = GenericHandlersOnly(self._server)  # what the generated add_*_to_server functions get
        embeddings_pb2_grpc.add_EmbeddingServiceServicer_to_server(EmbeddingServicer(self.embedder), services)
        self._decoder = TokenIdDecoder(self.registry.tokenize_executor)
        rest = RestServicer(self.embedder, self._decoder, lambda: self.serving)
        rest_pb2_grpc.add_RestServiceServicer_to_server(rest, services)
        self.job_settings = job_settings(settings)
        self.workers: JobWorkers | None = None
        # SQLite under data_dir, or PostgreSQL shared with other replicas (store_url).
        self.store = open_job_store(settings, announce)
        jobs = JobServicer(
            self.store,
            self.embedder,
            self._decoder,
            self.job_settings,
            on_new_job=lambda: self.workers.notify() if self.workers else None,
        )
        jobs_pb2_grpc.add_JobServiceServicer_to_server(jobs, services)
        # The Batch API: files and batches in the same store, run as jobs (service/batches).
        self.store.batch_announce = announce_batch
        self.batch_settings = from_settings(BatchSettings, settings)
        self.batch_workers: BatchWorkers | None = None
        upload_limits = from_settings(UploadLimits, settings)
        batches_pb2_grpc.add_FileServiceServicer_to_server(FileServicer(self.store, upload_limits), services)
        batch_servicer = BatchServicer(
            self.store,
            self.batch_settings,
            on_change=lambda: self.batch_workers.notify() if self.batch_workers else None,
        )
        batches_pb2_grpc.add_BatchServiceServicer_to_server(batch_servicer, services)
        add_admin_service(self.access, services, settings.currency)
        add_authorization_service(self.access, services)
        ops = OpsServicer(self.metrics, self.store.count_jobs_by_status, OPENAPI_DOCUMENT, SWAGGER_UI)
        ops_pb2_grpc.add_OpsServiceServicer_to_server(ops, services)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, services)
        reflection.enable([*CONTRACT_SERVICES, health.SERVICE_NAME], services)  # v1 and v1alpha
        self.port = 0
        self._warm_decoder: asyncio.Task | None = None

    async def _set_health(self, status: int) -> None:
        self.serving = status == SERVING
        for name in ("", *CONTRACT_SERVICES):
            await self.health.set(name, status)

    async def start(self) -> None:
        self.port = self._server.add_insecure_port(self.settings.address)
        if self.port == 0:
            raise OSError(f"cannot listen on {self.settings.address}")
        await self._set_health(NOT_SERVING)
        await self._server.start()
        log.info("grpc listening on %s:%d (loading models)", self.settings.host, self.port)
        await asyncio.get_running_loop().run_in_executor(None, self.registry.load)
        self.registry.start()
        await self.registry.cache.start()
        self._watch_engine()
        unpriced = self.prices.unknown(m.id for m in self.registry.models())
        if unpriced:
            log.warning("model_prices names models this server does not serve: %s", ", ".join(unpriced))
        self.workers = JobWorkers(
            self.store, self.embedder, self.job_settings, self.registry.inference_workers, self.metrics
        )
        self.workers.start()
        self.batch_workers = BatchWorkers(
            self.store, self.embedder, self._decoder, self.batch_settings, on_new_job=self.workers.notify
        )
        self.batch_workers.start()
        self.access.start()
        await self._set_health(SERVING)
        self._warm_decoder = asyncio.create_task(self._decoder.load())  # LangChain's token ids: no slow first call
        names = ", ".join(m.id for m in self.registry.models())
        log.info("ready: serving %s on %s:%d", names, self.settings.host, self.port)
        if self.access.running_open:
            log.warning("running open (no API keys): every caller has full access, admin included")
        elif self.access.active_keys == 0:
            log.warning("no active API key: every call is refused until one is created (python -m service.admin)")

    def _watch_engine(self) -> None:
        """Per-batch metrics from every model's batcher; queue depth read at scrape time."""
        for model in self.registry.models():
            model.batcher.on_batch = self.metrics.batch_observer(model.id)
            self.metrics.watch_queue(model.id, lambda batcher=model.batcher: batcher.queued_inputs)
            self.metrics.watch_cache(model.id, model.cache_counters)
        for model_id, batches in self.registry.solo_graph_counters().items():
            self.metrics.watch_solo_graph(model_id, batches)
        self.metrics.watch_cache_size(self.registry.cache.local)

    async def stop(self) -> None:
        """Refuse new calls, let in-flight calls finish (up to the grace period), then release the models."""
        log.info("shutting down: draining in-flight calls (grace %.0fs)", self.settings.shutdown_grace_s)
        self.serving = False
        await self.health.enter_graceful_shutdown()
        await self._server.stop(self.settings.shutdown_grace_s)
        if self.batch_workers is not None:
            await self.batch_workers.stop()  # a batch step cut short runs again when its lease expires
        if self.workers is not None:
            await self.workers.stop()  # a chunk cut short is leased again later: nothing is lost
        await self.access.stop()  # writes the last usage
        await self.registry.close()
        self.store.close()
        self.access.store.close()
        if self.tracing is not None:
            await asyncio.to_thread(self.tracing.shutdown)  # export the last spans
        log.info("stopped")


def access_control(settings: Settings) -> AccessControl:
    """Keys, limits and metering on the job store's database; ValueError when it must not start: no active key and
    a non-loopback address (its own or a gateway's), unless `allow_open`."""
    if not 0 <= settings.job_rate_limit_reserve < 1:
        raise ValueError(f"job_rate_limit_reserve must be in [0, 1), got {settings.job_rate_limit_reserve}")
    store = open_access_store(settings)
    mode = OpenMode((settings.host, *settings.gateway_hosts), settings.allow_open)
    refusal = mode.refusal(store.snapshot())
    if refusal is not None:
        store.close()
        raise ValueError(refusal)
    return AccessControl(store, from_settings(Limits, settings), open_mode=mode, limiter=open_rate_limiter(settings))


async def serve(settings: Settings) -> int:
    """Run until SIGTERM or SIGINT, then drain and return the exit code."""
    try:
        server = EmbeddingServer(settings)
    except (ValueError, OSError) as exc:
        log.error("configuration error: %s", exc)
        return 2
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    starting = asyncio.create_task(server.start())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if starting.done() and starting.exception() is not None:
        stopping.cancel()
        log.error("start-up failed: %s", starting.exception())
        await server.stop()
        return 1
    await stopping
    if not starting.done():
        starting.cancel()
        await asyncio.gather(starting, return_exceptions=True)
    await server.stop()
    return 0
