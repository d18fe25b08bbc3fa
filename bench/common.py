"""What every benchmark here shares: CPU accounting, the quiet-machine guard, the in-process baseline, the gRPC and
REST clients, and summaries of timed runs.

All paths share the machine's cores, so a benchmark never runs two of them at once: the server idles while the
baseline runs, and the benchmark process only waits on the network while the server works. The CPU accounting
says where the time went (server, its event loop, the client) and whether another process disturbed a run.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import os
import platform
import statistics
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import grpc
import httpx2 as httpx
import numpy as np
import onnxruntime as ort
import orjson

from bench import lean
from bench.lean import machine_busy_s, proc_stat
from service._gen.embeddings.v1 import embeddings_pb2 as pb
from service._gen.embeddings.v1 import embeddings_pb2_grpc as pb_grpc
from service.engine.backends import RuntimeOptions
from service.engine.backends.onnxruntime import OnnxRuntimeBackend
from service.engine.encoder import Encoder
from service.engine.manifest import MODEL_FILE, TOKENIZER_FILE, ModelManifest
from service.engine.pooling import EmbeddingHead, finalize
from service.engine.tokenize import TextTokenizer, TokenizedInput

# The engine benchmarks run with the embedding cache off: their repeated passes over the same inputs would
# otherwise time the cache (bench/cache.py times the cache itself).
ENGINE_ONLY = ("--cache-bytes", "0")

REQUEST_SIZE = 32
# gRPC vector encodings by the names the reports use.
GRPC_ENCODINGS = {"float": pb.ENCODING_FORMAT_FLOAT, "bytes": pb.ENCODING_FORMAT_BYTES}
# Vectors of two paths differ only by float rounding (batch composition changes the padded shapes).
MAX_VECTOR_DIFF = 1e-4
# A run starts only once other processes use less than this many cores (sampled over QUIET_WINDOW_S).
QUIET_CORES = 0.1
QUIET_WINDOW_S = 0.5
QUIET_MAX_WAIT_S = 60.0
# A run during which other processes used more than this share of one core is reported as disturbed.
DISTURBED_CORES = 0.1


@dataclass(frozen=True)
class BaselineConfig:
    """In-process batching: batch size, and batches run at once (1: one session using every core; N: N batches
    in parallel, one ONNX Runtime thread each - the server's default on the CPU)."""

    batch_size: int
    workers: int = 1

    @property
    def name(self) -> str:
        if self.workers == 1:
            return f"in-process batch={self.batch_size}"
        return f"in-process batch={self.batch_size}, {self.workers} at once x 1 thread"


BASELINE_CONFIGS = (BaselineConfig(32), BaselineConfig(64), BaselineConfig(16, 2), BaselineConfig(32, 2))


@dataclass
class Run:
    """One timed pass over a workload, with the CPU both processes spent during it."""

    config: str
    repeat: int
    seconds: float
    sentences: int
    server_cpu_s: float
    server_loop_cpu_s: float
    client_cpu_s: float
    other_cpu_s: float
    waited_s: float
    latencies_ms: list[float] = field(default_factory=list)
    # Tokens the model processed (special tokens included, after truncation); 0 where not counted.
    tokens: int = 0

    @property
    def throughput(self) -> float:
        return self.sentences / self.seconds

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds

    @property
    def disturbed(self) -> bool:
        return self.other_cpu_s > DISTURBED_CORES * self.seconds


# ---------------------------------------------------------------- CPU accounting


@dataclass(frozen=True)
class CpuClock:
    """CPU seconds so far: the server (all threads, and its main thread alone, which runs the asyncio event loop),
    this process, and the whole machine. The split shows whether the server's event loop rather than inference
    is the bottleneck; the remainder (other processes) shows whether a run was disturbed from outside."""

    server_total: float
    server_loop: float
    client: float
    machine: float

    @classmethod
    def read(cls, server_pids: Sequence[int]) -> CpuClock:
        """`server_pids[0]` is the gRPC server; the others (Envoy) count as server side too."""
        main = server_pids[0]
        return cls(
            server_total=sum(proc_stat(Path(f"/proc/{pid}/stat"))[1] for pid in server_pids),
            server_loop=proc_stat(Path(f"/proc/{main}/task/{main}/stat"))[1],
            client=time.process_time(),
            machine=machine_busy_s(),
        )

    def until(self, later: CpuClock) -> dict[str, float]:
        server, client = later.server_total - self.server_total, later.client - self.client
        return {
            "server_cpu_s": server,
            "server_loop_cpu_s": later.server_loop - self.server_loop,
            "client_cpu_s": client,
            "other_cpu_s": max(0.0, later.machine - self.machine - server - client),
        }


def wait_quiet(server_pids: Sequence[int], max_wait_s: float = QUIET_MAX_WAIT_S) -> float:
    """Wait until other processes use less than QUIET_CORES, so that a run measures only the paths under test.

    On a shared 2-core machine a neighbour's test run halves the figures; waiting beats reporting noise. Returns
    the seconds waited; gives up (and the run is flagged by its other_cpu_s) after `max_wait_s`.
    """
    return lean.wait_quiet(server_pids, max_wait_s, cores=QUIET_CORES, window_s=QUIET_WINDOW_S)


@dataclass(frozen=True)
class Meter:
    """Times blocks of work against the server side (`pids`: the gRPC server first, then Envoy)."""

    pids: Sequence[int]
    max_wait_s: float = QUIET_MAX_WAIT_S

    @contextmanager
    def measure(self) -> Iterator[dict[str, float]]:
        """Wall time and CPU of the block (after waiting for a quiet machine), filled in when the block ends."""
        out: dict[str, float] = {"waited_s": wait_quiet(self.pids, self.max_wait_s)}
        before = CpuClock.read(self.pids)
        start = time.perf_counter()
        yield out
        out["seconds"] = time.perf_counter() - start
        out.update(before.until(CpuClock.read(self.pids)))


# ---------------------------------------------------------------- the in-process baseline


class InProcessBaseline:
    """The engine's tokenizer and encoder called directly, with the best batching a batch job can do: the
    throughput the server would reach if serving cost nothing."""

    def __init__(self, model_dir: Path) -> None:
        manifest = ModelManifest.load(model_dir)
        self.tokenizer = TextTokenizer(model_dir / TOKENIZER_FILE, manifest.max_input_tokens)
        model = model_dir / MODEL_FILE
        # One session using every core (ONNX Runtime's default), and one for parallel single-threaded batches.
        head = EmbeddingHead.from_manifest(manifest, model_dir)
        self.encoder = Encoder(OnnxRuntimeBackend(model, RuntimeOptions()), head)
        self.single_thread_encoder = Encoder(OnnxRuntimeBackend(model, RuntimeOptions(intra_op_threads=1)), head)
        self.pool = ThreadPoolExecutor(max(c.workers for c in BASELINE_CONFIGS))
        self.normalize = manifest.normalize
        self.dimensions = manifest.dimensions

    def tokenize(self, sentences: Sequence[str]) -> list[TokenizedInput]:
        """Token ids as the server computes them for a request with `truncate` set: over-long inputs are cut to
        the model's limit (inputs within it, all of STS-B, are untouched)."""
        return self.tokenizer.encode(sentences, truncate=True)

    def token_counts(self, sentences: Sequence[str]) -> list[int]:
        """Tokens the model processes per input (special tokens included, after truncation)."""
        return [item.length for item in self.tokenize(sentences)]

    def embed(self, sentences: Sequence[str], config: BaselineConfig) -> np.ndarray:
        """Vectors in input order: tokenize everything, sort by token count, run fixed-size batches, normalize.

        Sorting is the best a batch job can do: batches of similar lengths waste almost nothing on padding.
        """
        tokens = self.tokenize(sentences)
        order = sorted(range(len(tokens)), key=lambda i: tokens[i].length)
        batches = [order[i : i + config.batch_size] for i in range(0, len(order), config.batch_size)]
        encoder = self.encoder if config.workers == 1 else self.single_thread_encoder

        def run(rows: list[int]) -> np.ndarray:
            return finalize(encoder.embed([tokens[i] for i in rows]), None, self.normalize)

        results = map(run, batches) if config.workers == 1 else self.pool.map(run, batches)
        vectors = np.empty((len(tokens), self.dimensions), dtype=np.float32)
        for rows, result in zip(batches, results, strict=True):
            vectors[rows] = result
        return vectors


def best_in_process_rate(
    model_dir: Path, sentences: Sequence[str], configs: Sequence[BaselineConfig] = BASELINE_CONFIGS, warm_up: int = 0
) -> float:
    """Sentences per second of the best of `configs` embedding `sentences` in process (after `warm_up` of them
    once, with the first config): the limit a served path is compared with."""
    baseline = InProcessBaseline(model_dir)
    if warm_up:
        baseline.embed(sentences[:warm_up], configs[0])
    best = 0.0
    for config in configs:
        started = time.perf_counter()
        baseline.embed(sentences, config)
        best = max(best, len(sentences) / (time.perf_counter() - started))
    return best


def run_baseline(
    baseline: InProcessBaseline,
    sentences: Sequence[str],
    config: BaselineConfig,
    repeat: int,
    meter: Meter,
    name: str | None = None,
    tokens: int = 0,
) -> Run:
    with meter.measure() as m:
        vectors = baseline.embed(sentences, config)
    return Run(name or config.name, repeat, sentences=len(vectors), tokens=tokens, **m)


# ---------------------------------------------------------------- the gRPC path


def make_requests(
    model: str, sentences: Sequence[str], encoding: int, size: int = REQUEST_SIZE, truncate: bool = False
) -> list[pb.EmbedRequest]:
    """Consecutive slices of `size` in dataset order (unsorted, as real traffic arrives), built before timing:
    building requests is the client's business, not the server's."""
    return [
        pb.EmbedRequest(model=model, inputs=sentences[i : i + size], encoding_format=encoding, truncate=truncate)
        for i in range(0, len(sentences), size)
    ]


async def send_all(
    stub: pb_grpc.EmbeddingServiceStub, requests: Sequence[pb.EmbedRequest], concurrency: int
) -> tuple[list[float], list[pb.EmbedResponse | None]]:
    """`concurrency` tasks pull requests off a shared queue until it is empty. Returns per-request latencies
    (ms) and the responses in request order."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(len(requests)):
        queue.put_nowait(index)
    latencies: list[float] = []
    responses: list[pb.EmbedResponse | None] = [None] * len(requests)

    async def client() -> None:
        while not queue.empty():
            index = queue.get_nowait()
            start = time.perf_counter()
            response = await stub.Embed(requests[index])
            latencies.append((time.perf_counter() - start) * 1000)
            if len(response.embeddings) != len(requests[index].inputs):
                raise RuntimeError(
                    f"request {index}: {len(response.embeddings)} vectors for {len(requests[index].inputs)} inputs"
                )
            responses[index] = response

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return latencies, responses


async def run_grpc(
    stub: pb_grpc.EmbeddingServiceStub,
    requests: Sequence[pb.EmbedRequest],
    name: str,
    concurrency: int,
    repeat: int,
    meter: Meter,
    tokens: int = 0,
) -> Run:
    with meter.measure() as m:
        latencies, responses = await send_all(stub, requests, concurrency)
    sentences = sum(len(r.embeddings) for r in responses if r is not None)
    return Run(name, repeat, sentences=sentences, latencies_ms=latencies, tokens=tokens, **m)


def decode(responses: Sequence[pb.EmbedResponse]) -> np.ndarray:
    """All vectors of the responses, in order, whichever encoding they came in."""
    rows = []
    for response in responses:
        for embedding in response.embeddings:
            if embedding.data:
                rows.append(np.frombuffer(embedding.data, dtype="<f4"))
            else:
                rows.append(np.asarray(embedding.values, dtype=np.float32))
    return np.vstack(rows)


# ---------------------------------------------------------------- the REST path


def rest_bodies(
    model: str, sentences: Sequence[str], encoding_format: str, size: int = REQUEST_SIZE, truncate: bool = False
) -> list[bytes]:
    """The same slices as the gRPC requests, as OpenAI JSON bodies (`truncate` is the service's extension)."""
    extra = {"truncate": True} if truncate else {}
    return [
        orjson.dumps(
            {"model": model, "input": list(sentences[i : i + size]), "encoding_format": encoding_format, **extra}
        )
        for i in range(0, len(sentences), size)
    ]


def rest_vectors(body: bytes) -> np.ndarray:
    """Vectors of one OpenAI response, decoded as the openai SDK does (base64) or parsed (float)."""
    data = orjson.loads(body)["data"]
    if data and isinstance(data[0]["embedding"], str):
        return np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in data])
    return np.array([d["embedding"] for d in data], dtype=np.float32)


async def send_all_rest(
    url: str, bodies: Sequence[bytes], concurrency: int
) -> tuple[list[float], list[np.ndarray | None]]:
    """Like send_all, over HTTP/1.1 keep-alive connections (one per client task, as SDK clients pool them)."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(len(bodies)):
        queue.put_nowait(index)
    latencies: list[float] = []
    vectors: list[np.ndarray | None] = [None] * len(bodies)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=300) as client:

        async def worker() -> None:
            while not queue.empty():
                index = queue.get_nowait()
                start = time.perf_counter()
                response = await client.post(url, content=bodies[index], headers={"content-type": "application/json"})
                latencies.append((time.perf_counter() - start) * 1000)
                response.raise_for_status()
                vectors[index] = rest_vectors(response.content)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, vectors


async def run_rest(
    url: str, bodies: Sequence[bytes], name: str, concurrency: int, repeat: int, meter: Meter, tokens: int = 0
) -> Run:
    with meter.measure() as m:
        latencies, vectors = await send_all_rest(url, bodies, concurrency)
    sentences = sum(len(v) for v in vectors if v is not None)
    return Run(name, repeat, sentences=sentences, latencies_ms=latencies, tokens=tokens, **m)


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """The lowest cosine similarity of two sets of vectors, row by row."""
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(axis=1).min())


def check_close(label: str, got: np.ndarray, expected: np.ndarray) -> float:
    """The largest difference between two paths' vectors; raises if they compute different things."""
    diff = float(np.abs(got - expected).max())
    if diff > MAX_VECTOR_DIFF:
        raise RuntimeError(f"{label} vectors differ from in-process by {diff}")
    return diff


# ---------------------------------------------------------------- reporting


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_facts(*packages: str) -> dict[str, object]:
    """The machine and the versions that shape the figures (plus the versions of `packages`)."""
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "onnxruntime": ort.__version__,
        "grpcio": grpc.__version__,
        "python": platform.python_version(),
        **{package: _version(package) for package in packages},
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def percentile(values: Sequence[float], q: float) -> float | None:
    """None where there is nothing to rank (the baseline has no requests); None also keeps the JSON valid."""
    return float(np.percentile(values, q)) if values else None


Summary = dict[str, dict[str, float | None]]


def summarize(runs: Sequence[Run]) -> Summary:
    """Per config: median throughput and CPU over repeats; latency percentiles over all requests of all repeats
    (a pass at concurrency 1 may have fewer than 100 requests, too few for a p99 of its own)."""
    summary: Summary = {}
    for name in dict.fromkeys(r.config for r in runs):
        mine = [r for r in runs if r.config == name]
        latencies = [ms for r in mine for ms in r.latencies_ms]
        summary[name] = {
            "sentences_per_s": statistics.median(r.throughput for r in mine),
            "tokens_per_s": statistics.median(r.tokens_per_s for r in mine),
            "best_sentences_per_s": max(r.throughput for r in mine),
            "runs": len(mine),
            "server_cpu_s": statistics.median(r.server_cpu_s for r in mine),
            "server_loop_cpu_s": statistics.median(r.server_loop_cpu_s for r in mine),
            "client_cpu_s": statistics.median(r.client_cpu_s for r in mine),
            "other_cpu_s": statistics.median(r.other_cpu_s for r in mine),
            "disturbed_runs": sum(r.disturbed for r in mine),
            "seconds": statistics.median(r.seconds for r in mine),
            "p50_ms": percentile(latencies, 50),
            "p99_ms": percentile(latencies, 99),
        }
    return summary
