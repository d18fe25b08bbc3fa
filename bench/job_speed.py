"""Bulk jobs at the engine's speed: an async job on an idle server against in-process ONNX Runtime, what it does to
an interactive caller beside it, and the share it keeps under load.

One server (default settings) with all-MiniLM-L6-v2, measured in one run, the paths never at once except where the
point is to run them together:

- the limit: in-process ONNX Runtime on the job's texts (the engine's tokenizer and encoder called directly, best
  batching of bench.common), and the same texts sent synchronously over gRPC, 256 a request, one after another;
- a job of the 2,758 STS-B test sentences (AsyncEmbed over gRPC) on the idle server: sentences/s from submission to
  `completed` (polled every 20 ms), and the server's CPU per sentence beside the in-process CPU per sentence;
- one interactive caller (one short text a call, back to back; lean gRPC client) alone, then beside a running job:
  p50 and p99, and the ratio of the p50s;
- under load (32 interactive clients sending one text a call, back to back) a job keeps a share: its part of the
  sentences embedded meanwhile (the server's `job_min_share`, 0.2, is the share of inference time a job keeps while
  interactive inputs wait; both sides embed STS-B sentences, so sentences stand for inference time), and its speed
  as a fraction of its speed alone.

Texts are made unique per pass (a short suffix), so that no cache could answer them.

    python -m bench.job_speed [--model-repo models] [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
from google.protobuf import struct_pb2

from bench.common import BASELINE_CONFIGS, ENGINE_ONLY, InProcessBaseline, machine_facts
from bench.lean import ThreadCpu, grpc_calls, median, percentile, run, wait_quiet
from bench.report import RESULTS
from service._gen.embeddings.v1 import embeddings_pb2 as pb
from service._gen.embeddings.v1 import jobs_pb2, jobs_pb2_grpc, rest_pb2
from service.engine.registry import discover
from tests.serving import ServerProcess
from tests.stsb import load_pairs

MODEL = "all-minilm-l6-v2"
EMBED = "/embeddings.v1.EmbeddingService/Embed"
POLL_S = 0.02
QUIET_WAIT_S = 20.0
JOB_MIN_SHARE = 0.2


@dataclass(frozen=True)
class Plan:
    repeats: int = 3
    interactive_calls: int = 300
    # Inputs of the job run beside 32 interactive clients (progress is counted a chunk of 256 at a time, so the
    # job's whole time is measured).
    load_job_inputs: int = 1024


QUICK = Plan(repeats=1, interactive_calls=100, load_job_inputs=512)


def unique(sentences: Sequence[str], tag: str, copies: int = 1) -> list[str]:
    return [f"{s} ({tag}{c})" for c in range(copies) for s in sentences]


def strings(texts: Sequence[str]) -> struct_pb2.Value:
    return struct_pb2.Value(list_value=struct_pb2.ListValue(values=[struct_pb2.Value(string_value=t) for t in texts]))


@dataclass
class Pass:
    """One repeat's figures."""

    in_process: dict[str, float] = field(default_factory=dict)  # config -> sentences/s
    in_process_cpu_ms: float = 0.0  # CPU per sentence of the best configuration
    sync_grpc: float = 0.0  # sentences/s, 256 a request, one client
    job_idle: float = 0.0  # sentences/s of a job alone
    job_idle_cpu_ms: float = 0.0  # server CPU per sentence meanwhile
    alone_ms: list[float] = field(default_factory=list)  # interactive latencies, idle server
    beside_ms: list[float] = field(default_factory=list)  # the same beside a running job
    job_under_load: float = 0.0  # sentences/s of a job beside 32 interactive clients
    interactive_under_load: float = 0.0  # their calls/s meanwhile


class Bench:
    def __init__(self, server: ServerProcess, channel: grpc.aio.Channel, baseline: InProcessBaseline, texts: list[str]):
        assert server.proc is not None
        self.pid = server.proc.pid
        self.channel = channel
        self.jobs = jobs_pb2_grpc.JobServiceStub(channel)
        self.baseline = baseline
        self.texts = texts
        self.passes = 0

    def tag(self) -> str:
        self.passes += 1
        return f"j{self.passes}-"

    def quiet(self) -> None:
        wait_quiet((self.pid,), QUIET_WAIT_S)

    def in_process(self, out: Pass) -> None:
        texts = unique(self.texts, self.tag())
        cpu = {}
        for config in BASELINE_CONFIGS:
            self.quiet()
            started, cpu_started = time.perf_counter(), time.process_time()
            self.baseline.embed(texts, config)
            out.in_process[config.name] = len(texts) / (time.perf_counter() - started)
            cpu[config.name] = 1000 * (time.process_time() - cpu_started) / len(texts)
        out.in_process_cpu_ms = cpu[max(out.in_process, key=out.in_process.__getitem__)]

    async def sync_grpc(self, out: Pass) -> None:
        texts = unique(self.texts, self.tag())
        requests = [
            pb.EmbedRequest(model=MODEL, inputs=texts[i : i + 256], encoding_format=pb.ENCODING_FORMAT_BYTES)
            for i in range(0, len(texts), 256)
        ]
        payloads = [r.SerializeToString() for r in requests]
        self.quiet()
        started = time.perf_counter()
        await grpc_calls(self.channel, EMBED, payloads, 1, timeout=300)
        out.sync_grpc = len(texts) / (time.perf_counter() - started)

    async def submit(self, texts: list[str]) -> str:
        job = await self.jobs.AsyncEmbed(
            rest_pb2.CreateEmbeddingRequest(model=MODEL, input=strings(texts)), timeout=300
        )
        return job.id

    async def job(self, job_id: str) -> jobs_pb2.Job:
        return await self.jobs.GetJob(jobs_pb2.GetJobRequest(id=job_id), timeout=30)

    async def wait_done(self, job_id: str) -> jobs_pb2.Job:
        while True:
            job = await self.job(job_id)
            if job.status not in ("queued", "in_progress"):
                if job.status != "completed":
                    raise RuntimeError(f"job {job_id} ended {job.status}: {job.error}")
                return job
            await asyncio.sleep(POLL_S)

    async def job_idle(self, out: Pass) -> None:
        texts = unique(self.texts, self.tag())
        self.quiet()
        cpu = ThreadCpu.read(self.pid)
        started = time.perf_counter()
        await self.wait_done(await self.submit(texts))
        out.job_idle = len(texts) / (time.perf_counter() - started)
        out.job_idle_cpu_ms = 1000 * ThreadCpu.read(self.pid).minus(cpu).total / len(texts)

    def interactive_payloads(self, count: int) -> list[bytes]:
        tag = self.tag()
        return [
            pb.EmbedRequest(model=MODEL, inputs=[f"{self.texts[i]} ({tag})"]).SerializeToString() for i in range(count)
        ]

    async def interactive(self, out: Pass, calls: int) -> None:
        self.quiet()
        out.alone_ms, _ = await grpc_calls(self.channel, EMBED, self.interactive_payloads(calls), 1)
        # A job long enough to outlast the calls: three times the set.
        job_id = await self.submit(unique(self.texts, self.tag(), copies=3))
        while (await self.job(job_id)).status == "queued":
            await asyncio.sleep(POLL_S)
        await asyncio.sleep(0.5)  # running at full speed
        out.beside_ms, _ = await grpc_calls(self.channel, EMBED, self.interactive_payloads(calls), 1)
        if (await self.job(job_id)).status != "in_progress":
            raise RuntimeError("the job ended before the interactive calls did: raise its size")
        await self.jobs.CancelJob(jobs_pb2.CancelJobRequest(id=job_id), timeout=30)

    async def under_load(self, out: Pass, inputs: int) -> None:
        """32 clients back to back; a job of `inputs` beside them, timed from submission to completion."""
        stop = asyncio.Event()
        calls = 0
        tag = self.tag()

        async def client(n: int) -> None:
            nonlocal calls
            call = self.channel.unary_unary(EMBED)
            i = n
            while not stop.is_set():
                text = f"{self.texts[i % len(self.texts)]} ({tag}{i})"
                await call(pb.EmbedRequest(model=MODEL, inputs=[text]).SerializeToString(), timeout=60)
                calls += 1
                i += 32

        self.quiet()
        clients = [asyncio.create_task(client(n)) for n in range(32)]
        await asyncio.sleep(1.0)  # the load is on
        texts = unique(self.texts, self.tag(), copies=1 + inputs // len(self.texts))[:inputs]
        calls_before, started = calls, time.perf_counter()
        await self.wait_done(await self.submit(texts))
        elapsed = time.perf_counter() - started
        out.job_under_load = inputs / elapsed
        out.interactive_under_load = (calls - calls_before) / elapsed
        stop.set()
        await asyncio.gather(*clients)

    async def repeat(self, plan: Plan) -> Pass:
        out = Pass()
        self.in_process(out)
        await self.sync_grpc(out)
        await self.job_idle(out)
        await self.interactive(out, plan.interactive_calls)
        await self.under_load(out, plan.load_job_inputs)
        return out


async def measure(plan: Plan, model_repo: Path, progress=lambda message: None) -> list[Pass]:
    texts = load_pairs("test").sentences
    baseline = InProcessBaseline(discover(model_repo, (MODEL,))[0])
    with ServerProcess(model_repo, *ENGINE_ONLY, "--models", MODEL) as server:
        async with grpc.aio.insecure_channel(server.address) as channel:
            bench = Bench(server, channel, baseline, texts)
            baseline.embed(unique(texts[:256], "warm"), BASELINE_CONFIGS[0])
            await grpc_calls(channel, EMBED, bench.interactive_payloads(50), 4)  # warm-up
            passes = []
            for repeat in range(plan.repeats):
                passes.append(await bench.repeat(plan))
                progress(f"repeat {repeat + 1}/{plan.repeats} done")
    return passes


# ---------------------------------------------------------------- report


@dataclass
class Summary:
    in_process_config: str
    in_process: float
    in_process_cpu_ms: float
    sync_grpc: float
    job_idle: float
    job_idle_cpu_ms: float
    alone_p50_ms: float
    alone_p99_ms: float
    beside_p50_ms: float
    beside_p99_ms: float
    job_under_load: float
    interactive_under_load: float

    @property
    def job_ratio(self) -> float:
        return self.job_idle / self.in_process

    @property
    def p50_ratio(self) -> float:
        return self.beside_p50_ms / self.alone_p50_ms

    @property
    def share_of_work(self) -> float:
        """The job's part of the sentences embedded while it ran beside the 32 clients (one sentence a call)."""
        return self.job_under_load / (self.job_under_load + self.interactive_under_load)


def summarize(passes: Sequence[Pass]) -> Summary:
    configs = {name: median([p.in_process[name] for p in passes]) for name in passes[0].in_process}
    best = max(configs, key=configs.__getitem__)
    alone = [ms for p in passes for ms in p.alone_ms]
    beside = [ms for p in passes for ms in p.beside_ms]
    return Summary(
        in_process_config=best,
        in_process=configs[best],
        in_process_cpu_ms=median([p.in_process_cpu_ms for p in passes]),
        sync_grpc=median([p.sync_grpc for p in passes]),
        job_idle=median([p.job_idle for p in passes]),
        job_idle_cpu_ms=median([p.job_idle_cpu_ms for p in passes]),
        alone_p50_ms=percentile(alone, 50),
        alone_p99_ms=percentile(alone, 99),
        beside_p50_ms=percentile(beside, 50),
        beside_p99_ms=percentile(beside, 99),
        job_under_load=median([p.job_under_load for p in passes]),
        interactive_under_load=median([p.interactive_under_load for p in passes]),
    )


def targets(s: Summary) -> list[tuple[str, str, bool]]:
    return [
        (
            "a job on an idle server >= 0.85x of in-process",
            f"{s.job_ratio:.2f}x ({s.job_idle:.0f}/s vs {s.in_process:.0f}/s; CPU per sentence "
            f"{s.job_idle_cpu_ms:.2f} vs {s.in_process_cpu_ms:.2f} ms)",
            s.job_ratio >= 0.85,
        ),
        (
            "one interactive caller beside a running job: single-text p50 <= 1.5x of idle",
            f"{s.p50_ratio:.2f}x ({s.beside_p50_ms:.2f} vs {s.alone_p50_ms:.2f} ms)",
            s.p50_ratio <= 1.5,
        ),
        (
            f"a job under load keeps its share (job_min_share {JOB_MIN_SHARE} of inference time)",
            f"{s.share_of_work:.2f} of the sentences embedded meanwhile ({s.job_under_load:.0f}/s beside "
            f"{s.interactive_under_load:.0f} calls/s of one sentence; {s.job_under_load / s.job_idle:.2f} of its "
            "idle speed)",
            s.share_of_work >= JOB_MIN_SHARE,
        ),
    ]


def markdown(s: Summary, plan: Plan, facts: dict[str, object]) -> str:
    lines = [
        "# Async jobs at the engine's speed",
        "",
        f"{facts['date']}; {facts['cpu']}, {facts['usable_cores']} usable cores; onnxruntime {facts['onnxruntime']}. "
        f"`{MODEL}`, the 2,758 STS-B test sentences, medians of {plan.repeats} repeats (latency percentiles over "
        "all calls).",
        "",
        "| path | sentences/s | vs in-process |",
        "|---|---:|---:|",
        f"| in-process ({s.in_process_config}) | {s.in_process:.0f} | 1.00x |",
        f"| gRPC, 256 a request, one after another | {s.sync_grpc:.0f} | {s.sync_grpc / s.in_process:.2f}x |",
        f"| async job, idle server | {s.job_idle:.0f} | {s.job_ratio:.2f}x |",
        f"| async job beside 32 interactive clients | {s.job_under_load:.0f} | "
        f"{s.job_under_load / s.in_process:.2f}x |",
        "",
        "| one interactive caller, one text a call | p50 ms | p99 ms |",
        "|---|---:|---:|",
        f"| idle server | {s.alone_p50_ms:.2f} | {s.alone_p99_ms:.2f} |",
        f"| beside a running job | {s.beside_p50_ms:.2f} | {s.beside_p99_ms:.2f} |",
        "",
        "| target | measured | |",
        "|---|---|---|",
    ]
    lines += [f"| {goal} | {value} | {'met' if ok else 'not met'} |" for goal, value, ok in targets(s)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.job_speed", description=__doc__.split("\n")[0])
    parser.add_argument("--model-repo", type=Path, default=Path("models"))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--report-only", action="store_true", help="rewrite job_speed.md from job_speed.json")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else Plan()
    if args.repeats:
        plan = Plan(**{**asdict(plan), "repeats": args.repeats})
    started = time.monotonic()

    def progress(message: str) -> None:
        print(f"[{time.monotonic() - started:5.0f}s] job speed: {message}", file=sys.stderr, flush=True)

    if args.report_only:
        stored = json.loads((args.out / "job_speed.json").read_text())
        passes = [Pass(**raw) for raw in stored["passes"]]
        plan = Plan(**{**asdict(plan), "repeats": len(passes)})
    else:
        passes = run(measure(plan, args.model_repo.resolve(), progress))
    summary = summarize(passes)
    text = markdown(summary, plan, machine_facts())
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "job_speed.md").write_text(text)
    payload = {
        "summary": asdict(summary),
        "targets": [{"target": t, "measured": m, "met": ok} for t, m, ok in targets(summary)],
        "passes": [asdict(p) for p in passes],
    }
    (args.out / "job_speed.json").write_text(json.dumps(payload, indent=2) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
