"""Load clients lean enough not to be the bottleneck on a 2-core machine, and CPU accounting per process and thread.

A benchmark of the serving path must spend less CPU per call than the server does, or it measures itself: the suite's
clients (a protobuf stub over grpc.aio, httpx over REST) cost ~0.3 ms and ~1.3 ms a call. Here requests are
serialized before timing starts: the gRPC client calls a raw `channel.unary_unary` with identity serializers (bytes
in, bytes out), and the REST client writes pre-encoded HTTP/1.1 requests on keep-alive connections with asyncio
streams and reads the answers by their content-length. Their own CPU is measured and reported beside every figure.

The server side is read from /proc: a process's CPU split by thread into its main thread (which runs the asyncio
event loop), gRPC core's threads (event_engine, grpc_global_timer, ...) and the other Python threads (inference,
tokenizers, executors).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

CLK_TCK = os.sysconf("SC_CLK_TCK")
# gRPC core names its threads; Python threads keep the interpreter's name.
GRPC_THREADS = ("event_engine", "grpc_", "lifeguard", "resolver", "default-executo", "ExecCtx")


def proc_stat(path: Path) -> tuple[str, float]:
    """(thread name, utime + stime in seconds) of a /proc stat file (the name may hold spaces and parentheses)."""
    text = path.read_text()
    name = text[text.index("(") + 1 : text.rindex(")")]
    fields = text.rsplit(")", 1)[1].split()
    return name, (int(fields[11]) + int(fields[12])) / CLK_TCK


@dataclass(frozen=True)
class ThreadCpu:
    """CPU seconds of one process so far, by kind of thread. Threads that ended are counted in `total` only."""

    total: float
    loop: float
    grpc: float

    @property
    def other(self) -> float:
        return self.total - self.loop - self.grpc

    @classmethod
    def read(cls, pid: int) -> ThreadCpu:
        _, total = proc_stat(Path(f"/proc/{pid}/stat"))
        loop = grpc_core = 0.0
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                name, seconds = proc_stat(task / "stat")
            except (FileNotFoundError, ProcessLookupError):  # the thread ended meanwhile
                continue
            if task.name == str(pid):
                loop = seconds
            elif name.startswith(GRPC_THREADS):
                grpc_core += seconds
        return cls(total, loop, grpc_core)

    def minus(self, earlier: ThreadCpu) -> ThreadCpu:
        return ThreadCpu(self.total - earlier.total, self.loop - earlier.loop, self.grpc - earlier.grpc)


def machine_busy_s() -> float:
    """Non-idle CPU seconds of the whole machine since boot."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, Path("/proc/stat").read_text().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


@dataclass(frozen=True)
class Snapshot:
    """CPU so far of the server, of Envoy (if any), of this process (the client) and of the whole machine."""

    server: ThreadCpu
    envoy: float
    client: float
    machine: float
    wall: float

    @classmethod
    def take(cls, server_pid: int, envoy_pid: int | None) -> Snapshot:
        envoy = proc_stat(Path(f"/proc/{envoy_pid}/stat"))[1] if envoy_pid else 0.0
        return cls(ThreadCpu.read(server_pid), envoy, time.process_time(), machine_busy_s(), time.perf_counter())


@dataclass
class Measured:
    """One timed pass: wall time, calls, and the CPU each side spent (seconds)."""

    seconds: float
    calls: int
    server: ThreadCpu
    envoy_s: float
    client_s: float
    other_s: float
    latencies_ms: list[float] = field(default_factory=list)

    @classmethod
    def between(cls, before: Snapshot, after: Snapshot, calls: int, latencies: list[float]) -> Measured:
        server = after.server.minus(before.server)
        envoy, client = after.envoy - before.envoy, after.client - before.client
        other = max(0.0, after.machine - before.machine - server.total - envoy - client)
        return cls(after.wall - before.wall, calls, server, envoy, client, other, latencies)

    def per_call_ms(self, seconds: float) -> float:
        return 1000 * seconds / self.calls

    @property
    def calls_per_s(self) -> float:
        return self.calls / self.seconds

    @property
    def other_cores(self) -> float:
        """Cores used by other processes meanwhile (a shared machine's noise)."""
        return self.other_s / self.seconds


def wait_quiet(pids: Sequence[int], max_wait_s: float, cores: float = 0.15, window_s: float = 0.5) -> float:
    """Wait until processes other than `pids` and this one use less than `cores` (at most `max_wait_s`): on a shared
    machine a neighbour's burst would halve a run. Returns the seconds waited; gives up (saying so) after
    `max_wait_s`, and the run's figures of other processes' CPU then show the disturbance."""
    start = time.monotonic()
    while time.monotonic() - start < max_wait_s:
        busy, own = machine_busy_s(), _own_cpu(pids)
        time.sleep(window_s)
        if machine_busy_s() - busy - (_own_cpu(pids) - own) < cores * window_s:
            break
    else:
        print(f"machine still busy after {max_wait_s:.0f}s; measuring anyway", file=sys.stderr)
    return time.monotonic() - start


def _own_cpu(pids: Sequence[int]) -> float:
    return time.process_time() + sum(proc_stat(Path(f"/proc/{pid}/stat"))[1] for pid in pids if pid)


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] if ordered else float("nan")


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def run(main: Coroutine):
    """Run the benchmark's coroutine on uvloop where installed (the server's loop too): the clients' CPU per call
    drops by ~15% (gRPC 0.21 -> 0.18 ms, REST 0.058 -> 0.045 ms, measured)."""
    from service.event_loop import loop_factory

    with asyncio.Runner(loop_factory=loop_factory("auto")) as runner:
        return runner.run(main)


# ---------------------------------------------------------------- gRPC


async def grpc_calls(
    channel: grpc.aio.Channel, method: str, payloads: Sequence[bytes], concurrency: int, timeout: float = 60.0
) -> tuple[list[float], bytes]:
    """Send every pre-serialized request, `concurrency` at a time on one channel. Returns latencies (ms) and the
    first response's bytes (for the caller to check)."""
    call = channel.unary_unary(method)  # no serializers: bytes in, bytes out
    latencies: list[float] = []
    first: list[bytes] = []
    next_index = iter(range(len(payloads)))
    clock = time.perf_counter

    async def client() -> None:
        for index in next_index:
            started = clock()
            response = await call(payloads[index], timeout=timeout)
            latencies.append((clock() - started) * 1000)
            if not first:
                first.append(response)

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return latencies, first[0]


# ---------------------------------------------------------------- REST


def http_request(path: str, body: bytes, headers: Sequence[tuple[str, str]] = ()) -> bytes:
    """A whole HTTP/1.1 POST with a JSON body, encoded once."""
    lines = [f"POST {path} HTTP/1.1", "Host: bench", "Content-Type: application/json", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class HttpError(RuntimeError):
    pass


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """Status and body of one response (content-length or chunked), headers otherwise skipped."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lower = head.lower()
    at = lower.find(b"\r\ncontent-length:")
    if at >= 0:
        end = lower.index(b"\r\n", at + 2)
        return status, await reader.readexactly(int(lower[at + 17 : end]))
    if b"transfer-encoding: chunked" not in lower:
        raise HttpError(f"a response without a length: {head[:200]!r}")
    parts = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        parts.append(await reader.readexactly(size + 2))
        if size == 0:
            return status, b"".join(parts)[:-2]


async def http_calls(host: str, port: int, requests: Sequence[bytes], concurrency: int) -> tuple[list[float], bytes]:
    """Send every pre-encoded request, `concurrency` keep-alive connections at a time. Any answer but 200 stops the
    run. Returns latencies (ms) and the first response's body."""
    latencies: list[float] = []
    first: list[bytes] = []
    next_index = iter(range(len(requests)))
    clock = time.perf_counter

    async def client() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            for index in next_index:
                started = clock()
                writer.write(requests[index])
                status, body = await _read_response(reader)
                latencies.append((clock() - started) * 1000)
                if status != 200:
                    raise HttpError(f"HTTP {status}: {body[:300]!r}")
                if not first:
                    first.append(body)
        finally:
            writer.close()

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return latencies, first[0]
