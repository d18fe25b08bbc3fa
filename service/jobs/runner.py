"""The workers behind async jobs: embed leased chunks, deliver webhook events, remove expired results.

All state lives in the job store, so any of these loops can die with the process and resume from the store: a
worker renews its chunk's lease while it works on it, so only a dead worker's chunk is claimed again (when the
lease runs out); a delivery is retried per its schedule.
Chunks go through the engine's background lane, so a running job never slows interactive calls down.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import secrets
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import orjson

from service import errors
from service.api.engine_errors import as_api_error
from service.config import setting
from service.embedding import Embedder
from service.engine import errors as engine
from service.engine.model import EmbedOptions, EmbedResult
from service.engine.quantize import FLOAT
from service.jobs import webhooks
from service.jobs.records import Chunk, ChunkVectors, Delivery, Job, NewAttempt
from service.jobs.store import JobStore
from service.observability.metrics import Metrics
from service.worker_loops import WorkerLoops, now_s, sweep_forever

log = logging.getLogger(__name__)


EVENT_TYPES = {
    "completed": "embedding.job.completed",
    "failed": "embedding.job.failed",
    "cancelled": "embedding.job.cancelled",
}


@dataclass(frozen=True)
class JobSettings:
    """How jobs are taken, cut and run (`from_settings`: each field the setting of its name, or the one it names)."""

    chunk_size: int = setting("job_chunk_size")
    lease_s: int = setting("job_lease_s")
    poll_s: float = 0.5
    # A chunk whose embedding failed this many times fails its job (takeovers of a dead worker's chunk never count).
    max_chunk_failures: int = 3
    expiry_sweep_s: float = setting("results_expiry_sweep_s")
    # Parsed by the server of webhook_retry_schedule and webhook_timeout_s.
    webhook_policy: webhooks.RetryPolicy = dataclasses.field(default_factory=webhooks.RetryPolicy)
    webhook_allow_private: bool = False
    max_inputs_per_job: int = 1_000_000
    # Webhook endpoints one tenant may have at once (0: no cap).
    max_webhooks_per_tenant: int = 100


def job_event_data(job: Job) -> dict[str, Any]:
    """The `data` of a job's webhook event."""
    data: dict[str, Any] = {
        "id": job.id,
        "object": "embedding.job",
        "status": job.status,
        "model": job.model,
        "usage": {"prompt_tokens": job.prompt_tokens, "total_tokens": job.prompt_tokens},
        "metadata": job.metadata,
        "results_url": f"/v1/async/jobs/{job.id}/results",
    }
    if job.error:
        data["error"] = job.error
    return data


def announce(job: Job, now: int) -> tuple[str, str] | None:
    """The event recorded in the same transaction that finishes a job (so a crash cannot lose its webhook)."""
    event_type = EVENT_TYPES.get(job.status)
    if event_type is None:
        return None
    return event_type, orjson.dumps(job_event_data(job)).decode()


def embed_options(options: dict[str, Any]) -> EmbedOptions:
    return EmbedOptions(
        dimensions=options.get("dimensions"),
        normalize=options.get("normalize"),
        truncate=options.get("truncate"),
        input_type=options.get("input_type", ""),
        embedding_type=options.get("embedding_type", FLOAT),  # jobs from before compact types: floats
    )


def stored_vectors(result: EmbedResult) -> np.ndarray:
    """The vectors as a job stores them: little-endian float32, or the int8/uint8 bytes of a compact type (binary
    types: packed bits, a byte per 8 dimensions)."""
    return result.vectors if result.vectors.dtype.itemsize == 1 else result.vectors.astype("<f4", copy=False)


class JobWorkers(WorkerLoops):
    """Chunk workers (as many as batches the engine runs at once), the webhook dispatcher and the expiry sweeper."""

    def __init__(
        self,
        store: JobStore,
        embedder: Embedder,
        settings: JobSettings,
        workers: int,
        metrics: Metrics | None = None,
    ) -> None:
        super().__init__(settings.poll_s)
        self._store = store
        self._metrics = metrics or Metrics()
        # Embeds chunks under their job's key's rate limits, and meters them.
        self._embedder = embedder
        self._settings = settings
        self._workers = workers
        self._owner = f"worker-{secrets.token_hex(6)}"
        self._sender = webhooks.WebhookSender(settings.webhook_policy, allow_private=settings.webhook_allow_private)

    def start(self) -> None:
        loops = {f"job-worker-{i}": self._chunk_loop() for i in range(self._workers)}
        loops["webhook-dispatcher"] = self._delivery_loop()
        loops["results-expiry"] = sweep_forever(
            self._settings.expiry_sweep_s, self._expire_results, log, "removed the results of %d expired job(s)",
            "expiring results failed",
        )  # fmt: skip
        self._spawn(loops)

    async def stop(self) -> None:
        await super().stop()
        await self._sender.aclose()

    # --- chunks -----------------------------------------------------------------------------------------------

    async def _chunk_loop(self) -> None:
        while True:
            try:
                chunk = await asyncio.to_thread(self._store.claim_chunk, self._owner, now_s(), self._lease_s)
            except Exception:
                log.exception("claiming a chunk failed")
                chunk = None
            if chunk is None:
                await self._idle()
                continue
            try:
                await self._run_leased(chunk)
            except Exception:
                log.exception("chunk %s/%d: recording its outcome failed (its lease runs out)", chunk.job_id, chunk.idx)

    @property
    def _lease_s(self) -> int:
        """The lease asked of the store: whole seconds from a truncated `now`, so one more second keeps every lease
        at least `lease_s` long."""
        return self._settings.lease_s + 1

    async def _run_leased(self, chunk: Chunk) -> None:
        """Embed a chunk while a heartbeat renews its lease, so a live worker keeps it however long the work takes
        (waiting for rate-limit room, for the engine, or embedding): only a dead worker's lease runs out and moves
        to another. A lease lost anyway (the job was cancelled or failed, or the store judged this worker dead)
        stops the work. A failure of the work is counted against the chunk and the chunk is given back at once."""
        work = asyncio.create_task(self._process(chunk), name=f"chunk {chunk.job_id}/{chunk.idx}")
        heartbeat = asyncio.create_task(self._heartbeat(chunk, work), name=f"lease {chunk.job_id}/{chunk.idx}")
        try:
            await asyncio.wait({work})
        finally:
            heartbeat.cancel()
            work.cancel()
            await asyncio.gather(work, heartbeat, return_exceptions=True)
        if not work.cancelled() and work.exception() is not None:
            await self._chunk_failed(chunk, work.exception())

    async def _heartbeat(self, chunk: Chunk, work: asyncio.Task) -> None:
        while True:
            await asyncio.sleep(self._settings.lease_s / 3)
            try:
                kept = await asyncio.to_thread(
                    self._store.renew_lease, chunk.job_id, chunk.idx, self._owner, now_s(), self._lease_s
                )
            except Exception:
                log.exception("renewing the lease of chunk %s/%d failed", chunk.job_id, chunk.idx)
                continue
            if not kept:
                log.info("chunk %s/%d: lease lost (job ended, or taken over): its work stops", chunk.job_id, chunk.idx)
                work.cancel()
                return

    async def _chunk_failed(self, chunk: Chunk, error: BaseException) -> None:
        log.error("chunk %s/%d failed", chunk.job_id, chunk.idx, exc_info=error)
        failures = await asyncio.to_thread(self._store.release_chunk, chunk.job_id, chunk.idx, self._owner, True)
        if failures is not None and failures >= self._settings.max_chunk_failures:
            known = isinstance(error, errors.ApiError | engine.EngineError)
            last = as_api_error(error).message if known else f"{type(error).__name__}: {error}"
            message = f"Inputs {chunk.start}..{chunk.start + chunk.count - 1} failed {failures} times; last: {last}"
            await asyncio.to_thread(
                self._store.fail_job, chunk.job_id, {"code": "chunk_failed", "message": message}, now_s()
            )
        self.notify()

    async def _process(self, chunk: Chunk) -> None:
        """Embed a chunk and store its vectors. An error that retrying cannot fix (the job's own inputs or options)
        fails the job; a busy or starting engine gives the chunk back; anything else raises (a counted failure)."""
        try:
            result = await self._embedder.embed_chunk(
                chunk.tenant,
                chunk.key_id,
                chunk.model,
                chunk.inputs,
                embed_options(chunk.options),
                keep=lambda result: self._keep(chunk, result),
                user=chunk.user,
            )
        except (engine.NotReady, engine.QueueFull):  # passing: the chunk goes back, uncounted
            await asyncio.to_thread(self._store.release_chunk, chunk.job_id, chunk.idx, self._owner, False)
            return
        except engine.InferenceFailed:
            raise
        except (errors.ApiError, engine.EngineError) as exc:
            err = as_api_error(exc)
            if err.code == grpc.StatusCode.INTERNAL:
                raise
            await asyncio.to_thread(
                self._store.fail_job, chunk.job_id, {"code": err.reason, "message": err.message}, now_s()
            )
            self.notify()
            return
        self._metrics.record_chunk(
            result.model, chunk.tenant, chunk.count, result.prompt_tokens, result.truncated_inputs
        )
        self.notify()

    async def _keep(self, chunk: Chunk, result: EmbedResult) -> None:
        """Store a chunk's vectors (waiting for rate-limit room before embedding, the heartbeat kept the lease): as
        the engine gave them, float32 or a compact type's bytes (1/4 or 1/32 of the space), so reading them back
        needs neither the model nor its calibrated ranges."""
        vectors = ChunkVectors.of(stored_vectors(result), result.token_counts)
        await asyncio.to_thread(self._store.complete_chunk, chunk.job_id, chunk.idx, self._owner, vectors, now_s())

    # --- webhooks ---------------------------------------------------------------------------------------------

    async def _delivery_loop(self) -> None:
        while True:
            try:
                due = await asyncio.to_thread(
                    self._store.due_deliveries, now_s(), 16, self._owner, max(30, int(self._settings.lease_s))
                )
            except Exception:
                log.exception("reading due deliveries failed")
                due = []
            if not due:
                await self._idle()
                continue
            await asyncio.gather(*(self._deliver(d) for d in due))

    async def _deliver(self, delivery: Delivery) -> None:
        body = webhooks.event_body(
            delivery.event_id, delivery.event_type, delivery.event_created_at, json.loads(delivery.payload)
        )
        attempt = await self._sender.send(delivery.url, delivery.secret, delivery.event_id, body)
        now = now_s()
        next_at, final = None, None
        if attempt.outcome == "succeeded":
            final = "succeeded"
        elif attempt.outcome == "disable":
            final = "disabled"
            await asyncio.to_thread(
                self._store.disable_webhook, delivery.webhook_id, "the endpoint answered 410 Gone", now
            )
        else:
            delay = self._settings.webhook_policy.next_delay(delivery.attempts + 1)
            if delay is None:
                final = "failed"
            else:
                next_at = now + max(1, round(delay))
        self._metrics.record_delivery(final or "retry")
        recorded = NewAttempt(attempt.status_code, attempt.error, attempt.duration_ms, next_at, final)
        await asyncio.to_thread(self._store.record_attempt, delivery.id, self._owner, recorded, now)

    # --- retention --------------------------------------------------------------------------------------------

    async def _expire_results(self) -> int:
        return len(await asyncio.to_thread(self._store.expire_results, now_s()))
