"""One server process against two on one port (SO_REUSEPORT, setting `reuse_port`), on this machine's cores.

Issue 15 asked whether several server processes, each with its own event loop and batcher, serve small calls
faster when the event loop rather than inference is the bottleneck. Both set-ups run side by side and idle while
the other is measured:

- one process with the defaults (one single-threaded batch per core);
- two processes on one port, each with one inference slot of one thread (`--reuse-port true
  --inference-workers 1 --intra-op-threads 1`), so the machine runs as many batches at once as with one process.

The kernel spreads connections, not calls, over the processes, so the lean gRPC clients (bench/lean.py: requests
serialized before timing) open 8 connections for both set-ups and share the calls over them. Shapes: the null
backend (serving path alone) and the real model at 1 text a call from 32 clients (calls/s, server CPU per call
summed over the processes), 32 texts a call from 8 clients (texts/s), and one client's p50. Passes alternate
between the set-ups, medians reported; texts are unique per pass (no cache could answer them).

    python -m bench.processes [--model-repo models] [--quick] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc

from bench.common import ENGINE_ONLY, machine_facts
from bench.lean import ThreadCpu, median, percentile, run, wait_quiet
from bench.report import RESULTS, write_report
from bench.serving_path import EMBED, NULL_MODEL, REAL_MODEL, null_model_repo, unique_texts
from service._gen.embeddings.v1 import embeddings_pb2 as pb
from tests.serving import ServerProcess, free_port
from tests.stsb import load_pairs

CONNECTIONS = 8
QUIET_WAIT_S = 20.0
TWO_PROCESSES = ("--reuse-port", "true", "--inference-workers", "1", "--intra-op-threads", "1")


@dataclass(frozen=True)
class Shape:
    """A load shape: model, texts per call, concurrent clients, calls per pass."""

    model: str
    texts: int
    clients: int
    calls: int

    @property
    def name(self) -> str:
        kind = "null" if self.model == NULL_MODEL else "model"
        return f"{kind} {self.texts} text{'s' if self.texts > 1 else ''} c={self.clients}"


def shapes(quick: bool) -> list[Shape]:
    scale = 3 if quick else 1
    return [
        Shape(NULL_MODEL, 1, 32, 3000 // scale),
        Shape(REAL_MODEL, 1, 32, 1200 // scale),
        Shape(REAL_MODEL, 32, 8, 150 // scale),
        Shape(REAL_MODEL, 1, 1, 300 // scale),
    ]


@dataclass
class Pass:
    seconds: float
    calls: int
    texts: int
    server_cpu_s: float
    latencies_ms: list[float]


class Setup:
    """Server processes listening on one port, and client connections to it (each its own TCP connection)."""

    def __init__(self, name: str, servers: Sequence[ServerProcess], port: int) -> None:
        self.name, self.servers, self.port = name, servers, port
        self.channels: list[grpc.aio.Channel] = []

    async def connect(self) -> None:
        # A channel of its own subchannel pool opens its own connection; the kernel picks a process for each.
        self.channels = [
            grpc.aio.insecure_channel(f"127.0.0.1:{self.port}", options=[("grpc.use_local_subchannel_pool", 1)])
            for _ in range(CONNECTIONS)
        ]

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()

    @property
    def pids(self) -> list[int]:
        return [server.proc.pid for server in self.servers if server.proc is not None]

    def cpu_s(self) -> float:
        return sum(ThreadCpu.read(pid).total for pid in self.pids)

    async def calls(self, payloads: Sequence[bytes], clients: int) -> list[float]:
        """Every request, `clients` at a time, client i on connection i mod CONNECTIONS."""
        latencies: list[float] = []
        next_index = iter(range(len(payloads)))

        async def client(n: int) -> None:
            call = self.channels[n % len(self.channels)].unary_unary(EMBED)
            for index in next_index:
                started = time.perf_counter()
                answer = await call(payloads[index], timeout=120)
                latencies.append((time.perf_counter() - started) * 1000)
                if index == 0 and not pb.EmbedResponse.FromString(answer).embeddings:
                    raise RuntimeError(f"{self.name}: empty answer")

        await asyncio.gather(*(client(n) for n in range(clients)))
        return latencies

    async def measure(self, shape: Shape, sentences: Sequence[str], tag: str, others: Sequence[int]) -> Pass:
        texts = unique_texts(sentences, shape.calls * shape.texts, tag)
        payloads = [
            pb.EmbedRequest(model=shape.model, inputs=texts[i : i + shape.texts]).SerializeToString()
            for i in range(0, len(texts), shape.texts)
        ]
        wait_quiet([*self.pids, *others], QUIET_WAIT_S)
        cpu, started = self.cpu_s(), time.perf_counter()
        latencies = await self.calls(payloads, shape.clients)
        seconds = time.perf_counter() - started
        return Pass(seconds, len(payloads), len(texts), self.cpu_s() - cpu, latencies)


@dataclass
class Row:
    setup: str
    shape: str
    calls_per_s: float
    texts_per_s: float
    p50_ms: float
    server_cpu_ms_per_call: float


def summarize(setup: str, shape: Shape, passes: Sequence[Pass]) -> Row:
    latencies = [ms for p in passes for ms in p.latencies_ms]
    return Row(
        setup=setup,
        shape=shape.name,
        calls_per_s=median([p.calls / p.seconds for p in passes]),
        texts_per_s=median([p.texts / p.seconds for p in passes]),
        p50_ms=percentile(latencies, 50),
        server_cpu_ms_per_call=median([1000 * p.server_cpu_s / p.calls for p in passes]),
    )


async def measure(model_repo: Path, repeats: int, quick: bool) -> list[Row]:
    sentences = load_pairs("test").sentences
    plan = shapes(quick)
    with tempfile.TemporaryDirectory() as tmp:
        repo = null_model_repo(model_repo, Path(tmp) / "models")
        models = ("--models", f"{NULL_MODEL},{REAL_MODEL}")
        one_port, two_port = free_port(), free_port()
        one = [ServerProcess(repo, *ENGINE_ONLY, *models, "--port", str(one_port))]
        two = [ServerProcess(repo, *ENGINE_ONLY, *models, *TWO_PROCESSES, "--port", str(two_port)) for _ in range(2)]
        setups = [Setup("1 process", one, one_port), Setup("2 processes (SO_REUSEPORT)", two, two_port)]
        try:
            for server in [*one, *two]:
                server.start()
            for setup in setups:
                await setup.connect()
            passes: dict[tuple[str, str], list[Pass]] = {}
            for setup in setups:  # warm-up: connections, first shapes
                for shape in plan:
                    await setup.calls(
                        [pb.EmbedRequest(model=shape.model, inputs=["warm"] * shape.texts).SerializeToString()] * 64,
                        shape.clients,
                    )
            everyone = [pid for setup in setups for pid in setup.pids]
            for repeat in range(repeats):
                for shape in plan:
                    for setup in setups if repeat % 2 == 0 else setups[::-1]:
                        measured = await setup.measure(shape, sentences, f"r{repeat} {setup.name}", everyone)
                        passes.setdefault((setup.name, shape.name), []).append(measured)
                print(f"repeat {repeat + 1}/{repeats} done", flush=True)
            for setup in setups:
                await setup.close()
        finally:
            for server in [*one, *two]:
                server.stop()
    return [summarize(setup.name, shape, passes[(setup.name, shape.name)]) for shape in plan for setup in setups]


def markdown(facts: dict, rows: Sequence[Row], repeats: int) -> str:
    lines = [
        "# One server process or two on one port (SO_REUSEPORT)",
        "",
        f"Machine: {facts}. Medians of {repeats} interleaved passes; {CONNECTIONS} client connections for both.",
        "",
        "| shape | set-up | calls/s | texts/s | p50 ms | server CPU ms/call | vs 1 process |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    base = {row.shape: row for row in rows if row.setup == "1 process"}
    for row in rows:
        single = row.shape.endswith("c=1")
        ratio = (base[row.shape].p50_ms / row.p50_ms) if single else (row.texts_per_s / base[row.shape].texts_per_s)
        lines.append(
            f"| {row.shape} | {row.setup} | {row.calls_per_s:.0f} | {row.texts_per_s:.0f} | {row.p50_ms:.2f} | "
            f"{row.server_cpu_ms_per_call:.3f} | {ratio:.2f}x |"
        )
    lines += ["", "Ratio: throughput against one process (for c=1: its p50 over this p50; above 1 is better)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.processes", description=__doc__.split("\n")[0])
    parser.add_argument("--model-repo", type=Path, default=Path("models"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="shorter passes, one repeat")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    repeats = 1 if args.quick else args.repeats
    rows = run(measure(args.model_repo.resolve(), repeats, args.quick))
    facts = machine_facts()
    write_report(
        "processes", markdown(facts, rows, repeats), {"facts": facts, "rows": [asdict(r) for r in rows]}, args.out
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
