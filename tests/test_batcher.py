"""The dynamic batcher's scheduling rules, on a backend that records the batches it is given.

The engine's real path (real model, real server) is covered by test_grpc_api.py; here the backend is a recorder
so batch composition, ordering, cancellation, deadlines and the queue bound can be asserted exactly.
"""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
import uvloop

from service.engine.batcher import Batcher, BatchFailed, BatchLimits, CallTimings, DeadlineExceeded, QueueFull
from service.engine.threads import InferenceThreads
from service.engine.tokenize import TokenizedInput


def tokens(length: int, marker: int) -> TokenizedInput:
    ids = np.full(length, marker, dtype=np.int64)
    return TokenizedInput(ids=ids, type_ids=np.zeros(length, dtype=np.int64), original_length=length)


class RecordingBackend:
    """Returns [marker, length] per input, records batches, and can be held to let a queue build up."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[int, int]]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.fail = False
        self.solo: list[bool] = []

    def embed(self, batch, solo=False):
        self.gate.wait(10)
        self.solo.append(solo)
        self.batches.append([(int(t.ids[0]), t.length) for t in batch])
        if self.fail:
            raise RuntimeError("boom")
        return np.array([[float(t.ids[0]), float(t.length)] for t in batch], dtype=np.float32)


@pytest.fixture
def executor():
    threads = InferenceThreads(1)
    yield threads
    threads.shutdown()


def make(backend, executor, **limits) -> Batcher:
    limits.setdefault("max_padding_ratio", 100.0)  # tests of other rules ignore padding unless they set it
    batcher = Batcher("test", backend, executor, BatchLimits(**limits))
    batcher.start()
    return batcher


async def test_large_request_is_split_and_reassembled_in_order(executor):
    backend = RecordingBackend()
    batcher = make(backend, executor, max_batch_size=4, max_batch_tokens=1000)
    inputs = [tokens(1 + (i * 7) % 13, i) for i in range(10)]
    out = await batcher.embed(inputs)
    assert out[:, 0].tolist() == list(range(10))
    assert out[:, 1].tolist() == [t.length for t in inputs]
    assert len(backend.batches) == 3
    assert all(len(b) <= 4 for b in backend.batches)
    await batcher.close()


async def test_token_budget_counts_padding(executor):
    backend = RecordingBackend()
    batcher = make(backend, executor, max_batch_size=100, max_batch_tokens=40)
    await batcher.embed([tokens(10, i) for i in range(8)])
    # 10 tokens padded x 4 inputs = 40: two batches of four.
    assert [len(b) for b in backend.batches] == [4, 4]
    await batcher.close()


async def test_concurrent_calls_are_coalesced_and_grouped_by_length(executor):
    backend = RecordingBackend()
    batcher = make(backend, executor, max_batch_size=4, max_batch_tokens=10_000)
    backend.gate.clear()
    first = asyncio.ensure_future(batcher.embed([tokens(3, 0)]))
    await asyncio.sleep(0.05)  # the first batch is now running (held at the gate)
    lengths = [50, 2, 51, 3, 52, 2, 53, 4]
    calls = [asyncio.ensure_future(batcher.embed([tokens(n, 100 + i)])) for i, n in enumerate(lengths)]
    await asyncio.sleep(0.05)
    backend.gate.set()
    await asyncio.gather(first, *calls)
    later = backend.batches[1:]
    assert [len(b) for b in later] == [4, 4]
    # The oldest waiting input (length 50) leads; its batch holds the long inputs, the next the short ones.
    assert sorted(n for _, n in later[0]) == [50, 51, 52, 53]
    assert sorted(n for _, n in later[1]) == [2, 2, 3, 4]
    for call, i in zip(calls, range(len(lengths)), strict=True):
        assert call.result()[0].tolist() == [100 + i, lengths[i]]
    await batcher.close()


async def test_padding_ratio_cuts_batches(executor):
    backend = RecordingBackend()
    batcher = make(backend, executor, max_batch_size=100, max_padding_ratio=1.2)
    lengths = [10, 10, 11, 12, 30, 31, 32, 90]
    await batcher.embed([tokens(n, i) for i, n in enumerate(lengths)])
    groups = sorted(sorted(n for _, n in batch) for batch in backend.batches)
    assert groups == [[10, 10, 11, 12], [30, 31, 32], [90]]
    for batch in backend.batches:
        real = sum(n for _, n in batch)
        assert max(n for _, n in batch) * len(batch) <= 1.2 * real
    await batcher.close()


async def test_padding_slack_merges_small_batches(executor):
    backend = RecordingBackend()
    # Ratio 1.05 alone would run every input alone; 8 tokens of slack let 8, 9 and 10 share a batch (padded 30,
    # real 27). Adding 12 would waste 9 tokens, and 40 or 60 far more: those run alone.
    batcher = make(backend, executor, max_batch_size=100, max_padding_ratio=1.05, padding_slack_tokens=8)
    lengths = [8, 9, 10, 12, 40, 60]
    await batcher.embed([tokens(n, i) for i, n in enumerate(lengths)])
    groups = sorted(sorted(n for _, n in batch) for batch in backend.batches)
    assert groups == [[8, 9, 10], [12], [40], [60]]
    for batch in backend.batches:
        real = sum(n for _, n in batch)
        padded = max(n for _, n in batch) * len(batch)
        assert padded <= max(1.05 * real, real + 8)
    await batcher.close()


async def test_concurrent_batches_run_in_parallel(executor):
    class Overlap(RecordingBackend):
        def __init__(self) -> None:
            super().__init__()
            self.active = 0
            self.peak = 0
            self.lock = threading.Lock()

        def embed(self, batch, solo=False):
            with self.lock:
                self.active += 1
                self.peak = max(self.peak, self.active)
            time.sleep(0.05)
            with self.lock:
                self.active -= 1
            return super().embed(batch, solo)

    backend = Overlap()
    with InferenceThreads(2) as pool:
        batcher = make(backend, pool, max_batch_size=2, concurrent_batches=2)
        out = await batcher.embed([tokens(3, i) for i in range(8)])
        await batcher.close()
    assert out[:, 0].tolist() == list(range(8))
    assert backend.peak == 2 and len(backend.batches) == 4


async def test_cancelled_call_is_dropped_before_compute(executor):
    backend = RecordingBackend()
    batcher = make(backend, executor, max_batch_size=2)
    backend.gate.clear()
    running = asyncio.ensure_future(batcher.embed([tokens(3, 1)]))
    await asyncio.sleep(0.05)
    doomed = asyncio.ensure_future(batcher.embed([tokens(3, 2), tokens(3, 3)]))
    kept = asyncio.ensure_future(batcher.embed([tokens(3, 4)]))
    await asyncio.sleep(0.01)
    doomed.cancel()
    backend.gate.set()
    await asyncio.gather(running, kept)
    computed = {marker for batch in backend.batches for marker, _ in batch}
    assert computed == {1, 4}
    assert batcher.stats.dropped_inputs == 2
    await batcher.close()


async def test_expired_deadline_fails_without_compute(executor):
    backend = RecordingBackend()
    batcher = make(backend, executor)
    backend.gate.clear()
    running = asyncio.ensure_future(batcher.embed([tokens(3, 1)]))
    await asyncio.sleep(0.05)
    late = asyncio.ensure_future(batcher.embed([tokens(3, 2)], deadline=time.monotonic() + 0.01))
    await asyncio.sleep(0.05)
    backend.gate.set()
    await running
    with pytest.raises(DeadlineExceeded):
        await late
    assert all(marker != 2 for batch in backend.batches for marker, _ in batch)
    await batcher.close()


async def test_queue_bound_fails_fast(executor):
    backend = RecordingBackend()
    batcher = make(backend, executor, max_queued_inputs=5)
    backend.gate.clear()
    running = asyncio.ensure_future(batcher.embed([tokens(3, 1)]))
    await asyncio.sleep(0.05)
    queued = asyncio.ensure_future(batcher.embed([tokens(3, i) for i in range(4)]))
    await asyncio.sleep(0)
    with pytest.raises(QueueFull):
        await batcher.embed([tokens(3, 9), tokens(3, 9)])
    backend.gate.set()
    await asyncio.gather(running, queued)
    await batcher.close()


async def test_backend_failure_reaches_only_that_batch(executor):
    backend = RecordingBackend()
    batcher = make(backend, executor)
    backend.fail = True
    with pytest.raises(BatchFailed):
        await batcher.embed([tokens(3, 1)])
    backend.fail = False
    out = await batcher.embed([tokens(3, 2)])
    assert out[0, 0] == 2
    await batcher.close()


async def test_lone_batch_runs_solo_and_busy_batches_do_not(executor):
    backend = RecordingBackend()
    batcher = make(backend, executor, max_batch_size=2)
    await batcher.embed([tokens(3, 1)])
    assert backend.solo == [True]  # nothing else queued or running: it may use every core
    await batcher.embed([tokens(3, i) for i in range(6)])
    assert backend.solo[1:] == [False, False, True]  # the last batch of the call runs alone again
    await batcher.close()


async def test_background_inputs_wait_for_interactive_ones(executor):
    backend = RecordingBackend()
    batcher = make(backend, executor, max_batch_size=2)
    backend.gate.clear()
    first = asyncio.ensure_future(batcher.embed([tokens(3, 0)]))
    await asyncio.sleep(0.05)
    job = asyncio.ensure_future(batcher.embed([tokens(3, 100 + i) for i in range(4)], background=True))
    await asyncio.sleep(0.01)
    call = asyncio.ensure_future(batcher.embed([tokens(3, 1), tokens(3, 2)]))
    await asyncio.sleep(0.01)
    backend.gate.set()
    await asyncio.gather(first, job, call)
    markers = [[m for m, _ in batch] for batch in backend.batches]
    assert markers[1] == [1, 2]  # queued after the job's inputs, served before them
    assert sorted(m for batch in markers[2:] for m in batch) == [100, 101, 102, 103]
    await batcher.close()


async def test_background_inputs_do_not_count_against_the_queue_bound(executor):
    backend = RecordingBackend()
    batcher = make(backend, executor, max_queued_inputs=2)
    out = await batcher.embed([tokens(3, i) for i in range(5)], background=True)
    assert out[:, 0].tolist() == [0, 1, 2, 3, 4]
    await batcher.close()


class Tracking(RecordingBackend):
    """Records how many background batches (markers >= 100) ran at once, and each batch's background flag."""

    def __init__(self) -> None:
        super().__init__()
        self.active: list[int] = []
        self.peak_background = 0
        self.lock = threading.Lock()

    def embed(self, batch, solo=False):
        background = int(batch[0].ids[0]) >= 100
        with self.lock:
            self.active.append(background)
            self.peak_background = max(self.peak_background, sum(self.active))
        time.sleep(0.02)
        with self.lock:
            self.active.remove(background)
        return super().embed(batch, solo)


async def test_background_work_leaves_a_slot_for_interactive_calls():
    """While interactive calls are about (one came within the grace, here a minute), a job never takes the last
    slot: the next call finds it free."""
    backend = Tracking()
    with InferenceThreads(2) as pool:
        batcher = make(backend, pool, concurrent_batches=2, background_batch_size=4, interactive_grace_s=60.0)
        await batcher.embed([tokens(3, 1)])
        job = asyncio.ensure_future(batcher.embed([tokens(3, 100 + i) for i in range(40)], background=True))
        while not backend.batches or backend.batches[-1][0][0] < 100:  # the job runs
            await asyncio.sleep(0.001)
        out = await batcher.embed([tokens(3, 2)])
        assert out[0, 0] == 2 and not job.done()  # served while the job still runs
        await job
        await batcher.close()
    assert backend.peak_background == 1
    assert all(len(b) <= 4 for b in backend.batches)


async def test_a_job_uses_every_slot_of_an_idle_engine_and_small_batches_in_the_last():
    """No interactive call about: the job runs in both slots, in the last one batches of at most
    `background_spare_tokens` (one 3-token input here); a call arriving meanwhile is served before the job ends."""
    backend = Tracking()
    with InferenceThreads(2) as pool:
        batcher = make(
            backend, pool, concurrent_batches=2, background_batch_size=4, background_spare_tokens=3,
            interactive_grace_s=0.0,
        )  # fmt: skip
        job = asyncio.ensure_future(batcher.embed([tokens(3, 100 + i) for i in range(60)], background=True))
        while backend.peak_background < 2:
            await asyncio.sleep(0.001)
        out = await batcher.embed([tokens(3, 1)])
        assert out[0, 0] == 1 and not job.done()
        await job
        await batcher.close()
    sizes = sorted({len(b) for b in backend.batches if b[0][0] >= 100})
    assert sizes[0] == 1 and sizes[-1] == 4  # small batches in the spare slot, regular ones in the other


class TimedBackend(RecordingBackend):
    """Takes a fixed time per input, so batch run times (what the share is measured in) follow batch sizes."""

    def embed(self, batch, solo=False):
        time.sleep(0.002 * len(batch))
        return super().embed(batch, solo)


async def test_a_job_keeps_its_share_under_sustained_interactive_load(executor):
    """Interactive inputs always waiting (one-input batches, 400 of them): the job's 4 batches still run early,
    on the credit of its guaranteed share (0.2: about one background batch per 4 interactive ones' time)."""
    backend = TimedBackend()
    batcher = make(backend, executor, max_batch_size=1, background_batch_size=2, background_min_share=0.2)
    backend.gate.clear()
    held = asyncio.ensure_future(batcher.embed([tokens(3, 0)]))
    while not backend.batches and batcher.queued_inputs:  # the first batch holds the only slot
        await asyncio.sleep(0.001)
    calls = [asyncio.ensure_future(batcher.embed([tokens(3, 1 + i % 50)])) for i in range(400)]
    job = asyncio.ensure_future(batcher.embed([tokens(3, 100 + i) for i in range(8)], background=True))
    await asyncio.sleep(0)
    backend.gate.set()
    await asyncio.wait([job, *calls], return_when=asyncio.FIRST_COMPLETED)
    await job
    assert sum(not c.done() for c in calls) > 100  # done while interactive inputs still waited
    assert batcher.stats.background_turns >= 3
    await asyncio.gather(held, *calls)
    await batcher.close()


async def test_without_a_share_a_job_waits_for_interactive_inputs(executor):
    backend = TimedBackend()
    batcher = make(backend, executor, max_batch_size=1, background_batch_size=2, background_min_share=0.0)
    backend.gate.clear()
    held = asyncio.ensure_future(batcher.embed([tokens(3, 0)]))
    calls = [asyncio.ensure_future(batcher.embed([tokens(3, 1)])) for _ in range(40)]
    job = asyncio.ensure_future(batcher.embed([tokens(3, 100 + i) for i in range(4)], background=True))
    await asyncio.sleep(0)
    backend.gate.set()
    await job
    assert all(c.done() for c in calls) and batcher.stats.background_turns == 0
    await asyncio.gather(held, *calls)
    await batcher.close()


async def test_a_failing_batch_observer_neither_loses_results_nor_a_slot(executor):
    """The observer (metrics) raising on every batch: the calls still get their vectors, and the engine keeps
    serving (the batch's slot is freed whatever happens after inference)."""
    backend = RecordingBackend()
    batcher = make(backend, executor)

    def broken(inputs: int, padded: int, seconds: float) -> None:
        raise RuntimeError("observer")

    batcher.on_batch = broken
    loop = asyncio.get_running_loop()
    errors: list[dict] = []
    loop.set_exception_handler(lambda _, context: errors.append(context))
    for marker in range(3):
        out = await batcher.embed([tokens(2, marker)])
        assert out[0, 0] == marker
    assert errors  # reported, not swallowed
    await batcher.close()


class SleepingBackend(RecordingBackend):
    """Each batch takes at least `seconds`."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def embed(self, batch, solo=False):
        time.sleep(self.seconds)
        return super().embed(batch, solo)


def test_timings_keep_their_resolution_on_the_servers_event_loop():
    """The server runs on uvloop, whose loop.time() counts whole milliseconds: a call's inference time (its
    x-inference-time, the batch time metrics and the job share account) must still be at least what the batch took,
    never rounded down to the millisecond (1.5 ms read as 1 about half of the time when the batcher used it)."""
    backend = SleepingBackend(0.0015)
    threads = InferenceThreads(1)

    async def calls() -> list[CallTimings]:
        batcher = make(backend, threads)
        measured = []
        for marker in range(20):
            timings = CallTimings()
            await batcher.embed([tokens(3, marker)], timings=timings)
            measured.append(timings)
        await batcher.close()
        return measured

    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            measured = runner.run(calls())
    finally:
        threads.shutdown()
    assert all(timings.inference_s >= backend.seconds for timings in measured), [t.inference_s for t in measured]
    assert all(0 <= timings.queue_s < 1 for timings in measured)
