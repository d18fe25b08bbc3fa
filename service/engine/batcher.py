"""Dynamic batching: inputs of concurrent calls are queued and packed into length-grouped batches.

One batcher per model. Its loop starts a batch as soon as one of its `concurrent_batches` slots is free, so a
lone request is served at once and, under load, whatever arrived meanwhile is coalesced into the next batch.
Batches hold at most `max_batch_size` inputs and `max_batch_tokens` padded tokens (longest x count), and padded
tokens stay within `max_padding_ratio` of the real ones (or `padding_slack_tokens` above them): on a CPU, padding
is pure waste while a bigger batch buys little. The oldest queued input is always in the next batch (no
starvation); the others are picked from a window of queued inputs sorted by length, so inputs of similar length
share a batch. A large request is split across batches and reassembled in order. Inputs of calls that were
cancelled or whose deadline passed are dropped before they cost compute.

Async jobs' inputs wait in a background lane: interactive calls come first, and background batches are small. While
interactive calls are about, background batches never take the last slot, so an interactive call finds one free;
once none has come for `interactive_grace_s` (an idle server), a job uses every slot, the last one with batches of at
most `background_spare_tokens` padded tokens, so that the call that ends the idleness waits for little (measured: a
job on an idle 2-core server went from one slot, 0.48x of in-process, to both, 0.86x). Yet a job keeps a guaranteed
share of the engine: while its inputs wait behind interactive ones, it earns `background_min_share / (1 -
background_min_share)` of every interactive batch's run time as credit, and a free slot goes to the background lane
once that credit covers one of its batches (which then spends it). So under any interactive load a job gets at least
that share of inference time and always finishes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from time import monotonic as clock
from typing import Protocol

import numpy as np

from service.engine.errors import DeadlineExceeded, QueueFull
from service.engine.threads import InferenceThreads
from service.engine.tokenize import TokenizedInput

log = logging.getLogger(__name__)

# The batcher's clock (`clock()`: time.monotonic, asyncio's own loop clock) for deadlines, timings and the grace, not
# `loop.time()`: uvloop's counts whole milliseconds, which made every x-inference-time and x-queue-time a whole
# number of ms, a lone text's batch 0 or 1 ms long to the job share's accounting, and a 2.5 ms batch 2 ms or 3.


class Encoder(Protocol):
    """What the batcher needs of a model: pooled vectors for a batch of tokenized inputs (see encoder.Encoder)."""

    def embed(self, batch: Sequence[TokenizedInput], solo: bool = False) -> np.ndarray: ...


class BatchFailed(Exception):
    """The encoder failed on a batch holding some of the call's inputs."""


@dataclass(frozen=True)
class BatchLimits:
    max_batch_tokens: int = 2048
    max_batch_size: int = 128
    max_queued_inputs: int = 32768
    # Padded tokens / real tokens a batch may reach before it is cut (a lone input always forms a batch).
    max_padding_ratio: float = 1.05
    # Padded tokens a batch may waste whatever its ratio: about one batch's fixed cost, so tiny requests coalesce.
    padding_slack_tokens: int = 0
    # Batches in flight at once (one per inference thread); background batches use all but one slot, and the last
    # one too once no interactive call has come for `interactive_grace_s`.
    concurrent_batches: int = 1
    # Inputs in one background (async job) batch.
    background_batch_size: int = 16
    # Padded tokens of a background batch in the last slot (at least one input): what an interactive call arriving
    # at an idle server with a running job may wait for (64: four short sentences, ~10 ms on one core).
    background_spare_tokens: int = 64
    # Seconds after an interactive call during which the last slot stays the interactive calls' (a caller sending
    # call after call finds it free each time).
    interactive_grace_s: float = 0.05
    # Inference time background batches keep while interactive inputs wait too (otherwise they only use idle time).
    background_min_share: float = 0.2
    # Queued inputs considered when grouping by length, as a multiple of max_batch_size.
    window_batches: int = 4


@dataclass(slots=True)
class CallTimings:
    """Where a call's time went in the batcher (seconds): waiting for its first batch, then until its last result."""

    queue_s: float = 0.0
    inference_s: float = 0.0


# Called once per finished batch with (inputs, padded tokens, seconds it ran): metrics hang here.
BatchObserver = Callable[[int, int, float], None]


@dataclass(eq=False)
class _Call:
    """One caller's inputs in flight: results are filled slot by slot as batches finish."""

    size: int
    future: asyncio.Future
    deadline: float | None
    remaining: int = 0
    results: np.ndarray | None = None
    # clock(): when queued, when its first batch started, when its last result arrived.
    enqueued: float = 0.0
    started: float | None = None
    finished: float = 0.0

    def __post_init__(self) -> None:
        self.remaining = self.size


@dataclass(eq=False, slots=True)
class _Item:
    call: _Call
    slot: int
    tokens: TokenizedInput


@dataclass(frozen=True, slots=True)
class _Lane:
    """Which lane a running batch came from: background (a job's), on credit (`turn`), in the last slot (`spare`)."""

    background: bool
    turn: bool
    spare: bool


@dataclass
class BatcherStats:
    """Counts only the batcher keeps; each batch's inputs, padded tokens and time go to `on_batch` (the metrics)."""

    dropped_inputs: int = 0
    # Background batches that ran ahead of waiting interactive inputs, on the credit of the guaranteed share.
    background_turns: int = 0


class _Share:
    """The background lane's credit towards its guaranteed share of inference time (seconds)."""

    def __init__(self, share: float) -> None:
        if not 0 <= share < 1:
            raise ValueError(f"job_min_share must be in [0, 1), got {share}")
        self._ratio = share / (1 - share)
        self.credit = 0.0
        # Typical run time of one background batch (exponential average): what a turn costs. Until one has run,
        # an interactive batch's time stands in for it.
        self._cost: float | None = None
        self._interactive_cost = 0.0

    def earn(self, interactive_s: float) -> None:
        """An interactive batch ran while background inputs waited."""
        self._interactive_cost = interactive_s
        self.credit = min(self.credit + interactive_s * self._ratio, 4 * self._turn_cost())

    def _turn_cost(self) -> float:
        return self._cost if self._cost is not None else self._interactive_cost

    def due(self) -> bool:
        """Whether a background batch may run ahead of waiting interactive inputs."""
        return self._ratio > 0 and self.credit > 0 and self.credit >= self._turn_cost()

    def spend(self, background_s: float, turn: bool) -> None:
        """A background batch ran (`turn`: ahead of waiting interactive inputs, so on credit)."""
        self._cost = background_s if self._cost is None else 0.8 * self._cost + 0.2 * background_s
        if turn:
            self.credit -= background_s

    def reset(self) -> None:
        """No background input waits: credit is earned only while a job waits."""
        self.credit = 0.0


class Batcher:
    def __init__(self, name: str, encoder: Encoder, threads: InferenceThreads, limits: BatchLimits) -> None:
        self.name = name
        self._encoder = encoder
        self._threads = threads
        self._limits = limits
        self._queue: deque[_Item] = deque()
        # Async jobs' inputs: batched only when no interactive input waits, so a big job never slows calls down.
        self._background: deque[_Item] = deque()
        self._running_background = 0
        # Background batches running in the last slot (see background_spare_tokens), and interactive batches running.
        self._running_spare = 0
        self._running_interactive = 0
        # Event-loop clock of the latest interactive call or batch: the last slot is theirs until the grace passes.
        self._last_interactive = float("-inf")
        self._grace_timer: asyncio.TimerHandle | None = None
        self._free_slots = limits.concurrent_batches
        self._share = _Share(limits.background_min_share)
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.stats = BatcherStats()
        self.on_batch: BatchObserver | None = None

    @property
    def queued_inputs(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"batcher:{self.name}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        for item in (*self._queue, *self._background):
            if not item.call.future.done():
                item.call.future.set_exception(asyncio.CancelledError("batcher closed"))
        self._queue.clear()
        self._background.clear()

    async def embed(
        self,
        inputs: Sequence[TokenizedInput],
        deadline: float | None = None,
        background: bool = False,
        timings: CallTimings | None = None,
    ) -> np.ndarray:
        """Pooled vectors for `inputs`, in order. `deadline` is in the batcher's clock (time.monotonic()).

        `background` inputs (async jobs) wait until no interactive input is queued; their caller bounds them.
        `timings`, when given, is filled with the call's queue wait and inference time.
        """
        if not inputs:
            raise ValueError("no inputs")
        if not background and len(self._queue) + len(inputs) > self._limits.max_queued_inputs:
            raise QueueFull(self.name)
        loop = asyncio.get_running_loop()
        call = _Call(size=len(inputs), future=loop.create_future(), deadline=deadline, enqueued=clock())
        if not background:
            self._last_interactive = call.enqueued
        lane = self._background if background else self._queue
        lane.extend(_Item(call, slot, tokens) for slot, tokens in enumerate(inputs))
        self._wakeup.set()
        # A cancelled caller cancels `call.future`, which marks its queued inputs as dead.
        pooled = await call.future
        if timings is not None and call.started is not None:
            timings.queue_s = call.started - call.enqueued
            timings.inference_s = call.finished - call.started
        return pooled

    def _background_allowed(self, now: float) -> bool:
        """Whether a background batch may start now: in all but the last slot, or in the last one on an idle server."""
        return not self._spare() or self._interactive_idle(now)

    def _spare(self) -> bool:
        """Whether the next background batch would take the last slot (the interactive calls' while any are about)."""
        regular = self._running_background - self._running_spare
        return regular >= max(1, self._limits.concurrent_batches - 1)

    def _interactive_idle(self, now: float) -> bool:
        """No interactive input waits or runs, none came within the grace, and a slot is free to spare."""
        return (
            not self._queue
            and not self._running_interactive
            and self._running_background < self._limits.concurrent_batches
            and now >= self._last_interactive + self._limits.interactive_grace_s
        )

    def _wake_after_grace(self, loop: asyncio.AbstractEventLoop) -> None:
        """When background inputs wait only for the grace to pass, look again once it has (otherwise a finishing
        batch or a new call wakes the loop)."""
        left = self._last_interactive + self._limits.interactive_grace_s - clock()
        if not self._background or self._queue or self._running_interactive or left <= 0:
            return
        if self._grace_timer is not None:
            self._grace_timer.cancel()
        self._grace_timer = loop.call_later(left, self._wakeup.set)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        self._free_slots = self._limits.concurrent_batches
        try:
            while True:
                # Background work takes the last slot only on an idle server: an interactive call finds one free.
                while not self._free_slots or not (
                    self._queue or (self._background and self._background_allowed(clock()))
                ):
                    if self._free_slots:
                        self._wake_after_grace(loop)
                    self._wakeup.clear()
                    await self._wakeup.wait()
                now = clock()
                # Interactive inputs first, unless the background lane has earned a turn (its guaranteed share).
                turn = (
                    bool(self._queue) and bool(self._background) and self._background_allowed(now) and self._share.due()
                )
                background = not self._queue or turn
                spare = background and self._spare()
                batch = self._next_batch(now, background, self._limits.background_spare_tokens if spare else None)
                if not batch:
                    continue
                self.stats.background_turns += turn
                # Alone on an idle server: the backend may spread this batch over every core.
                solo = self._free_slots == self._limits.concurrent_batches and not self._queue and not self._background
                self._free_slots -= 1
                self._running_background += background
                self._running_spare += spare
                self._running_interactive += not background
                lane = _Lane(background, turn, spare)
                self._threads.submit(self._run_batch, loop, batch, solo, lane, now)
        finally:
            if self._grace_timer is not None:
                self._grace_timer.cancel()

    def _run_batch(self, loop: asyncio.AbstractEventLoop, batch: list[_Item], solo: bool, lane: _Lane, started: float):
        """On an inference thread: run one batch, then hand the outcome to the event loop in one callback, which
        resolves every call it completes (no task, no future per batch: the hand-off costs one loop wake-up)."""
        pooled, error = None, None
        try:
            pooled = self._encoder.embed([item.tokens for item in batch], solo=solo)
        except Exception as exc:
            log.exception("batch of %d inputs failed on model %s", len(batch), self.name)
            error = BatchFailed(str(exc))
        finished = clock()
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits for these results
            loop.call_soon_threadsafe(self._batch_done, batch, pooled, error, lane, started, finished)

    def _batch_done(
        self,
        batch: list[_Item],
        pooled: np.ndarray | None,
        error: Exception | None,
        lane: _Lane,
        started: float,
        finished: float,
    ) -> None:
        """On the event loop: deliver a batch's vectors (or its failure), free its slot, account its lane."""
        seconds = finished - started
        try:
            if error is not None or pooled is None:
                self._fail(batch, error or BatchFailed("no result"))
            else:
                self._deliver(batch, pooled, started, finished)
                self._record(batch, seconds)
        finally:  # whatever happened (a failing batch observer), the slot is freed
            self._free_slot(lane, seconds, finished)

    def _free_slot(self, lane: _Lane, seconds: float, finished: float) -> None:
        """A batch of `lane` ended after running `seconds`: its slot is free again; the share and the grace learn."""
        if lane.background:
            self._running_background -= 1
            self._running_spare -= lane.spare
            self._share.spend(seconds, lane.turn)
        else:
            self._running_interactive -= 1
            self._last_interactive = finished
            if self._background:
                self._share.earn(seconds)
        if not self._background and not self._running_background:
            self._share.reset()
        self._free_slots += 1
        self._wakeup.set()

    def _alive(self, item: _Item, now: float) -> bool:
        call = item.call
        if call.future.done():
            return False
        if call.deadline is not None and now >= call.deadline:
            call.future.set_exception(DeadlineExceeded())
            return False
        return True

    def _next_batch(self, now: float, background: bool = False, max_tokens: int | None = None) -> list[_Item]:
        """Take the next batch off a lane: the oldest live input plus similar-length neighbours. Background batches
        are kept small, so that the slot they hold frees soon for an interactive call; `max_tokens` bounds a
        batch's padded tokens below the budget (one input always goes)."""
        limits = self._limits
        queue = self._background if background else self._queue
        max_size = min(limits.max_batch_size, limits.background_batch_size) if background else limits.max_batch_size
        budget = min(limits.max_batch_tokens, max_tokens or limits.max_batch_tokens)
        window: list[_Item] = []
        window_size = max_size * limits.window_batches
        while queue and len(window) < window_size:
            item = queue.popleft()
            if self._alive(item, now):
                window.append(item)
            else:
                self.stats.dropped_inputs += 1
        if not window:
            return []
        oldest = window[0]
        chosen: list[_Item] = []
        real_tokens = 0
        found_oldest = False
        slack = limits.padding_slack_tokens
        for item in sorted(window, key=lambda it: it.tokens.length):
            length = item.tokens.length
            padded = length * (len(chosen) + 1)  # sorted ascending: this input is the longest so far
            full = (
                padded > budget
                or len(chosen) >= max_size
                or padded > max(limits.max_padding_ratio * (real_tokens + length), real_tokens + length + slack)
            )
            if chosen and full:
                if found_oldest:
                    break
                chosen, real_tokens = [], 0
            chosen.append(item)
            real_tokens += length
            found_oldest = found_oldest or item is oldest
        taken = {id(item) for item in chosen}
        # Put the rest back at the front, in arrival order.
        queue.extendleft(reversed([item for item in window if id(item) not in taken]))
        return chosen

    def _record(self, batch: list[_Item], seconds: float) -> None:
        if self.on_batch is not None:
            padded = max(item.tokens.length for item in batch) * len(batch)
            self.on_batch(len(batch), padded, seconds)

    @staticmethod
    def _deliver(batch: list[_Item], pooled: np.ndarray, started: float, finished: float) -> None:
        for row, item in enumerate(batch):
            call = item.call
            if call.future.done():
                continue
            if call.results is None:
                call.results = np.empty((call.size, pooled.shape[1]), dtype=np.float32)
                call.started = started  # the call's first delivered batch: its queue wait ends here
            call.results[item.slot] = pooled[row]
            call.remaining -= 1
            if call.remaining == 0:
                call.finished = finished
                call.future.set_result(call.results)

    @staticmethod
    def _fail(batch: list[_Item], error: Exception) -> None:
        for item in batch:
            if not item.call.future.done():
                item.call.future.set_exception(error)
