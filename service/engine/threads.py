"""The inference threads: a fixed set of threads that run what the batchers hand them, in order.

A ThreadPoolExecutor would do the same, but its `submit` takes two Python locks and builds a future and a work
item for every batch, on the event loop, though the batcher never looks at the future: its batch hands its outcome
back by itself (Batcher._run_batch). A C-level queue feeding threads started once costs the loop ~4 us a batch
instead of ~10, and the round trip to a thread and back ~40 us of CPU instead of ~60 (measured here); with one
small call per batch, that is per call.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

_STOP = None


class InferenceThreads:
    """`count` threads taking `(function, args)` from one queue; `submit` never blocks and returns nothing."""

    def __init__(self, count: int, name: str = "inference") -> None:
        if count < 1:
            raise ValueError(f"need at least one inference thread, got {count}")
        self._queue: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...]] | None] = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._work, name=f"{name}_{i}", daemon=True) for i in range(count)]
        self._closed = False
        for thread in self._threads:
            thread.start()

    def __enter__(self) -> InferenceThreads:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()

    def submit(self, function: Callable[..., Any], *args: Any) -> None:
        if self._closed:
            raise RuntimeError("the inference threads are shut down")
        self._queue.put((function, args))

    def shutdown(self, wait: bool = True) -> None:
        """Stop taking work and drop what has not started (its callers are gone with the loop); the threads finish
        the batches they are running, then exit."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(queue.Empty):
            while True:
                self._queue.get_nowait()
        for _ in self._threads:
            self._queue.put(_STOP)
        if wait:
            for thread in self._threads:
                thread.join()

    def _work(self) -> None:
        while (task := self._queue.get()) is not _STOP:
            function, args = task
            try:
                function(*args)
            except BaseException:  # a batch reports its own failures; anything else must not kill the thread
                log.exception("an inference task failed")
