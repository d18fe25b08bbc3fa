"""One short text, one client: the model's own time and the call's p50, from the plain graph and the fused solo graph.

1. In process, the model's own time (what the server's inference thread spends, its `x-inference-time`): the engine's
   ONNX Runtime backend runs a lone batch (solo: the session on every core) from the plain graph and from the fused
   one, in alternating blocks, for batch shapes from one short text to 32 texts. Reported: each side's p50 and the
   median over rounds of the blocks' ratio fused/plain (steadier on a shared machine than either p50). The solo
   graph's limits (tools/modelrepo/fuse.py: which lone batches it serves) come from this table.
2. End to end: two servers side by side, A serving the model from its plain graph alone (its manifest without
   `solo_graph`) and B as built, each behind the shipped Envoy; their passes alternate, round by round: one short
   STS-B sentence a call from one client over gRPC and over REST (lean clients, bench/lean.py), then 32 sentences a
   call over gRPC (B serves those from the plain graph: they must not be slower). Vectors of A and B are compared.

    python -m bench.lone_text [--model-repo models] [--model all-minilm-l6-v2] [--rounds 4] [--calls 150]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import grpc
import numpy as np
import orjson

from bench.common import ENGINE_ONLY, decode, machine_facts, min_cosine
from bench.lean import grpc_calls, http_calls, http_request, percentile, run, wait_quiet
from bench.report import RESULTS, write_report
from service._gen.embeddings.v1 import embeddings_pb2 as pb
from service.engine.backends import PaddedBatch, RuntimeOptions, pad_batch
from service.engine.backends.onnxruntime import CPU, OnnxRuntimeBackend
from service.engine.manifest import MANIFEST_FILE, MODEL_FILE, ModelManifest
from service.engine.registry import discover, plan_parallelism
from service.engine.tokenize import TextTokenizer
from tests.serving import EnvoyProcess, ServerProcess
from tests.stsb import load_pairs

MODEL = "all-minilm-l6-v2"
EMBED = "/embeddings.v1.EmbeddingService/Embed"
# (inputs, tokens each): a lone short text and longer ones, then more inputs, up to the batcher's token budget
# (2,048 padded tokens). Run on the solo session (every core), then a few on one thread (a batch beside another).
SHAPES = (
    *((1, 8), (1, 16), (1, 32), (1, 64), (1, 128), (1, 256)),
    *((2, 16), (4, 16), (8, 16), (32, 16), (32, 32), (32, 64), (8, 256)),
)
ONE_THREAD_SHAPES = ((1, 16), (32, 16), (32, 64))
# Between two runs in process: a lone caller's requests do not arrive back to back (~1 ms of serving path between
# two inferences).
GAP_S = 0.001
# The two sides run in blocks, never run by run: alternating runs of two copies of the weights (90 MB each for
# MiniLM) evicts each from the CPU caches and doubled both sides' times here (p50 2.7 -> 7.8 ms for one short
# text), which is not what a server running one graph for a lone caller sees.
BLOCK_S = 0.4
BLOCK_WARM_RUNS = 3
QUIET_WAIT_S = 20.0
BATCH = 32


@dataclass(frozen=True)
class ModelTime:
    """One batch shape in process: p50 of each graph and the median paired ratio fused/plain."""

    inputs: int
    tokens: int
    threads: int
    runs: int
    plain_ms: float
    fused_ms: float
    ratio: float


@dataclass(frozen=True)
class Cell:
    """One end-to-end cell: p50 of A (plain graph only) and B (as built), over all rounds."""

    name: str
    calls: int
    plain_p50_ms: float
    fused_p50_ms: float
    plain_p99_ms: float
    fused_p99_ms: float

    @property
    def ratio(self) -> float:
        return self.fused_p50_ms / self.plain_p50_ms


# ---------------------------------------------------------------- 1. in process


def lone_batch(tokenizer_path: Path, text: str, inputs: int, tokens: int) -> PaddedBatch:
    """`text` cut to `tokens` tokens (special tokens included), `inputs` times, padded."""
    item = TextTokenizer(tokenizer_path, tokens).encode([text], truncate=True)[0]
    return pad_batch([item] * inputs)


def run_block(backend: OnnxRuntimeBackend, padded: PaddedBatch, seconds: float) -> list[float]:
    """Run times (s) of one side's block: a few runs first, untimed (its weights back in the caches), then runs for
    `seconds`, at least 3."""
    for _ in range(BLOCK_WARM_RUNS):
        backend.run(padded, solo=True)
    times: list[float] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end or len(times) < 3:
        time.sleep(GAP_S)
        started = time.perf_counter()
        backend.run(padded, solo=True)
        times.append(time.perf_counter() - started)
    return times


def model_times(model_dir: Path, seconds_per_shape: float) -> list[ModelTime]:
    """The server's CPU plan (plan_parallelism), two backends of the same model: plain (no solo graph) and fused for
    every lone batch; each shape run in alternating blocks (BLOCK_S), order swapped every round; the ratio is the
    median over rounds of the blocks' p50 ratio."""
    manifest = ModelManifest.load(model_dir)
    if manifest.solo_graph is None:
        raise SystemExit(f"{model_dir} has no solo graph: rebuild it (make models)")
    _, intra, solo = plan_parallelism((CPU,), 0, 0)
    text = " ".join(load_pairs("test").sentences[:40])
    cases = [(shape, RuntimeOptions(intra_op_threads=intra, solo_threads=solo)) for shape in SHAPES]
    cases += [(shape, RuntimeOptions(intra_op_threads=1)) for shape in ONE_THREAD_SHAPES]
    always = replace(manifest.solo_graph, max_inputs=1 << 20, max_tokens=1 << 30)
    rows: list[ModelTime] = []
    backends: dict[tuple[int, int], tuple[OnnxRuntimeBackend, OnnxRuntimeBackend]] = {}
    for (inputs, tokens), options in cases:
        key = (options.intra_op_threads, options.solo_threads)
        if key not in backends:
            backends.clear()  # one pair of backends at a time: their weights stay in the caches
            backends[key] = (
                OnnxRuntimeBackend(model_dir / MODEL_FILE, options),
                OnnxRuntimeBackend(model_dir / MODEL_FILE, options, always),
            )
        plain, fused = backends[key]
        padded = lone_batch(model_dir / "tokenizer.json", text, inputs, tokens)
        wait_quiet((), QUIET_WAIT_S)
        times: dict[str, list[float]] = {"plain": [], "fused": []}
        ratios = []
        sides = [("plain", plain), ("fused", fused)]
        deadline, turn = time.monotonic() + seconds_per_shape, 0
        while time.monotonic() < deadline or turn < 4:
            block = {}
            for name, backend in sides if turn % 2 == 0 else sides[::-1]:
                block[name] = run_block(backend, padded, BLOCK_S)
                times[name] += block[name]
            ratios.append(float(np.median(block["fused"]) / np.median(block["plain"])))
            turn += 1
        if fused.fused_batches == 0:
            raise RuntimeError("the fused backend never ran its solo graph")
        plain_s, fused_s = np.array(times["plain"]), np.array(times["fused"])
        threads = options.solo_threads or options.intra_op_threads
        length = padded.input_ids.shape[1]
        rows.append(
            ModelTime(
                inputs,
                length,
                threads,
                len(plain_s),
                1e3 * np.median(plain_s),
                1e3 * np.median(fused_s),
                float(np.median(ratios)),
            )
        )
        print(f"  in process: {rows[-1]}", file=sys.stderr, flush=True)
    return rows


# ---------------------------------------------------------------- 2. end to end


def plain_repo(model_dir: Path, target: Path) -> Path:
    """A repository serving the model from its plain graph alone: its files linked, its manifest without the solo
    graph (the same id, so the same requests)."""
    copy = target / model_dir.name
    copy.mkdir(parents=True)
    for path in model_dir.iterdir():
        if path.name not in (MANIFEST_FILE, ModelManifest.load(model_dir).solo_graph.file):
            (copy / path.name).symlink_to(path.resolve())
    replace(ModelManifest.load(model_dir), solo_graph=None).save(copy)
    return target


def fused_repo(model_dir: Path, target: Path) -> Path:
    target.mkdir(parents=True)
    (target / model_dir.name).symlink_to(model_dir.resolve())
    return target


@dataclass
class Side:
    server: ServerProcess
    gateway: EnvoyProcess
    channel: grpc.aio.Channel


def requests(kind: str, model: str, texts: Sequence[str]) -> list[bytes]:
    if kind == "grpc":
        return [pb.EmbedRequest(model=model, inputs=[text]).SerializeToString() for text in texts]
    if kind == "rest":
        bodies = [orjson.dumps({"model": model, "input": text, "encoding_format": "base64"}) for text in texts]
        return [http_request("/v1/embeddings", body) for body in bodies]
    chunks = [texts[i : i + BATCH] for i in range(0, len(texts) - BATCH + 1, BATCH)]
    return [pb.EmbedRequest(model=model, inputs=list(chunk)).SerializeToString() for chunk in chunks]


async def one_pass(side: Side, kind: str, payloads: list[bytes]) -> list[float]:
    assert side.server.proc is not None and side.gateway.proc is not None
    wait_quiet((side.server.proc.pid, side.gateway.proc.pid), QUIET_WAIT_S)
    if kind == "rest":
        latencies, _ = await http_calls("127.0.0.1", side.gateway.port, payloads, 1)
    else:
        latencies, _ = await grpc_calls(side.channel, EMBED, payloads, 1)
    return latencies


async def same_vectors(sides: dict[str, Side], model: str, texts: Sequence[str]) -> float:
    """The lowest cosine between A's and B's vectors of the same lone texts."""
    vectors = {}
    for name, side in sides.items():
        call = side.channel.unary_unary(EMBED)
        answers = [await call(pb.EmbedRequest(model=model, inputs=[t]).SerializeToString()) for t in texts]
        vectors[name] = decode([pb.EmbedResponse.FromString(raw) for raw in answers])
    return min_cosine(vectors["plain"], vectors["fused"])


async def end_to_end(model_dir: Path, model: str, rounds: int, calls: int) -> tuple[list[Cell], float]:
    sentences = load_pairs("test").sentences
    kinds = {"grpc": calls, "rest": calls, "grpc32": max(BATCH, calls // 4) * BATCH}
    latencies: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        repos = {"plain": plain_repo(model_dir, Path(tmp) / "a"), "fused": fused_repo(model_dir, Path(tmp) / "b")}
        sides: dict[str, Side] = {}
        try:
            for name, repo in repos.items():
                server = ServerProcess(repo, *ENGINE_ONLY, "--models", model).start()
                gateway = EnvoyProcess(server.port, Path(tmp) / f"envoy-{name}").start()
                sides[name] = Side(server, gateway, grpc.aio.insecure_channel(server.address))
            cosine = await same_vectors(sides, model, sentences[:20])
            for side in sides.values():  # warm-up: connections, first shapes
                for kind in kinds:
                    await one_pass(side, kind, requests(kind, model, sentences[:64]))
            for round_ in range(rounds):
                order = list(sides.items()) if round_ % 2 == 0 else list(sides.items())[::-1]
                for kind, count in kinds.items():
                    texts = [f"{sentences[i % len(sentences)]} (r{round_} {kind})" for i in range(count)]
                    for name, side in order:
                        latencies.setdefault((kind, name), []).extend(
                            await one_pass(side, kind, requests(kind, model, texts))
                        )
                print(f"  end to end: round {round_ + 1}/{rounds} done", file=sys.stderr, flush=True)
        finally:
            for side in sides.values():
                await side.channel.close()
                side.gateway.stop()
                side.server.stop()
    cells = []
    for kind in kinds:
        plain, fused = latencies[(kind, "plain")], latencies[(kind, "fused")]
        cells.append(
            Cell(
                kind,
                len(fused),
                percentile(plain, 50),
                percentile(fused, 50),
                percentile(plain, 99),
                percentile(fused, 99),
            )
        )
    return cells, cosine


# ---------------------------------------------------------------- report

CELL_NAMES = {
    "grpc": "one short text, 1 client, gRPC",
    "rest": "one short text, 1 client, REST (base64)",
    "grpc32": f"{BATCH} texts a call, 1 client, gRPC",
}


def markdown(facts: dict, model: str, times: list[ModelTime], cells: list[Cell], cosine: float | None) -> str:
    lines = [
        f"# One short text: plain graph vs fused solo graph ({model})",
        "",
        f"{facts['date']}; {facts['cpu']}, {facts['usable_cores']} usable cores; onnxruntime {facts['onnxruntime']}.",
        "",
        "## The model's own time, in process (a lone batch on the solo session's threads; one thread: a batch beside "
        "another)",
        "",
        "| inputs x tokens | threads | runs each | plain p50 ms | fused p50 ms | fused / plain (median of rounds) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {t.inputs} x {t.tokens} | {t.threads} | {t.runs} | {t.plain_ms:.2f} | {t.fused_ms:.2f} | {t.ratio:.3f} |"
        for t in times
    ]
    if cells:
        lines += [
            "",
            "## End to end: server A (plain graph only) and B (as built, solo graph for small lone batches)",
            "",
            "| cell | calls each | A p50 ms | B p50 ms | B / A | A p99 ms | B p99 ms |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {CELL_NAMES[c.name]} | {c.calls} | {c.plain_p50_ms:.2f} | {c.fused_p50_ms:.2f} | {c.ratio:.3f} | "
            f"{c.plain_p99_ms:.2f} | {c.fused_p99_ms:.2f} |"
            for c in cells
        ]
        by_name = {c.name: c for c in cells}
        lines += [
            "",
            f"Vectors of A and B for the same lone texts: lowest cosine {cosine:.6f}.",
            f"Targets (issue 15): gRPC p50 <= 3.5 ms ({by_name['grpc'].fused_p50_ms:.2f}: "
            f"{'met' if by_name['grpc'].fused_p50_ms <= 3.5 else 'not met'}), REST p50 <= 4.5 ms "
            f"({by_name['rest'].fused_p50_ms:.2f}: {'met' if by_name['rest'].fused_p50_ms <= 4.5 else 'not met'}).",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.lone_text", description=__doc__.split("\n")[0])
    parser.add_argument("--model-repo", type=Path, default=Path("models"))
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--calls", type=int, default=150, help="single-text calls per pass")
    parser.add_argument("--seconds", type=float, default=4.0, help="in-process time per batch shape")
    parser.add_argument("--in-process-only", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    model_dir = discover(args.model_repo.resolve(), (args.model,))[0]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    times = model_times(model_dir, args.seconds)
    cells, cosine = (
        ([], None) if args.in_process_only else run(end_to_end(model_dir, args.model, args.rounds, args.calls))
    )
    facts = machine_facts()
    data = {"machine": facts, "model_time": [asdict(t) for t in times], "end_to_end": [asdict(c) for c in cells]}
    write_report("lone_text", markdown(facts, args.model, times, cells, cosine), {**data, "cosine": cosine}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
