"""Throughput of each built-in model over gRPC as a ratio to in-process ONNX Runtime on the same model files.

A bigger model spends more of its time in inference, so serving costs less of it; the ratio says how much of the
in-process limit survives the server for each model. Per model, interleaved repeats of: the in-process baseline
(the engine's tokenizer and encoder, sentences sorted by length, each of bench.common's batch configurations, the
best one is the limit), then gRPC with 32-sentence requests from 8 concurrent clients on one channel, the server
loading only that model with default settings. Medians are reported (bench/results/models.md).

    python -m bench.models [--model-repo models] [--models all-minilm-l6-v2,all-mpnet-base-v2] [--sentences 1024]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import grpc

from bench.common import ENGINE_ONLY, REQUEST_SIZE, best_in_process_rate, machine_facts
from bench.report import RESULTS, write_report
from service._gen.embeddings.v1 import embeddings_pb2 as pb
from service._gen.embeddings.v1 import embeddings_pb2_grpc as pb_grpc
from tests.serving import ServerProcess
from tests.stsb import load_pairs

CLIENTS = 8


async def over_grpc(address: str, model: str, sentences: list[str]) -> float:
    """Sentences per second with CLIENTS tasks sending REQUEST_SIZE-sentence Embed calls."""
    requests = [sentences[i : i + REQUEST_SIZE] for i in range(0, len(sentences), REQUEST_SIZE)]
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.EmbeddingServiceStub(channel)
        queue = list(reversed(requests))

        async def client() -> None:
            while queue:
                inputs = queue.pop()
                await stub.Embed(pb.EmbedRequest(model=model, inputs=inputs, truncate=True), timeout=600)

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(CLIENTS)))
        return len(sentences) / (time.perf_counter() - started)


def measure(repo: Path, model: str, sentences: list[str], repeats: int) -> tuple[float, float]:
    limits, served = [], []
    with ServerProcess(repo, *ENGINE_ONLY, "--models", model).start(timeout=600) as server:
        asyncio.run(over_grpc(server.address, model, sentences[: REQUEST_SIZE * CLIENTS]))  # warm-up
        for repeat in range(repeats):
            limits.append(best_in_process_rate(repo / model, sentences))
            served.append(asyncio.run(over_grpc(server.address, model, sentences)))
            print(
                f"{model}: repeat {repeat + 1}: {limits[-1]:.0f}/s in-process, {served[-1]:.0f}/s gRPC", file=sys.stderr
            )
    return statistics.median(limits), statistics.median(served)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.models", description=__doc__.split("\n")[0])
    parser.add_argument("--model-repo", type=Path, default=Path("models"))
    parser.add_argument("--models", default="all-minilm-l6-v2,all-mpnet-base-v2")
    parser.add_argument("--sentences", type=int, default=1024, help="STS-B test sentences per pass")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    pairs = load_pairs("test")
    sentences = pairs.sentences[: args.sentences]
    facts = machine_facts()
    lines = [
        "# Built-in models: gRPC throughput vs in-process ONNX Runtime",
        "",
        f"{len(sentences)} STS-B test sentences, {REQUEST_SIZE} per request, {CLIENTS} clients; median of "
        f"{args.repeats} interleaved repeats; {facts['date']}; {facts['cpu']}, {facts['cores']} cores, no GPU.",
        "",
        "| model | in-process sentences/s (best batching) | gRPC sentences/s | gRPC vs in-process |",
        "|---|---:|---:|---:|",
    ]
    for model in [m for m in args.models.split(",") if m]:
        limit, served = measure(args.model_repo.resolve(), model, sentences, args.repeats)
        lines.append(f"| `{model}` | {limit:.0f} | {served:.0f} | {served / limit:.2f}x |")
    text = "\n".join(lines) + "\n"
    write_report("models", text, out=args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
