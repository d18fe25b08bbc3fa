"""Throughput of the service (gRPC, and REST through Envoy) against the in-process limit, on STS-B test sentences.

How much of ONNX Runtime's in-process throughput survives the trip through the server (gRPC, protobuf, the
event loop, dynamic batching) and the gateway (JSON transcoding)? The baseline calls the engine's own tokenizer
and encoder directly with the best simple batching (length-sorted, fixed-size batches, sequential or parallel),
so the ratio isolates what serving costs. All paths share the machine's cores, so they never overlap: the server
idles while the baseline runs, and this process only waits on the network while the server works. Repetitions
are interleaved (baseline, then every config) so that drift of the machine hits every config alike; medians are
reported.

    python -m bench.throughput [--model-repo models] [--model all-minilm-l6-v2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
import httpx2 as httpx
import numpy as np
import onnxruntime as ort
import orjson
from embeddings.v1 import embeddings_pb2 as pb
from embeddings.v1 import embeddings_pb2_grpc as pb_grpc

from service.engine.pooling import finalize
from service.engine.runtime import OnnxEncoder, RuntimeOptions
from service.engine.tokenize import TextTokenizer
from service.manifest import MODEL_FILE, TOKENIZER_FILE, ModelManifest
from service.registry import discover
from tests.serving import EnvoyProcess, ServerProcess
from tests.stsb import load_pairs

NAME = "throughput"


@dataclass(frozen=True)
class BaselineConfig:
    """In-process batching: batch size, and batches run at once (1: one session using every core; N: N batches
    in parallel, one ONNX Runtime thread each - the server's default on the CPU)."""

    batch_size: int
    workers: int = 1


BASELINE_CONFIGS = (BaselineConfig(32), BaselineConfig(64), BaselineConfig(16, 2), BaselineConfig(32, 2))
REQUEST_SIZE = 32
# Vectors of the two paths differ only by float rounding (batch composition changes the padded shapes).
MAX_VECTOR_DIFF = 1e-4
CLK_TCK = os.sysconf("SC_CLK_TCK")
# A run starts only once other processes use less than this many cores (sampled over QUIET_WINDOW_S).
QUIET_CORES = 0.1
QUIET_WINDOW_S = 0.5
QUIET_MAX_WAIT_S = 60.0
# A run during which other processes used more than this share of one core is reported as disturbed.
DISTURBED_CORES = 0.1


@dataclass(frozen=True)
class GrpcConfig:
    """One client set-up: concurrent tasks and the wire format of the vectors."""

    concurrency: int
    encoding: int

    @property
    def name(self) -> str:
        fmt = pb.EncodingFormat.Name(self.encoding).removeprefix("ENCODING_FORMAT_").lower()
        return f"grpc c={self.concurrency} {fmt}"


@dataclass(frozen=True)
class RestConfig:
    """REST through Envoy's transcoder, as OpenAI clients call it."""

    concurrency: int
    encoding_format: str

    @property
    def name(self) -> str:
        return f"rest c={self.concurrency} {self.encoding_format}"


REST_CONFIGS = (RestConfig(8, "base64"), RestConfig(8, "float"), RestConfig(32, "base64"))

GRPC_CONFIGS = (
    GrpcConfig(1, pb.ENCODING_FORMAT_FLOAT),
    GrpcConfig(8, pb.ENCODING_FORMAT_FLOAT),
    GrpcConfig(32, pb.ENCODING_FORMAT_FLOAT),
    GrpcConfig(8, pb.ENCODING_FORMAT_BYTES),
)


def baseline_name(config: BaselineConfig) -> str:
    if config.workers == 1:
        return f"in-process batch={config.batch_size}"
    return f"in-process batch={config.batch_size}, {config.workers} at once x 1 thread"


@dataclass
class Run:
    """One timed pass over all sentences, with the CPU both processes spent during it."""

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

    @property
    def throughput(self) -> float:
        return self.sentences / self.seconds

    @property
    def disturbed(self) -> bool:
        return self.other_cpu_s > DISTURBED_CORES * self.seconds


# ---------------------------------------------------------------- CPU accounting


def _stat_cpu_s(stat_file: Path) -> float:
    """utime + stime of a /proc stat file; the command name may hold spaces, so split after its ')'."""
    fields = stat_file.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _machine_busy_s() -> float:
    """Non-idle CPU seconds of the whole machine (user, nice, system, irq, softirq, steal) since boot."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, Path("/proc/stat").read_text().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


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
            server_total=sum(_stat_cpu_s(Path(f"/proc/{pid}/stat")) for pid in server_pids),
            server_loop=_stat_cpu_s(Path(f"/proc/{main}/task/{main}/stat")),
            client=time.process_time(),
            machine=_machine_busy_s(),
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
    """Wait until other processes use less than QUIET_CORES, so that a run measures only the two paths.

    On a shared 2-core machine a neighbour's test run halves the figures; waiting beats reporting noise. Returns
    the seconds waited; gives up (and the run is flagged by its other_cpu_s) after `max_wait_s`.
    """
    start = time.monotonic()
    while time.monotonic() - start < max_wait_s:
        before = CpuClock.read(server_pids)
        time.sleep(QUIET_WINDOW_S)
        if before.until(CpuClock.read(server_pids))["other_cpu_s"] < QUIET_CORES * QUIET_WINDOW_S:
            break
    else:
        print(f"machine still busy after {max_wait_s:.0f}s; measuring anyway", file=sys.stderr)
    return time.monotonic() - start


@contextmanager
def measured(server_pids: Sequence[int]) -> Iterator[dict[str, float]]:
    """Wall time and CPU of the block (after waiting for a quiet machine), filled in when the block ends."""
    out: dict[str, float] = {"waited_s": wait_quiet(server_pids)}
    before = CpuClock.read(server_pids)
    start = time.perf_counter()
    yield out
    out["seconds"] = time.perf_counter() - start
    out.update(before.until(CpuClock.read(server_pids)))


# ---------------------------------------------------------------- the in-process baseline


class InProcessBaseline:
    """The engine's tokenizer and encoder called directly, with the best batching a batch job can do: the
    throughput the server would reach if serving cost nothing."""

    def __init__(self, model_dir: Path) -> None:
        manifest = ModelManifest.load(model_dir)
        self.tokenizer = TextTokenizer(model_dir / TOKENIZER_FILE, manifest.max_input_tokens)
        model = model_dir / MODEL_FILE
        # One session using every core (ONNX Runtime's default), and one for parallel single-threaded batches.
        self.encoder = OnnxEncoder(model, manifest.pooling, RuntimeOptions())
        self.single_thread_encoder = OnnxEncoder(model, manifest.pooling, RuntimeOptions(intra_op_threads=1))
        self.pool = ThreadPoolExecutor(max(c.workers for c in BASELINE_CONFIGS))
        self.normalize = manifest.normalize
        self.dimensions = manifest.dimensions

    def embed(self, sentences: Sequence[str], config: BaselineConfig) -> np.ndarray:
        """Vectors in input order: tokenize everything, sort by token count, run fixed-size batches, normalize.

        Sorting is the best a batch job can do: batches of similar lengths waste almost nothing on padding.
        """
        tokens = self.tokenizer.encode(sentences)
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


def run_baseline(
    baseline: InProcessBaseline, sentences: Sequence[str], config: BaselineConfig, repeat: int, pids: Sequence[int]
) -> Run:
    with measured(pids) as m:
        vectors = baseline.embed(sentences, config)
    return Run(baseline_name(config), repeat, sentences=len(vectors), **m)


# ---------------------------------------------------------------- the gRPC path


def make_requests(model: str, sentences: Sequence[str], encoding: int) -> list[pb.EmbedRequest]:
    """Consecutive slices in dataset order (unsorted, as real traffic arrives), built before timing: building
    requests is the client's business, not the server's."""
    return [
        pb.EmbedRequest(model=model, inputs=sentences[i : i + REQUEST_SIZE], encoding_format=encoding)
        for i in range(0, len(sentences), REQUEST_SIZE)
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
    config: GrpcConfig,
    repeat: int,
    pids: Sequence[int],
) -> Run:
    with measured(pids) as m:
        latencies, responses = await send_all(stub, requests, config.concurrency)
    sentences = sum(len(r.embeddings) for r in responses if r is not None)
    return Run(config.name, repeat, sentences=sentences, latencies_ms=latencies, **m)


def rest_bodies(model: str, sentences: Sequence[str], encoding_format: str) -> list[bytes]:
    """The same 32-sentence slices as the gRPC requests, as OpenAI JSON bodies."""
    return [
        orjson.dumps(
            {"model": model, "input": list(sentences[i : i + REQUEST_SIZE]), "encoding_format": encoding_format}
        )
        for i in range(0, len(sentences), REQUEST_SIZE)
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


async def run_rest(url: str, bodies: Sequence[bytes], config: RestConfig, repeat: int, pids: Sequence[int]) -> Run:
    with measured(pids) as m:
        latencies, vectors = await send_all_rest(url, bodies, config.concurrency)
    return Run(
        config.name, repeat, sentences=sum(len(v) for v in vectors if v is not None), latencies_ms=latencies, **m
    )


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


# ---------------------------------------------------------------- the benchmark


@dataclass
class Bench:
    """Everything one run needs: sentences, the baseline, the server and a client channel to it."""

    sentences: list[str]
    baseline: InProcessBaseline
    server: ServerProcess
    gateway: EnvoyProcess
    stub: pb_grpc.EmbeddingServiceStub
    requests: dict[int, list[pb.EmbedRequest]]
    rest_bodies: dict[str, list[bytes]]

    @property
    def rest_url(self) -> str:
        return f"{self.gateway.base_url}/v1/embeddings"

    @property
    def pids(self) -> list[int]:
        """The server side: the gRPC server, then Envoy."""
        assert self.server.proc is not None and self.gateway.proc is not None
        return [self.server.proc.pid, self.gateway.proc.pid]

    async def warm_up(self) -> dict[str, float]:
        """One untimed pass of each path (every batch size, both encodings: first shapes allocate), checking that
        both paths compute the same vectors. Returns the largest difference per encoding."""
        for config in BASELINE_CONFIGS[1:]:
            self.baseline.embed(self.sentences, config)
        expected = self.baseline.embed(self.sentences, BASELINE_CONFIGS[0])
        diffs = {}
        for encoding in (pb.ENCODING_FORMAT_FLOAT, pb.ENCODING_FORMAT_BYTES):
            _, responses = await send_all(self.stub, self.requests[encoding], 8)
            diff = float(np.abs(decode(responses) - expected).max())
            if diff > MAX_VECTOR_DIFF:
                raise RuntimeError(
                    f"gRPC vectors ({pb.EncodingFormat.Name(encoding)}) differ from in-process by {diff}"
                )
            diffs[pb.EncodingFormat.Name(encoding)] = diff
        for encoding_format, bodies in self.rest_bodies.items():
            _, vectors = await send_all_rest(self.rest_url, bodies, 8)
            diff = float(np.abs(np.vstack(vectors) - expected).max())
            if diff > MAX_VECTOR_DIFF:
                raise RuntimeError(f"REST vectors ({encoding_format}) differ from in-process by {diff}")
            diffs[f"rest {encoding_format}"] = diff
        return diffs

    async def repeat(self, repeat: int) -> list[Run]:
        """Baseline (each batch size) with the server idle, then each gRPC config: never both at once."""
        runs = [run_baseline(self.baseline, self.sentences, c, repeat, self.pids) for c in BASELINE_CONFIGS]
        for config in GRPC_CONFIGS:
            runs.append(await run_grpc(self.stub, self.requests[config.encoding], config, repeat, self.pids))
        for config in REST_CONFIGS:
            bodies = self.rest_bodies[config.encoding_format]
            runs.append(await run_rest(self.rest_url, bodies, config, repeat, self.pids))
        return runs


async def run_all(args: argparse.Namespace, sentences: list[str]) -> tuple[list[Run], dict[str, float]]:
    baseline = InProcessBaseline(discover(Path(args.model_repo), (args.model,))[0])
    requests = {e: make_requests(args.model, sentences, e) for e in {c.encoding for c in GRPC_CONFIGS}}
    bodies = {f: rest_bodies(args.model, sentences, f) for f in {c.encoding_format for c in REST_CONFIGS}}
    # Only the benchmarked model is loaded; every other server setting is the default, and so is envoy.yaml.
    with (
        ServerProcess(Path(args.model_repo).resolve(), "--models", args.model) as server,
        tempfile.TemporaryDirectory() as tmp,
        EnvoyProcess(server.port, Path(tmp)) as gateway,
    ):
        # One channel shared by all client tasks, as an application would hold one: HTTP/2 multiplexes the calls.
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.EmbeddingServiceStub(channel)
            bench = Bench(sentences, baseline, server, gateway, stub, requests, bodies)
            diffs = await bench.warm_up()
            runs: list[Run] = []
            for repeat in range(args.repeats):
                runs.extend(await bench.repeat(repeat))
                print(f"repeat {repeat + 1}/{args.repeats} done", file=sys.stderr)
    return runs, diffs


# ---------------------------------------------------------------- reporting


def machine_facts() -> dict[str, object]:
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
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def percentile(values: Sequence[float], q: float) -> float | None:
    """None where there is nothing to rank (the baseline has no requests); None also keeps the JSON valid."""
    return float(np.percentile(values, q)) if values else None


def summarize(runs: Sequence[Run]) -> dict[str, dict[str, float | None]]:
    """Per config: median throughput and CPU over repeats; latency percentiles over all requests of all repeats
    (a pass at concurrency 1 has only 87 requests, too few for a p99 of its own)."""
    summary: dict[str, dict[str, float | None]] = {}
    for name in dict.fromkeys(r.config for r in runs):
        mine = [r for r in runs if r.config == name]
        latencies = [ms for r in mine for ms in r.latencies_ms]
        summary[name] = {
            "sentences_per_s": statistics.median(r.throughput for r in mine),
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


def best_baseline(summary: dict[str, dict[str, float | None]]) -> tuple[BaselineConfig, float]:
    best = max(BASELINE_CONFIGS, key=lambda c: summary[baseline_name(c)]["sentences_per_s"])
    return best, summary[baseline_name(best)]["sentences_per_s"]


def markdown(
    summary: dict[str, dict[str, float | None]], facts: dict[str, object], args: argparse.Namespace, n: int
) -> str:
    best, limit = best_baseline(summary)
    lines = [
        "# Throughput (gRPC, REST) vs in-process ONNX Runtime",
        "",
        f"Model `{args.model}`, STS-B test split ({n} sentences), median of {args.repeats} interleaved repeats, "
        f"{facts['date']}.  ",
        f"Machine: {facts['cpu']}, {facts['cores']} cores, no GPU; onnxruntime {facts['onnxruntime']}, "
        f"grpcio {facts['grpcio']}, Python {facts['python']}.",
        "",
        "In-process: the engine's TextTokenizer + OnnxEncoder called directly, sentences sorted by token count, fixed "
        "batches (one session on every core, or batches in parallel on one thread each), tokenization and "
        f"normalization timed; the best ({baseline_name(best)}) is the limit.  ",
        f"gRPC: `python -m service` with default settings, {REQUEST_SIZE} sentences per Embed call in dataset order, "
        "N client tasks sharing one grpc.aio channel in the benchmark process (same machine). Latency percentiles "
        "pool every request of every repeat. CPU: median CPU seconds per pass (all sentences) of the server "
        "process (in brackets its main thread, which runs the event loop) and of the benchmark process (the "
        "baseline, or the gRPC clients). Disturbed: runs during which other processes used over "
        f"{DISTURBED_CORES} core (each run first waits for a quiet machine).",
        "",
        "| path | sentences/s | vs in-process | best run | p50 ms | p99 ms | server CPU s (loop) | client CPU s "
        "| disturbed |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in summary.items():
        label = f"**{name}** (limit)" if name == baseline_name(best) else name
        latency = "- | -" if s["p50_ms"] is None else f"{s['p50_ms']:.1f} | {s['p99_ms']:.1f}"
        lines.append(
            f"| {label} | {s['sentences_per_s']:.0f} | {s['sentences_per_s'] / limit:.2f}x | "
            f"{s['best_sentences_per_s']:.0f} | {latency} | "
            f"{s['server_cpu_s']:.2f} ({s['server_loop_cpu_s']:.2f}) | {s['client_cpu_s']:.2f} | "
            f"{s['disturbed_runs']}/{s['runs']} |"
        )
    lines.append("")
    for label, names, target in (
        (
            "gRPC float",
            [c.name for c in GRPC_CONFIGS if c.concurrency >= 8 and c.encoding == pb.ENCODING_FORMAT_FLOAT],
            0.9,
        ),
        ("REST base64", [c.name for c in REST_CONFIGS if c.encoding_format == "base64"], 0.85),
    ):
        worst = min(summary[name]["sentences_per_s"] / limit for name in names)
        verdict = "met" if worst >= target else "not met"
        lines.append(
            f"Target ({label} >= {target}x in-process at concurrency >= 8): **{verdict}** (worst {worst:.2f}x).  "
        )
    return "\n".join(lines) + "\n"


def write_results(out: Path, text: str, payload: dict[str, object]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{NAME}.md").write_text(text)
    (out / f"{NAME}.json").write_text(json.dumps(payload, indent=2) + "\n")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.throughput", description=__doc__.split("\n")[0])
    parser.add_argument("--model-repo", default="models")
    parser.add_argument("--model", default="all-minilm-l6-v2")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sentences = load_pairs("test").sentences
    runs, diffs = asyncio.run(run_all(args, sentences))
    summary = summarize(runs)
    facts = machine_facts()
    text = markdown(summary, facts, args, len(sentences))
    best, limit = best_baseline(summary)
    payload = {
        "machine": facts,
        "model": args.model,
        "sentences": len(sentences),
        "request_size": REQUEST_SIZE,
        "repeats": args.repeats,
        "best_baseline": baseline_name(best),
        "baseline_sentences_per_s": limit,
        "ratios": {name: s["sentences_per_s"] / limit for name, s in summary.items()},
        "max_vector_diff": diffs,
        "summary": summary,
        "runs": [asdict(r) for r in runs],
    }
    write_results(args.out, text, payload)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
