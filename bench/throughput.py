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
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.common import (
    BASELINE_CONFIGS,
    DISTURBED_CORES,
    REQUEST_SIZE,
    BaselineConfig,
    InProcessBaseline,
    Run,
    Summary,
    check_close,
    machine_facts,
    make_requests,
    rest_bodies,
    run_baseline,
    summarize,
)
from bench.report import RESULTS, write_report
from bench.stack import ServedStack, serve
from service._gen.embeddings.v1 import embeddings_pb2 as pb
from service.engine.registry import discover
from tests.stsb import load_pairs

NAME = "throughput"


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


# ---------------------------------------------------------------- the benchmark


@dataclass
class Bench:
    """Everything one run needs: sentences, the baseline, the served stack and the payloads sent to it."""

    sentences: list[str]
    baseline: InProcessBaseline
    stack: ServedStack
    requests: dict[int, list[pb.EmbedRequest]]
    rest_bodies: dict[str, list[bytes]]

    async def warm_up(self) -> dict[str, float]:
        """One untimed pass of each path (every batch size, both encodings: first shapes allocate), checking that
        both paths compute the same vectors. Returns the largest difference per encoding."""
        for config in BASELINE_CONFIGS[1:]:
            self.baseline.embed(self.sentences, config)
        expected = self.baseline.embed(self.sentences, BASELINE_CONFIGS[0])
        diffs = {}
        for encoding in (pb.ENCODING_FORMAT_FLOAT, pb.ENCODING_FORMAT_BYTES):
            label = pb.EncodingFormat.Name(encoding)
            diffs[label] = check_close(
                f"gRPC ({label})", await self.stack.grpc_vectors(self.requests[encoding]), expected
            )
        for encoding_format, bodies in self.rest_bodies.items():
            vectors = await self.stack.rest_vectors(bodies)
            diffs[f"rest {encoding_format}"] = check_close(f"REST ({encoding_format})", vectors, expected)
        return diffs

    async def repeat(self, repeat: int) -> list[Run]:
        """Baseline (each batch size) with the server idle, then each gRPC config: never both at once."""
        stack = self.stack
        runs = [run_baseline(self.baseline, self.sentences, c, repeat, stack.meter) for c in BASELINE_CONFIGS]
        for config in GRPC_CONFIGS:
            requests = self.requests[config.encoding]
            runs.append(await stack.run_grpc(requests, config.name, config.concurrency, repeat))
        for config in REST_CONFIGS:
            bodies = self.rest_bodies[config.encoding_format]
            runs.append(await stack.run_rest(bodies, config.name, config.concurrency, repeat))
        return runs


async def run_all(args: argparse.Namespace, sentences: list[str]) -> tuple[list[Run], dict[str, float]]:
    baseline = InProcessBaseline(discover(Path(args.model_repo), (args.model,))[0])
    requests = {e: make_requests(args.model, sentences, e) for e in {c.encoding for c in GRPC_CONFIGS}}
    bodies = {f: rest_bodies(args.model, sentences, f) for f in {c.encoding_format for c in REST_CONFIGS}}
    # Only the benchmarked model is loaded; every other server setting is the default, and so is envoy.yaml.
    async with serve(Path(args.model_repo), "--models", args.model) as stack:
        bench = Bench(sentences, baseline, stack, requests, bodies)
        diffs = await bench.warm_up()
        runs: list[Run] = []
        for repeat in range(args.repeats):
            runs.extend(await bench.repeat(repeat))
            print(f"repeat {repeat + 1}/{args.repeats} done", file=sys.stderr)
    return runs, diffs


# ---------------------------------------------------------------- reporting


def best_baseline(summary: Summary) -> tuple[BaselineConfig, float]:
    best = max(BASELINE_CONFIGS, key=lambda c: summary[c.name]["sentences_per_s"])
    return best, summary[best.name]["sentences_per_s"]


def markdown(summary: Summary, facts: dict[str, object], args: argparse.Namespace, n: int) -> str:
    best, limit = best_baseline(summary)
    lines = [
        "# Throughput (gRPC, REST) vs in-process ONNX Runtime",
        "",
        f"Model `{args.model}`, STS-B test split ({n} sentences), median of {args.repeats} interleaved repeats, "
        f"{facts['date']}.  ",
        f"Machine: {facts['cpu']}, {facts['cores']} cores, no GPU; onnxruntime {facts['onnxruntime']}, "
        f"grpcio {facts['grpcio']}, Python {facts['python']}.",
        "",
        "In-process: the engine's TextTokenizer + Encoder called directly, sentences sorted by token count, fixed "
        "batches (one session on every core, or batches in parallel on one thread each), tokenization and "
        f"normalization timed; the best ({best.name}) is the limit.  ",
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
        label = f"**{name}** (limit)" if name == best.name else name
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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.throughput", description=__doc__.split("\n")[0])
    parser.add_argument("--model-repo", default="models")
    parser.add_argument("--model", default="all-minilm-l6-v2")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
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
        "best_baseline": best.name,
        "baseline_sentences_per_s": limit,
        "ratios": {name: s["sentences_per_s"] / limit for name, s in summary.items()},
        "max_vector_diff": diffs,
        "summary": summary,
        "runs": [asdict(r) for r in runs],
    }
    write_report(NAME, text, payload, out=args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
