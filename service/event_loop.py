"""The server's event loop: uvloop where it is installed (the default), else asyncio's own.

Most of a small call's CPU in the server is event-loop work (grpc.aio's callbacks, futures, tasks, the wake-ups of
thread hand-offs); uvloop does the same work for less: measured with the null backend (bench/serving_path.py, one
short text a call, 32 clients, the same run), server CPU per gRPC call 0.71 -> 0.62 ms, per REST call 0.80 -> 0.74
ms. `event_loop = "asyncio"` keeps the standard loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

EVENT_LOOPS = ("auto", "uvloop", "asyncio")


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """What `asyncio.Runner` builds the loop with (None: asyncio's default). ValueError for an unknown name, or for
    "uvloop" when it is not installed."""
    if name not in EVENT_LOOPS:
        raise ValueError(f"event_loop must be one of {', '.join(EVENT_LOOPS)}, got {name!r}")
    if name == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if name == "uvloop":
            raise ValueError("event_loop is uvloop, but uvloop is not installed (pip install uvloop)") from None
        return None
    return uvloop.new_event_loop
