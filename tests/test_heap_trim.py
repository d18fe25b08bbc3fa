"""The heap is handed back after a call that received a large message (service/observability/heap.py): once per
burst, off the event loop, after the call has returned, and never for small calls. The real server's memory across
multi-megabyte inputs is checked in tests/test_long_inputs.py."""

from __future__ import annotations

import asyncio
import threading

from service.observability.heap import LARGE_MESSAGE_BYTES, HeapTrimmer, _malloc_trim


class CountingTrim:
    def __init__(self) -> None:
        self.threads: list[int] = []

    def __call__(self) -> None:
        self.threads.append(threading.get_ident())


async def _settled(trimmer: HeapTrimmer) -> None:
    """Until the trim started by the last call (if any) has finished."""
    while trimmer._running:
        await asyncio.sleep(0)


def test_small_calls_never_trim():
    async def scenario() -> list[int]:
        trim = CountingTrim()
        trimmer = HeapTrimmer(trim)
        for _ in range(100):
            trimmer.note_received(LARGE_MESSAGE_BYTES - 1)
            trimmer.after_call()
        await _settled(trimmer)
        return trim.threads

    assert asyncio.run(scenario()) == []


def test_a_large_message_trims_once_after_its_call_in_a_worker_thread():
    async def scenario() -> tuple[list[int], int]:
        trim = CountingTrim()
        trimmer = HeapTrimmer(trim)
        trimmer.note_received(LARGE_MESSAGE_BYTES)
        trimmer.after_call()
        assert trim.threads == []  # not within the call: on the loop's next turn, when its frames are gone
        await asyncio.sleep(0)
        await _settled(trimmer)
        trimmer.after_call()  # nothing large since: no second trim
        await _settled(trimmer)
        return trim.threads, threading.get_ident()

    threads, loop_thread = asyncio.run(scenario())
    assert len(threads) == 1 and threads[0] != loop_thread


def test_large_calls_that_end_during_a_trim_get_exactly_one_more():
    async def scenario() -> int:
        trim = CountingTrim()
        trimmer = HeapTrimmer(trim)
        for _ in range(10):
            trimmer.note_received(8 * LARGE_MESSAGE_BYTES)
            trimmer.after_call()  # the first starts a trim; the rest find it running
        await asyncio.sleep(0)
        await _settled(trimmer)
        return len(trim.threads)

    assert asyncio.run(scenario()) == 2


def test_glibc_trim_is_found_and_runs():
    trim = _malloc_trim()
    assert trim is not None  # the project's images and CI run glibc
    trim()
