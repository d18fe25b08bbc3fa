"""What the job and batch workers share: background loops that poll a store and wake early when told of new work.

All their state lives in the store, so a loop can die with the process and resume from the store; `notify` only
saves the wait until the next poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any


def now_s() -> int:
    """Store time: whole seconds since the epoch."""
    return int(time.time())


class WorkerLoops:
    """A set of named background tasks, and the wake-up they share."""

    def __init__(self, poll_s: float) -> None:
        self._poll_s = poll_s
        self._wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    def _spawn(self, loops: dict[str, Coroutine[Any, Any, None]]) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(coro, name=name) for name, coro in loops.items()]

    def notify(self) -> None:
        """Something changed that may make work: look for it now instead of at the next poll."""
        self._wakeup.set()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _idle(self) -> None:
        """Wait for a `notify`, or the poll interval."""
        self._wakeup.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), self._poll_s)


async def sweep_forever(
    every_s: float, sweep: Callable[[], Awaitable[int]], log: logging.Logger, removed: str, failed: str
) -> None:
    """Run a cleanup every `every_s` seconds, logging what it removed (`removed` takes the count) or that it failed:
    a failed sweep is tried again at the next turn."""
    while True:
        try:
            count = await sweep()
            if count:
                log.info(removed, count)
        except Exception:
            log.exception(failed)
        await asyncio.sleep(every_s)
