"""Gives the heap back to the system after a call that received a large message.

A multi-megabyte request (gRPC's receive buffers, protobuf's copy, the decoded string) is freed when its call ends,
but glibc keeps the freed pages in its arenas: 12 calls of 8-15 MiB left the server ~200 MiB larger for good, which
no code held (measured with a bare grpc.aio server too: it levels off only after ~120 MiB). `malloc_trim(0)` hands
the free pages back. It runs off the event loop, once per burst of large calls, after the call that received them
has returned (its request no longer referenced), so small calls never pay for it. Where the C library has no
`malloc_trim` (musl, macOS) it does nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)
# A message at least this large makes the call that received it trim the heap once it has returned.
LARGE_MESSAGE_BYTES = 1 << 20


def _malloc_trim() -> Callable[[], None] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0)


class HeapTrimmer:
    """Counts large messages received (`note_received`) and trims once after a call (`after_call`) if any came."""

    def __init__(self, trim: Callable[[], None] | None = None, large_bytes: int = LARGE_MESSAGE_BYTES) -> None:
        self._trim = trim if trim is not None else _malloc_trim()
        self._large_bytes = large_bytes
        self._pending = False
        self._running = False

    def note_received(self, size: int) -> None:
        if size >= self._large_bytes:
            self._pending = True

    def after_call(self) -> None:
        """From the call's own task (event loop thread): the trim starts on the loop's next turn, when the call's
        frames are gone, in a worker thread. One trim at a time: large calls that end while it runs get one more."""
        if not self._pending or self._running or self._trim is None:
            return
        self._pending = False
        self._running = True
        loop = asyncio.get_running_loop()
        loop.call_soon(self._start, loop)

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.run_in_executor(None, self._trim).add_done_callback(self._finished)

    def _finished(self, done: asyncio.Future) -> None:
        self._running = False
        if done.exception() is not None:
            log.warning("malloc_trim failed: %s", done.exception())
        self.after_call()
