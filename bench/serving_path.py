"""What the serving path costs per call: server CPU per call over gRPC and through Envoy REST, calls/s at saturation.

The null backend (service/engine/backends/null.py) answers fixed vectors at next to no compute while tokenizing,
batching, pooling and the API run for real, so with it a call costs only the serving path: grpc.aio, protobuf, the
interceptors (auth, metrics, tracing), the batcher's futures and thread hand-offs, JSON, and Envoy. One server
serves the null model beside the real all-MiniLM-L6-v2, behind the shipped Envoy, and the lean clients of
bench/lean.py (pre-serialized requests; their own CPU reported) drive:

- null backend, 1 short text a call, 1 client and 32 clients, over gRPC and over REST: CPU per call of the server
  (split into its event loop thread, gRPC core's threads and the other threads), of Envoy, and of the client;
  calls/s (at 32 clients: saturation) and latency;
- the real model, same shapes: 1 text a call from 32 clients as a ratio to in-process ONNX Runtime on the same
  texts in the same run (the suite's limit: the engine's tokenizer and encoder called directly, best batching),
  and one client's p50.

Beside them, in the same run, the floor under issue 15's targets (what the service cannot go below while it runs
on grpc.aio and behind Envoy, measured rather than assumed): a bare grpc.aio server (bench/bare_server.py: one
generic handler answering every call with the bytes the service sends for one text, no interceptors, no engine)
behind its own copy of the shipped Envoy, driven by the same clients (`bare` rows), and the real model's own time
for one short text in process, on the session and graph the server runs a lone text on (no serving path at all).

Every run first waits for a quiet machine; runs of the repeats are interleaved and medians reported; CPU per call
(from /proc) is the steadier figure on a shared machine. Texts are STS-B test sentences, each pass's made unique
(a short suffix) so that no cache could answer them.

    python -m bench.serving_path [--model-repo models] [--quick] [--repeats 3] [--skip-real]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
import orjson

from bench.bare_server import BareServerProcess
from bench.common import BASELINE_CONFIGS, ENGINE_ONLY, InProcessBaseline, machine_facts
from bench.lean import Measured, Snapshot, grpc_calls, http_calls, http_request, median, percentile, run, wait_quiet
from bench.report import RESULTS
from service._gen.embeddings.v1 import embeddings_pb2 as pb
from service.engine.backends import RuntimeOptions, pad_batch
from service.engine.backends.onnxruntime import CPU, OnnxRuntimeBackend
from service.engine.manifest import MODEL_FILE, ModelManifest
from service.engine.registry import discover, plan_parallelism
from service.engine.tokenize import TextTokenizer
from tests.serving import EnvoyProcess, ServerProcess
from tests.stsb import load_pairs

NULL_MODEL = "null-minilm"
# The bare grpc.aio server's rows (bench/bare_server.py): the floor under the null backend's.
BARE = "bare"
REAL_MODEL = "all-minilm-l6-v2"
EMBED = "/embeddings.v1.EmbeddingService/Embed"
REST_PATH = "/v1/embeddings"
QUIET_WAIT_S = 20.0


@dataclass(frozen=True)
class Cell:
    """One load shape: path (grpc/rest), model (null/real), concurrent clients, calls per pass."""

    path: str
    model: str
    clients: int
    calls: int

    @property
    def name(self) -> str:
        kind = {NULL_MODEL: "null", BARE: "bare"}.get(self.model, "model")
        return f"{kind} {self.path} c={self.clients}"


@dataclass(frozen=True)
class Plan:
    repeats: int = 3
    single_calls: int = 400
    saturating_calls: int = 3000
    real_saturating_calls: int = 1000
    real_single_calls: int = 300
    real: bool = True
    # The real model, and the server's execution providers ("": its default, the CPU here); on a GPU the in-process
    # limit runs on the same providers (bench.gpu).
    model: str = REAL_MODEL
    providers: str = ""

    def cells(self) -> list[Cell]:
        cells = [
            Cell(path, model, clients, self.single_calls if clients == 1 else self.saturating_calls)
            for model in (BARE, NULL_MODEL)
            for path in ("grpc", "rest")
            for clients in (1, 32)
        ]
        if self.real:
            cells += [
                Cell(path, self.model, clients, self.real_single_calls if clients == 1 else self.real_saturating_calls)
                for path in ("grpc", "rest")
                for clients in (1, 32)
            ]
        return cells


QUICK = Plan(repeats=1, single_calls=150, saturating_calls=1000, real_saturating_calls=400, real_single_calls=100)


def null_model_repo(model_repo: Path, target: Path, model: str = REAL_MODEL) -> Path:
    """A repository with the null model (the real model's tokenizer, 384 dimensions) and a link to the real one."""
    null = target / NULL_MODEL
    null.mkdir(parents=True)
    real = discover(model_repo, (model,))[0].resolve()
    shutil.copy(real / "tokenizer.json", null / "tokenizer.json")
    manifest = {"id": NULL_MODEL, "dimensions": 384, "max_input_tokens": 256, "backend": "null"}
    (null / "manifest.json").write_text(json.dumps(manifest))
    (target / model).symlink_to(real)
    return target


def unique_texts(sentences: Sequence[str], count: int, tag: str) -> list[str]:
    """`count` sentences (cycling), each marked with the pass's tag: no two passes send the same text."""
    return [f"{sentences[i % len(sentences)]} ({tag})" for i in range(count)]


def payloads(cell: Cell, texts: Sequence[str]) -> list[bytes]:
    """Requests serialized before timing: gRPC EmbedRequest (float vectors, the default) or a whole HTTP request
    (base64 vectors, as the openai SDK asks)."""
    if cell.path == "grpc":
        return [pb.EmbedRequest(model=cell.model, inputs=[text]).SerializeToString() for text in texts]
    return [
        http_request(REST_PATH, orjson.dumps({"model": cell.model, "input": text, "encoding_format": "base64"}))
        for text in texts
    ]


def check_response(cell: Cell, raw: bytes) -> None:
    if cell.path == "grpc":
        response = pb.EmbedResponse.FromString(raw)
        ok = len(response.embeddings) == 1 and len(response.embeddings[0].values) == response.dimensions
    else:
        data = orjson.loads(raw)["data"]
        ok = len(data) == 1 and isinstance(data[0]["embedding"], str)
    if not ok:
        raise RuntimeError(f"{cell.name}: unexpected answer {raw[:200]!r}")


@dataclass
class Row:
    """A cell's medians over its passes."""

    name: str
    passes: int
    calls_per_s: float
    p50_ms: float
    p99_ms: float
    server_ms: float
    loop_ms: float
    grpc_ms: float
    other_threads_ms: float
    envoy_ms: float
    client_ms: float
    other_cores: float

    @property
    def gateway_and_server_ms(self) -> float:
        return self.server_ms + self.envoy_ms


def summarize(name: str, passes: Sequence[Measured]) -> Row:
    latencies = [ms for m in passes for ms in m.latencies_ms]

    def per_call(attribute) -> float:
        return median([m.per_call_ms(attribute(m)) for m in passes])

    return Row(
        name=name,
        passes=len(passes),
        calls_per_s=median([m.calls_per_s for m in passes]),
        p50_ms=percentile(latencies, 50),
        p99_ms=percentile(latencies, 99),
        server_ms=per_call(lambda m: m.server.total),
        loop_ms=per_call(lambda m: m.server.loop),
        grpc_ms=per_call(lambda m: m.server.grpc),
        other_threads_ms=per_call(lambda m: m.server.other),
        envoy_ms=per_call(lambda m: m.envoy_s),
        client_ms=per_call(lambda m: m.client_s),
        other_cores=median([m.other_cores for m in passes]),
    )


@dataclass
class Results:
    facts: dict[str, object]
    plan: Plan
    rows: dict[str, Row]
    # The in-process limit on the same texts: its best configuration and sentences/s (median over repeats).
    in_process: dict[str, float] = field(default_factory=dict)
    in_process_config: str = ""
    # The real model's own time for one short text, p50 in ms (in process, the server's lone-text session).
    model_alone_ms: float | None = None


class Bench:
    """The server (null and real model) behind Envoy, a grpc.aio channel, and the sentences."""

    def __init__(
        self,
        server: ServerProcess | BareServerProcess,
        gateway: EnvoyProcess,
        channel: grpc.aio.Channel,
        sentences: list[str],
    ) -> None:
        assert server.proc is not None and gateway.proc is not None
        self.server_pid, self.envoy_pid = server.proc.pid, gateway.proc.pid
        self.gateway_port = gateway.port
        self.channel = channel
        self.sentences = sentences
        self.passes = 0
        # Processes of this benchmark whose CPU is not another's noise (wait_quiet).
        self.quiet: tuple[int, ...] = (self.server_pid, self.envoy_pid)

    async def send(self, cell: Cell, requests: Sequence[bytes]) -> tuple[list[float], bytes]:
        if cell.path == "grpc":
            return await grpc_calls(self.channel, EMBED, requests, cell.clients)
        return await http_calls("127.0.0.1", self.gateway_port, requests, cell.clients)

    async def run(self, cell: Cell, timed: bool = True) -> Measured:
        self.passes += 1
        requests = payloads(cell, unique_texts(self.sentences, cell.calls, f"p{self.passes}"))
        if timed:
            wait_quiet(self.quiet, QUIET_WAIT_S)
        before = Snapshot.take(self.server_pid, self.envoy_pid if cell.path == "rest" else None)
        latencies, first = await self.send(cell, requests)
        after = Snapshot.take(self.server_pid, self.envoy_pid if cell.path == "rest" else None)
        check_response(cell, first)
        return Measured.between(before, after, len(requests), latencies)


def in_process_pass(baseline: InProcessBaseline, texts: list[str]) -> dict[str, float]:
    """Sentences/s of every in-process configuration on `texts` (the server idles meanwhile)."""
    rates = {}
    for config in BASELINE_CONFIGS:
        started = time.perf_counter()
        baseline.embed(texts, config)
        rates[config.name] = len(texts) / (time.perf_counter() - started)
    return rates


class Limit:
    """The in-process limit on the real model: bench.common's best batching on the CPU, bench.gpu's on a device."""

    def __init__(self, model_repo: Path, plan: Plan) -> None:
        self.model_dir = discover(model_repo, (plan.model,))[0]
        self.plan = plan
        on_cpu = plan.providers in ("", "CPUExecutionProvider")
        self.cpu = InProcessBaseline(self.model_dir) if on_cpu else None

    def rates(self, texts: list[str]) -> dict[str, float]:
        if self.cpu is not None:
            return in_process_pass(self.cpu, texts)
        from bench.gpu import best_rate

        name, rate = best_rate(self.model_dir, self.plan.model, self.plan.providers.split(","), texts)
        return {name: rate}


class ModelAlone:
    """The model's own time for one short text, as the server runs a lone text on an idle server: the engine's ONNX
    Runtime backend with the server's CPU plan, the solo session and the fused solo graph where the model has one
    (built once a run)."""

    def __init__(self, model_dir: Path) -> None:
        manifest = ModelManifest.load(model_dir)
        _, intra, solo = plan_parallelism((CPU,), 0, 0)
        options = RuntimeOptions(intra_op_threads=intra, solo_threads=solo)
        self.backend = OnnxRuntimeBackend(model_dir / MODEL_FILE, options, manifest.solo_graph)
        self.tokenizer = TextTokenizer(model_dir / "tokenizer.json", manifest.max_input_tokens)

    def p50_ms(self, texts: Sequence[str], gap_s: float = 0.001) -> float:
        """Each text tokenized, then run alone, `gap_s` apart as a lone caller's calls are: the p50 in ms."""
        batches = [pad_batch(self.tokenizer.encode([text], truncate=True)) for text in texts]
        for batch in batches[:20]:
            self.backend.run(batch, solo=True)
        times = []
        for batch in batches:
            time.sleep(gap_s)
            started = time.perf_counter()
            self.backend.run(batch, solo=True)
            times.append(1000 * (time.perf_counter() - started))
        return percentile(times, 50)


async def measure(plan: Plan, model_repo: Path, progress=lambda message: None) -> Results:
    sentences = load_pairs("test").sentences
    cells = plan.cells()
    measured: dict[str, list[Measured]] = {cell.name: [] for cell in cells}
    in_process: dict[str, list[float]] = {}
    model_alone: list[float] = []
    limit = Limit(model_repo, plan) if plan.real else None
    alone = ModelAlone(limit.model_dir) if limit is not None and limit.cpu is not None else None
    server_args = ["--models", f"{NULL_MODEL},{plan.model}"] + (
        ["--providers", plan.providers] if plan.providers else []
    )
    with tempfile.TemporaryDirectory() as tmp:
        repo = null_model_repo(model_repo, Path(tmp) / "models", plan.model)
        (Path(tmp) / "bare").mkdir()
        with (
            ServerProcess(repo, *ENGINE_ONLY, *server_args) as server,
            EnvoyProcess(server.port, Path(tmp)) as gateway,
            BareServerProcess(plan.model) as bare,
            EnvoyProcess(bare.port, Path(tmp) / "bare") as bare_gateway,
        ):
            async with (
                grpc.aio.insecure_channel(server.address) as channel,
                grpc.aio.insecure_channel(bare.address) as bare_channel,
            ):
                service = Bench(server, gateway, channel, sentences)
                floor = Bench(bare, bare_gateway, bare_channel, sentences)

                def bench_of(cell: Cell) -> Bench:
                    return floor if cell.model == BARE else service

                quiet = service.quiet = floor.quiet = (*service.quiet, *floor.quiet)
                for cell in cells:  # warm-up: connections, first shapes
                    warm = Cell(cell.path, cell.model, cell.clients, min(cell.calls, 200))
                    await bench_of(cell).run(warm, timed=False)
                if limit is not None:
                    limit.rates(unique_texts(sentences, 256, "warm"))
                for repeat in range(plan.repeats):
                    if limit is not None:
                        wait_quiet(quiet, QUIET_WAIT_S)
                        texts = unique_texts(sentences, plan.real_saturating_calls, f"in-process {repeat}")
                        for name, rate in limit.rates(texts).items():
                            in_process.setdefault(name, []).append(rate)
                        if alone is not None:
                            wait_quiet(quiet, QUIET_WAIT_S)
                            lone = unique_texts(sentences, plan.real_single_calls, f"alone {repeat}")
                            model_alone.append(alone.p50_ms(lone))
                    for cell in cells:
                        measured[cell.name].append(await bench_of(cell).run(cell))
                    progress(f"repeat {repeat + 1}/{plan.repeats} done")
    rows = {name: summarize(name, passes) for name, passes in measured.items()}
    results = Results(machine_facts(), plan, rows, model_alone_ms=median(model_alone) if model_alone else None)
    if in_process:
        medians = {name: median(rates) for name, rates in in_process.items()}
        results.in_process_config = max(medians, key=medians.__getitem__)
        results.in_process = medians
    return results


# ---------------------------------------------------------------- report

TARGETS_NOTE = (
    "Targets (issue 15): null backend, server CPU per gRPC call <= 0.25 ms and per REST call (server + Envoy) <= "
    "0.45 ms; real model, 1 text/request at 32 clients: gRPC >= 0.85x and REST >= 0.60x of in-process; one short "
    "text, one client: gRPC p50 <= 3.5 ms, REST p50 <= 4.5 ms. The floor, measured in this run, is what the same "
    "measure gives with nothing of the service's own: the bare grpc.aio server (behind its Envoy for REST) in place "
    "of the service, and for a lone text's p50 the model's own time in process plus the bare server's p50. For the "
    "ratios, the ceiling is modelled (ratio_ceiling): all cores busy, inference as efficient as in process, and per "
    "call only the bare server's (and Envoy's) CPU and the client's."
)


@dataclass(frozen=True)
class Target:
    """One of issue 15's targets: what this run measured, and the floor under it in the same run (if it has one)."""

    goal: str
    measured: str
    met: bool
    floor: str = "-"
    # The floor alone misses the goal: no serving path on this transport could meet it on this machine.
    below_floor: bool = False

    @property
    def verdict(self) -> str:
        if self.met:
            return "met"
        return "not met (the floor alone misses it)" if self.below_floor else "not met"


def limit(results: Results) -> float:
    return results.in_process.get(results.in_process_config, float("nan"))


def cpu_targets(rows: dict[str, Row]) -> list[Target]:
    """Server CPU per call with the null backend, against the bare server's (the floor)."""
    out = []
    for path, goal in (("grpc", 0.25), ("rest", 0.45)):
        null, bare = rows[f"null {path} c=32"], rows.get(f"bare {path} c=32")
        what = "server CPU per gRPC call" if path == "grpc" else "server + Envoy CPU per REST call"
        measured = f"{null.gateway_and_server_ms:.3f} ms"
        if path == "grpc":
            measured += f" (1 client: {rows['null grpc c=1'].server_ms:.3f})"
        else:
            measured += f" (server {null.server_ms:.3f} + Envoy {null.envoy_ms:.3f})"
        floor = bare.gateway_and_server_ms if bare else None
        out.append(
            Target(
                f"null backend: {what} <= {goal} ms",
                measured,
                null.gateway_and_server_ms <= goal,
                f"{floor:.3f} ms" if floor is not None else "-",
                floor is not None and floor > goal,
            )
        )
    return out


def ratio_ceiling(results: Results, path: str) -> float | None:
    """The best ratio to in-process a server on this transport could reach with 1 text a call from 32 clients,
    modelled from this run: every core busy, inference as efficient as in process (its CPU per text: the cores over
    its rate), and per call only what the bare server (and for REST its Envoy) and the client spend. A model, not a
    measurement: it says how much room the transport leaves the service."""
    bare, model = results.rows.get(f"bare {path} c=32"), results.rows.get(f"model {path} c=32")
    cores = results.facts.get("usable_cores")
    if bare is None or model is None or not isinstance(cores, int) or not results.in_process:
        return None
    inference_ms = 1000 * cores / limit(results)
    return inference_ms / (inference_ms + bare.gateway_and_server_ms + model.client_ms)


def targets(results: Results) -> list[Target]:
    rows = results.rows
    out = cpu_targets(rows)
    if results.in_process:
        best = limit(results)
        for path, goal in (("grpc", 0.85), ("rest", 0.60)):
            row = rows[f"model {path} c=32"]
            ceiling = ratio_ceiling(results, path)
            out.append(
                Target(
                    f"real model, 1 text/request, 32 clients: {path} >= {goal:.2f}x in-process",
                    f"{row.calls_per_s / best:.2f}x ({row.calls_per_s:.0f}/s vs {best:.0f}/s)",
                    row.calls_per_s / best >= goal,
                    f"at most {ceiling:.2f}x (modelled)" if ceiling is not None else "-",
                    ceiling is not None and ceiling < goal,
                )
            )
        for path, goal in (("grpc", 3.5), ("rest", 4.5)):
            row, bare = rows[f"model {path} c=1"], rows.get(f"bare {path} c=1")
            alone = results.model_alone_ms
            floor = alone + bare.p50_ms if alone is not None and bare else None
            out.append(
                Target(
                    f"one short text, one client: {path} p50 <= {goal} ms",
                    f"{row.p50_ms:.2f} ms",
                    row.p50_ms <= goal,
                    f"{floor:.2f} ms (model {alone:.2f} + bare {bare.p50_ms:.2f})" if floor is not None else "-",
                    floor is not None and floor > goal,
                )
            )
    return out


def markdown(results: Results) -> str:
    facts = results.facts
    lines = [
        "# The serving path per call (null backend) and small requests (real model)",
        "",
        f"{facts['date']}; {facts['cpu']}, {facts['usable_cores']} usable cores; "
        f"real model `{results.plan.model}` on {results.plan.providers or 'the default providers'}; "
        f"grpcio {facts['grpcio']}, "
        f"onnxruntime {facts['onnxruntime']}, Python {facts['python']}. Medians of {results.plan.repeats} "
        "interleaved passes; one short STS-B sentence a call (gRPC: float vectors; REST: base64), lean clients "
        "(bench/lean.py). CPU per call from /proc: the server (its event-loop thread, gRPC core's threads, its other "
        "threads: inference, tokenizers), Envoy, the client; `other cores`: what other processes used meanwhile "
        "(a shared machine's noise).",
        "",
        "| cell | calls/s | p50 ms | p99 ms | server ms/call | loop | grpc core | other threads | Envoy ms/call "
        "| client ms/call | other cores |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in results.rows.values():
        envoy = f"{row.envoy_ms:.3f}" if " rest " in f" {row.name} " else "-"
        lines.append(
            f"| {row.name} | {row.calls_per_s:.0f} | {row.p50_ms:.2f} | {row.p99_ms:.2f} | {row.server_ms:.3f} | "
            f"{row.loop_ms:.3f} | {row.grpc_ms:.3f} | {row.other_threads_ms:.3f} | {envoy} | {row.client_ms:.3f} | "
            f"{row.other_cores:.2f} |"
        )
    if results.in_process:
        rates = ", ".join(f"{name}: {rate:.0f}/s" for name, rate in results.in_process.items())
        lines += ["", f"In-process on the same texts (the limit: **{results.in_process_config}**): {rates}."]
    if results.model_alone_ms is not None:
        lines += [
            "",
            f"The model alone, one short text in process (the server's lone-text session): p50 "
            f"{results.model_alone_ms:.2f} ms.",
        ]
    lines += ["", TARGETS_NOTE, "", "| target | measured | floor (this run) | |", "|---|---|---|---|"]
    lines += [f"| {t.goal} | {t.measured} | {t.floor} | {t.verdict} |" for t in targets(results)]
    return "\n".join(lines) + "\n"


def to_json(results: Results) -> dict[str, object]:
    return {
        "machine": results.facts,
        "plan": asdict(results.plan),
        "rows": {name: asdict(row) for name, row in results.rows.items()},
        "in_process": results.in_process,
        "in_process_limit": results.in_process_config,
        "model_alone_ms": results.model_alone_ms,
        "targets": [asdict(target) for target in targets(results)],
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.serving_path", description=__doc__.split("\n")[0])
    parser.add_argument("--model-repo", type=Path, default=Path("models"))
    parser.add_argument("--quick", action="store_true", help="one short pass of every cell")
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--skip-real", action="store_true", help="the null backend only")
    parser.add_argument("--model", default=REAL_MODEL, help="the real model (e.g. all-minilm-l6-v2-fp16 on a GPU)")
    parser.add_argument("--providers", default="", help="the server's execution providers (bench/gpu.sh)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = QUICK if args.quick else Plan()
    if args.repeats:
        plan = Plan(**{**asdict(plan), "repeats": args.repeats})
    plan = Plan(**{**asdict(plan), "real": not args.skip_real, "model": args.model, "providers": args.providers})
    started = time.monotonic()

    def progress(message: str) -> None:
        print(f"[{time.monotonic() - started:5.0f}s] serving path: {message}", file=sys.stderr, flush=True)

    results = run(measure(plan, args.model_repo.resolve(), progress))
    text = markdown(results)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serving_path.md").write_text(text)
    (args.out / "serving_path.json").write_text(json.dumps(to_json(results), indent=2) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
