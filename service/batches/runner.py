"""The worker behind batches: claims a batch needing work and runs its next step, and sweeps expired files.

A batch runs on the job engine. Validation reads the input file twice, a line at a time: first its structure
(service/batches/input_checks.py: a problem fails the batch, as OpenAI does), then each request as the live
`/v1/embeddings` parses it (service/batches/job_parts.py: a refused request goes to the error file, accepted inputs
are cut into jobs). Their chunks run in the engine's background lane under the submitting key's limits like any
job's. When every job has ended (or the batch is cancelled or its 24 h window passes), finalization writes the output
and error files (service/batches/output_files.py); the files become visible in the transaction that ends the batch
and records its webhook event.

Every step holds a lease on the batch in the store (service/batches/lease.py, renewed as it goes), so one replica
works on a batch at a time and a step cut short by a crash is run again from the start by whichever replica claims
the batch next.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
from collections.abc import Callable

import orjson

from service.access.control import Principal
from service.batches import objects
from service.batches.files import iter_lines
from service.batches.input_checks import KeyModels, check_structure
from service.batches.job_parts import JobParts
from service.batches.lease import BatchLease, LeaseLost
from service.batches.output_files import write_output_files
from service.batches.records import Batch, ValidatedBatch
from service.batches.settings import BatchSettings
from service.batches.store import BatchStore
from service.embedding import Embedder
from service.engine.tokenize import TokenIdDecoder
from service.worker_loops import WorkerLoops, now_s, sweep_forever

log = logging.getLogger(__name__)

EVENT_TYPES = {
    "completed": "batch.completed",
    "failed": "batch.failed",
    "cancelled": "batch.cancelled",
    "expired": "batch.expired",
}


def announce_batch(batch: Batch, now: int) -> tuple[str, str] | None:
    """The event recorded in the transaction that ends a batch: its type and data (the batch object)."""
    event_type = EVENT_TYPES.get(batch.status)
    if event_type is None:
        return None
    return event_type, orjson.dumps(objects.batch_object(batch)).decode()


class BatchWorkers(WorkerLoops):
    """One loop that claims batches needing work (validate, finalize, cancel, expire), and a file sweeper."""

    def __init__(
        self,
        store: BatchStore,
        embedder: Embedder,
        decoder: TokenIdDecoder,
        settings: BatchSettings,
        on_new_job: Callable[[], None],
    ) -> None:
        super().__init__(settings.poll_s)
        self._store = store
        self._embedder = embedder
        self._settings = settings
        self._owner = f"batcher-{secrets.token_hex(6)}"
        self._parts = JobParts(store, settings, decoder, embedder.registry.tokenize_executor, on_new_job)

    def start(self) -> None:
        sweep = sweep_forever(
            self._settings.sweep_s, self._expire_files, log, "removed %d expired or abandoned file(s)",
            "removing expired files failed",
        )  # fmt: skip
        self._spawn({"batch-worker": self._batch_loop(), "batch-file-sweeper": sweep})

    async def _batch_loop(self) -> None:
        while True:
            batch = None
            try:
                batch = await asyncio.to_thread(self._store.claim_batch, self._owner, now_s(), self._settings.lease_s)
                if batch is not None:
                    await self._run(batch)
            except LeaseLost:
                log.info("batch %s: lease lost (cancelled or taken over); leaving it", batch.id if batch else "?")
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("batch step failed (it is retried when its lease expires)")
            if batch is None:
                await self._idle()

    async def _expire_files(self) -> int:
        now = now_s()
        return await asyncio.to_thread(self._store.expire_files, now, now - self._settings.stale_upload_s)

    async def _run(self, batch: Batch) -> None:
        if batch.status == "validating":
            await self._validate(batch)
        elif batch.status == "cancelling":
            await self._stop_jobs(batch)
            await self._finalize(batch, "cancelled")
        elif batch.status == "in_progress" and batch.expires_at <= now_s():
            await self._stop_jobs(batch)
            await self._finalize(batch, "expired")
        elif batch.status == "in_progress":
            finalizing = await asyncio.to_thread(self._store.begin_finalizing, batch.id, self._owner, now_s())
            if finalizing is None:
                raise LeaseLost(batch.id)
            await self._finalize(finalizing, "cancelled" if finalizing.status == "cancelling" else "completed")
        elif batch.status == "finalizing":
            await self._finalize(batch, "completed")

    async def _stop_jobs(self, batch: Batch) -> None:
        for job_id in (await asyncio.to_thread(self._store.batch_jobs, batch.id)).values():
            await asyncio.to_thread(self._store.cancel_job, batch.tenant, job_id, now_s())

    def _lease(self, batch: Batch) -> BatchLease:
        return BatchLease(self._store, batch.id, self._owner, self._settings.lease_s)

    async def _validate(self, batch: Batch) -> None:
        lease = self._lease(batch)
        caller = Principal(batch.tenant, batch.key_id, False, batch.models, ())
        models: KeyModels = functools.partial(self._embedder.resolve, caller)
        lines = iter_lines(self._store, batch.input_file_id)
        structure = await asyncio.to_thread(
            check_structure, lines, batch.endpoint, models, self._settings, lease.keep_sync
        )
        if structure.errors:
            log.info("batch %s failed validation: %s", batch.id, structure.errors[0]["message"])
            await asyncio.to_thread(
                self._store.fail_batch, batch.id, self._owner, structure.errors, structure.requests, now_s()
            )
            return
        rows, refused = await self._parts.build(batch, models, structure.model, lease)
        validated = ValidatedBatch(structure.model, rows, structure.requests, refused)
        started = await asyncio.to_thread(self._store.start_batch, batch.id, self._owner, validated, now_s())
        if started is None:
            raise LeaseLost(batch.id)
        log.info("batch %s: %d requests (%d refused) running as jobs", batch.id, structure.requests, refused)
        self.notify()

    async def _finalize(self, batch: Batch, status: str) -> None:
        files = await write_output_files(self._store, batch, status, self._lease(batch))
        finished = await asyncio.to_thread(self._store.finish_batch, batch.id, self._owner, status, files, now_s())
        if finished is None:
            raise LeaseLost(batch.id)
        tally = files.tally
        log.info("batch %s %s: %d completed, %d failed", batch.id, status, tally.completed, tally.failed)
