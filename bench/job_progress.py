"""Async job progress under interactive load: does a job keep its guaranteed share of the engine?

One server (default settings but `job_min_share`), a job of 2,000 inputs (~45 tokens each) submitted over gRPC,
alone and beside 1 and 6 interactive clients (16 texts a call, back to back, gRPC). Measures how long the job takes
(or how far it got when the cap ran out) and what the interactive clients got meanwhile (calls/s, p50, p99). The
same run measures `job_min_share` 0.2 (the default) and 0 (interactive calls strictly first: the behaviour before
the share existed), so the two are compared on the same machine at the same time.

    python -m bench.job_progress [--model-repo models] [--inputs 2000] [--clients 0,1,6] [--cap-s 120]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from google.protobuf import struct_pb2

from bench.common import ENGINE_ONLY
from bench.report import write_report
from service._gen.embeddings.v1 import embeddings_pb2 as pb
from service._gen.embeddings.v1 import embeddings_pb2_grpc as pb_grpc
from service._gen.embeddings.v1 import jobs_pb2, jobs_pb2_grpc, rest_pb2
from tests.serving import ServerProcess
from tests.stsb import load_pairs

MODEL = "all-minilm-l6-v2"


@dataclass
class Outcome:
    share: float
    clients: int
    seconds: float
    completed: int
    total: int
    latencies_ms: list[float] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.completed == self.total

    def interactive(self) -> str:
        if not self.latencies_ms:
            return "| - | - | - |"
        ordered = sorted(self.latencies_ms)
        p99 = ordered[int(0.99 * (len(ordered) - 1))]
        rate = len(ordered) / self.seconds
        return f"| {rate:.1f} | {statistics.median(ordered):.0f} | {p99:.0f} |"


def _strings(texts: list[str]) -> struct_pb2.Value:
    return struct_pb2.Value(list_value=struct_pb2.ListValue(values=[struct_pb2.Value(string_value=t) for t in texts]))


def interactive_client(address: str, texts: list[str], stop: threading.Event, out: list[float]) -> None:
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.EmbeddingServiceStub(channel)
        i = 0
        while not stop.is_set():
            batch = [texts[(i + k) % len(texts)] for k in range(16)]
            i += 16
            started = time.perf_counter()
            stub.Embed(
                pb.EmbedRequest(model=MODEL, inputs=batch, encoding_format=pb.ENCODING_FORMAT_BYTES), timeout=120
            )
            out.append((time.perf_counter() - started) * 1000)


def run_case(server: ServerProcess, share: float, clients: int, corpus: list[str], probes: list[str], cap_s: float):
    stop = threading.Event()
    latencies: list[float] = []
    threads = [
        threading.Thread(target=interactive_client, args=(server.address, probes, stop, latencies), daemon=True)
        for _ in range(clients)
    ]
    for thread in threads:
        thread.start()
    time.sleep(2 if clients else 0)  # the interactive load is running
    latencies.clear()
    with grpc.insecure_channel(server.address) as channel:
        jobs = jobs_pb2_grpc.JobServiceStub(channel)
        started = time.perf_counter()
        job = jobs.AsyncEmbed(rest_pb2.CreateEmbeddingRequest(model=MODEL, input=_strings(corpus)), timeout=120)
        while True:
            job = jobs.GetJob(jobs_pb2.GetJobRequest(id=job.id), timeout=30)
            elapsed = time.perf_counter() - started
            if job.status not in ("queued", "in_progress") or elapsed > cap_s:
                break
            time.sleep(0.25)
        if job.status in ("queued", "in_progress"):
            jobs.CancelJob(jobs_pb2.CancelJobRequest(id=job.id), timeout=30)
    stop.set()
    for thread in threads:
        thread.join(120)
    return Outcome(share, clients, elapsed, job.progress.completed, job.progress.total, list(latencies))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-repo", default="models")
    parser.add_argument("--inputs", type=int, default=2000)
    parser.add_argument("--clients", default="0,1,6")
    parser.add_argument("--shares", default="0.2,0")
    parser.add_argument("--cap-s", type=float, default=120.0)
    args = parser.parse_args(argv)
    sentences = load_pairs().sentences
    # ~45 tokens each: three STS-B sentences.
    corpus = [" ".join(sentences[(3 * i + k) % len(sentences)] for k in range(3)) for i in range(args.inputs)]
    probes = sentences[:512]
    outcomes: list[Outcome] = []
    for share in (float(s) for s in args.shares.split(",")):
        with ServerProcess(
            Path(args.model_repo).resolve(), *ENGINE_ONLY, "--models", MODEL, "--job-min-share", str(share)
        ) as srv:
            for clients in (int(c) for c in args.clients.split(",")):
                outcome = run_case(srv, share, clients, corpus, probes, args.cap_s)
                outcomes.append(outcome)
                print(outcome.share, outcome.clients, f"{outcome.seconds:.1f}s", outcome.completed, flush=True)
    lines = [
        "# Async job progress under interactive load",
        "",
        f"A job of {args.inputs} inputs (~45 tokens each) beside interactive gRPC clients (16 texts a call, back to "
        f"back); `job_min_share` 0.2 (default) and 0 (interactive strictly first), same run; cap {args.cap_s:.0f} s.",
        "",
        "| job_min_share | clients | job | inputs done | interactive calls/s | p50 ms | p99 ms |",
        "|---:|---:|---|---:|---:|---:|---:|",
    ]
    for o in outcomes:
        job = f"completed in {o.seconds:.1f} s" if o.finished else f"**not done after {o.seconds:.0f} s**"
        lines.append(f"| {o.share:g} | {o.clients} | {job} | {o.completed} / {o.total} {o.interactive()}")
    text = "\n".join(lines) + "\n"
    write_report("job_progress", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
