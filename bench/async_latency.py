"""Interactive latency while a large async job runs: does the background lane keep calls fast?

Measures one client's single-text Embed latency (gRPC) on an idle server, then again while a 100,000-input
async job is being embedded, and reports p50/p99 and the ratio (target: p50 within 2x of idle). The job is
cancelled at the end.

    python -m bench.async_latency [--model-repo models] [--model all-minilm-l6-v2] [--calls 300] [--inputs 100000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import grpc

from bench.common import ENGINE_ONLY
from bench.report import write_report
from service._gen.embeddings.v1 import embeddings_pb2 as pb
from service._gen.embeddings.v1 import embeddings_pb2_grpc as pb_grpc
from tests.serving import EnvoyProcess, ServerProcess, http
from tests.stsb import load_pairs


def latencies_ms(stub: pb_grpc.EmbeddingServiceStub, model: str, texts: list[str]) -> list[float]:
    out = []
    for text in texts:
        start = time.perf_counter()
        stub.Embed(pb.EmbedRequest(model=model, inputs=[text], encoding_format=pb.ENCODING_FORMAT_BYTES), timeout=30)
        out.append((time.perf_counter() - start) * 1000)
    return out


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"p50_ms": statistics.median(ordered), "p99_ms": ordered[int(0.99 * (len(ordered) - 1))]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-repo", default="models")
    parser.add_argument("--model", default="all-minilm-l6-v2")
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--inputs", type=int, default=100_000)
    args = parser.parse_args(argv)
    sentences = load_pairs().sentences
    probes = [sentences[i % len(sentences)] for i in range(args.calls)]
    corpus = [f"{sentences[i % len(sentences)]} (document {i})" for i in range(args.inputs)]
    with (
        ServerProcess(Path(args.model_repo).resolve(), *ENGINE_ONLY, "--models", args.model) as server,
        tempfile.TemporaryDirectory() as tmp,
        EnvoyProcess(server.port, Path(tmp)) as gateway,
        grpc.insecure_channel(server.address) as channel,
    ):
        stub = pb_grpc.EmbeddingServiceStub(channel)
        latencies_ms(stub, args.model, probes[:50])  # warm-up
        idle = summary(latencies_ms(stub, args.model, probes))
        status, _, raw = http(gateway, "POST", "/v1/async/embeddings", {"model": args.model, "input": corpus})
        job = json.loads(raw)
        if status != 200:
            raise SystemExit(f"job refused: {job}")
        time.sleep(2)  # the job is running
        busy = summary(latencies_ms(stub, args.model, probes))
        _, _, raw = http(gateway, "GET", f"/v1/async/jobs/{job['id']}")
        progress = json.loads(raw)["progress"]
        http(gateway, "POST", f"/v1/async/jobs/{job['id']}/cancel", None)
    ratio = busy["p50_ms"] / idle["p50_ms"]
    lines = [
        "# Interactive latency while an async job runs",
        "",
        f"One client, single-text gRPC Embed, {args.calls} calls; job of {args.inputs} inputs "
        f"({progress['completed']} embedded while measuring).",
        "",
        "| server | p50 ms | p99 ms |",
        "|---|---:|---:|",
        f"| idle | {idle['p50_ms']:.2f} | {idle['p99_ms']:.2f} |",
        f"| {args.inputs}-input job running | {busy['p50_ms']:.2f} | {busy['p99_ms']:.2f} |",
        "",
        f"p50 ratio busy/idle: **{ratio:.2f}x** (target <= 2x: {'met' if ratio <= 2 else 'not met'}).",
    ]
    text = "\n".join(lines) + "\n"
    write_report("async_latency", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
