"""Memory soak: does the server's resident memory stay flat under minutes of mixed traffic?

A fresh server with every model of the repository (no --models filter: both default models, as shipped) and
Envoy in front of it take a steady mix of request shapes - gRPC and REST, both models, 1 to 256 inputs, short
sentences and long passages, every vector encoding - from concurrent clients. After a warm-up (allocators and
ONNX Runtime's arena grow to their working size) VmRSS is sampled at a fixed interval; a leak shows as a climb
across the samples, a working set as a plateau.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
import httpx2 as httpx

from bench.common import GRPC_ENCODINGS, make_requests, rest_bodies
from bench.datasets import TextSet
from bench.memory import peak_rss_mib, rss_mib
from bench.stack import serve
from service._gen.embeddings.v1 import embeddings_pb2_grpc as pb_grpc

# Samples may drift this far from the first one (after warm-up) and still count as flat.
FLAT_TOLERANCE = 0.10
CLIENTS = 8


@dataclass(frozen=True)
class Shape:
    """One kind of request in the mix."""

    path: str  # "grpc" or "rest"
    model: str
    inputs: int
    encoding: str  # grpc: "float" / "bytes"; rest: "float" / "base64"
    data: str  # a TextSet name


def soak_mix(fp32: str, int8: str) -> tuple[Shape, ...]:
    """Every path, model, size and encoding the service sees, weighted towards the common small calls."""
    return (
        Shape("grpc", fp32, 32, "float", "stsb"),
        Shape("rest", fp32, 1, "base64", "stsb"),
        Shape("grpc", int8, 256, "bytes", "stsb"),
        Shape("rest", int8, 32, "float", "stsb"),
        Shape("grpc", fp32, 1, "bytes", "stsb"),
        Shape("rest", fp32, 8, "base64", "long"),
        Shape("grpc", int8, 1, "float", "stsb"),
        Shape("grpc", fp32, 16, "float", "long"),
    )


@dataclass
class SoakResult:
    duration_s: float
    warmup_s: float
    interval_s: float
    samples: list[tuple[float, float]] = field(default_factory=list)  # (seconds after warm-up, VmRSS MiB)
    idle_mib: float = 0.0  # VmRSS once ready, before any request: the models and sessions alone
    peak_mib: float = 0.0  # VmHWM at the end: the peak over warm-up and soak
    envoy_rss_mib: float = 0.0
    requests: dict[str, int] = field(default_factory=dict)
    inputs: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def start_mib(self) -> float:
        return self.samples[0][1]

    @property
    def end_mib(self) -> float:
        return self.samples[-1][1]

    @property
    def max_mib(self) -> float:
        return max(rss for _, rss in self.samples)

    @property
    def drift(self) -> float:
        """The largest departure of any sample from the first, as a fraction of it."""
        return max(abs(rss - self.start_mib) for _, rss in self.samples) / self.start_mib

    @property
    def flat(self) -> bool:
        return self.drift <= FLAT_TOLERANCE

    def to_json(self) -> dict[str, object]:
        return {
            **asdict(self),
            "start_mib": self.start_mib,
            "end_mib": self.end_mib,
            "max_mib": self.max_mib,
            "drift": self.drift,
            "flat": self.flat,
        }


class MixedLoad:
    """CLIENTS tasks sending the mix round-robin (each from its own offset), each request with the next texts of
    its data set, until stopped. Payloads are built per request: a soak is about the server, not client speed."""

    def __init__(
        self, sets: dict[str, TextSet], mix: tuple[Shape, ...], stub: pb_grpc.EmbeddingServiceStub, rest_url: str
    ) -> None:
        self.sets, self.mix, self.stub, self.rest_url = sets, mix, stub, rest_url
        self.cursors = dict.fromkeys(sets, 0)
        self.requests: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.inputs = 0
        self.stopping = asyncio.Event()

    def texts(self, shape: Shape) -> list[str]:
        texts = self.sets[shape.data].texts
        start = self.cursors[shape.data]
        self.cursors[shape.data] = (start + shape.inputs) % len(texts)
        return [texts[(start + i) % len(texts)] for i in range(shape.inputs)]

    async def send(self, shape: Shape, http: httpx.AsyncClient) -> None:
        texts, truncate = self.texts(shape), shape.data == "long"
        if shape.path == "grpc":
            (request,) = make_requests(shape.model, texts, GRPC_ENCODINGS[shape.encoding], len(texts), truncate)
            await self.stub.Embed(request, timeout=120)
        else:
            (body,) = rest_bodies(shape.model, texts, shape.encoding, len(texts), truncate)
            response = await http.post(self.rest_url, content=body, headers={"content-type": "application/json"})
            response.raise_for_status()

    async def client(self, offset: int, http: httpx.AsyncClient) -> None:
        for shape in itertools.islice(itertools.cycle(self.mix), offset, None):
            if self.stopping.is_set():
                return
            key = f"{shape.path} {shape.model} {shape.inputs}/req {shape.encoding} {shape.data}"
            try:
                await self.send(shape, http)
                self.requests[key] += 1
                self.inputs += shape.inputs
            except (grpc.RpcError, httpx.HTTPError) as err:
                self.errors[f"{key}: {type(err).__name__}"] += 1

    async def run(self) -> None:
        limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
        async with httpx.AsyncClient(limits=limits, timeout=120) as http:
            await asyncio.gather(*(self.client(i, http) for i in range(CLIENTS)))


async def sample_rss(pid: int, duration_s: float, interval_s: float) -> list[tuple[float, float]]:
    """VmRSS every `interval_s` for `duration_s` (both ends included), timed from the first sample."""
    samples, start = [], time.monotonic()
    while True:
        elapsed = time.monotonic() - start
        samples.append((round(elapsed, 1), rss_mib(pid)))
        if elapsed >= duration_s - interval_s / 2:
            return samples
        await asyncio.sleep(max(0.0, start + len(samples) * interval_s - time.monotonic()))


async def soak(
    model_repo: Path,
    sets: dict[str, TextSet],
    mix: tuple[Shape, ...],
    duration_s: float,
    warmup_s: float,
    interval_s: float = 5.0,
) -> SoakResult:
    """Start the server and Envoy, load them, and sample the server's VmRSS after the warm-up."""
    result = SoakResult(duration_s, warmup_s, interval_s)
    async with serve(model_repo) as stack:
        result.idle_mib = rss_mib(stack.server_pid)
        load = MixedLoad(sets, mix, stack.stub, stack.rest_url)
        traffic = asyncio.create_task(load.run())
        await asyncio.sleep(warmup_s)
        result.samples = await sample_rss(stack.server_pid, duration_s, interval_s)
        load.stopping.set()
        await traffic
        result.peak_mib = peak_rss_mib(stack.server_pid)
        result.envoy_rss_mib = rss_mib(stack.gateway_pid)
    result.requests, result.errors, result.inputs = dict(load.requests), dict(load.errors), load.inputs
    return result
