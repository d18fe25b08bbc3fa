"""The embedding cache, timed against the same server without it, in one run.

Three checks (issue 18's targets beside each), all over gRPC with requests of 32 sentences from 8 client tasks:
- second pass: the 2,758 STS-B test sentences embedded once (cold), then again (every input a hit): the cold
  pass's time over the warm pass's (target >= 10x);
- duplicates: requests whose 32 inputs are 16 sentences each sent twice, against requests of 32 distinct sentences
  (both never seen before): the distinct requests' time over the duplicated ones' (target >= 1.8x; the model runs
  half the inputs);
- cache off: a cold pass of never-seen sentences on a server with `--cache-bytes 0`, over the same on the default
  server (target: no regression beyond noise, >= 0.95x).
Fresh sentences are the STS-B test sentences with a tag appended, so every check starts cold. Both servers run side
by side and the last two checks alternate between them for `--rounds` rounds (medians reported): on a shared
machine a single pass of each moved the off/on ratio between 0.92x and 1.14x.

    python -m bench.cache --model-repo models [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc

from bench.common import ENGINE_ONLY, machine_facts, send_all
from bench.report import RESULTS, write_report
from service._gen.embeddings.v1 import embeddings_pb2 as pb
from service._gen.embeddings.v1 import embeddings_pb2_grpc as pb_grpc
from tests.serving import ServerProcess
from tests.stsb import load_pairs

MODEL = "all-minilm-l6-v2"
REQUEST_SIZE = 32
CONCURRENCY = 8


def tagged(sentences: Sequence[str], tag: str) -> list[str]:
    return [f"{sentence} ({tag})" for sentence in sentences]


def requests(texts: Sequence[str]) -> list[pb.EmbedRequest]:
    return [
        pb.EmbedRequest(model=MODEL, inputs=texts[i : i + REQUEST_SIZE], encoding_format=pb.ENCODING_FORMAT_BYTES)
        for i in range(0, len(texts), REQUEST_SIZE)
    ]


def with_duplicates(sentences: Sequence[str]) -> list[str]:
    """As many inputs as `sentences`, in requests of 32 that hold the first 16 sentences of their block of 32 twice
    (a, b, ..., a, b, ...): the same sentences as the distinct pass, half of them run."""
    half = REQUEST_SIZE // 2
    texts: list[str] = []
    for i in range(0, len(sentences), REQUEST_SIZE):
        group = list(sentences[i : i + half])
        texts += group + group
    return texts


async def timed(stub: pb_grpc.EmbeddingServiceStub, texts: Sequence[str]) -> float:
    """Seconds to embed `texts` in requests of 32 from 8 client tasks."""
    started = time.perf_counter()
    await send_all(stub, requests(texts), CONCURRENCY)
    return time.perf_counter() - started


@dataclass
class Figures:
    sentences: int
    cold_s: float
    warm_s: float
    distinct_s: float
    duplicated_s: float
    on_cold_s: float
    off_cold_s: float

    @property
    def second_pass(self) -> float:
        return self.cold_s / self.warm_s

    @property
    def duplicates(self) -> float:
        return self.distinct_s / self.duplicated_s

    @property
    def off_vs_on(self) -> float:
        return self.off_cold_s / self.on_cold_s


@asynccontextmanager
async def server_stub(repo: Path, *args: str) -> AsyncIterator[pb_grpc.EmbeddingServiceStub]:
    with ServerProcess(repo, "--models", MODEL, *args) as server:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.EmbeddingServiceStub(channel)
            await timed(stub, tagged(["warm-up sentence"] * REQUEST_SIZE, "warm"))
            yield stub


async def measure(repo: Path, sentences: list[str], rounds: int) -> Figures:
    """Both servers up at once; the timed passes alternate between them round by round (the median of each kind is
    reported), so a change in the machine's load during the run falls on both sides alike."""
    half = len(sentences) // 2 // REQUEST_SIZE * REQUEST_SIZE
    kinds: dict[str, list[float]] = {"distinct": [], "duplicated": [], "on": [], "off": []}
    async with server_stub(repo) as cached, server_stub(repo, *ENGINE_ONLY) as uncached:
        cold = await timed(cached, sentences)
        warm = await timed(cached, sentences)
        for r in range(rounds):
            passes = [
                ("distinct", cached, tagged(sentences[:half], f"distinct {r}")),
                ("duplicated", cached, with_duplicates(tagged(sentences[:half], f"duplicated {r}"))),
                ("on", cached, tagged(sentences, f"fresh {r}")),
                ("off", uncached, tagged(sentences, f"fresh {r}")),
            ]
            for kind, stub, texts in passes if r % 2 == 0 else reversed(passes):
                kinds[kind].append(await timed(stub, texts))
    middle = {kind: statistics.median(times) for kind, times in kinds.items()}
    return Figures(len(sentences), cold, warm, middle["distinct"], middle["duplicated"], middle["on"], middle["off"])


def markdown(f: Figures, facts: dict[str, object]) -> str:
    checks = [
        ("second pass of the STS-B test sentences", f"{f.cold_s:.2f} s -> {f.warm_s:.3f} s", f.second_pass, 10.0),
        (
            "requests with 50% duplicates (vs all distinct)",
            f"{f.distinct_s:.2f} s vs {f.duplicated_s:.2f} s",
            f.duplicates,
            1.8,
        ),
        (
            "cache off vs on, a cold pass (no regression)",
            f"{f.off_cold_s:.2f} s vs {f.on_cold_s:.2f} s",
            f.off_vs_on,
            0.95,
        ),
    ]
    lines = [
        "# Embedding cache",
        "",
        f"{MODEL}, {f.sentences} STS-B test sentences, gRPC, requests of {REQUEST_SIZE}, {CONCURRENCY} client "
        "tasks; one run, a server with the cache on (default) and one with it off side by side, their passes "
        "alternating (medians of the rounds).",
        "",
        "| check | times | speed-up | target | met |",
        "|---|---|---|---|---|",
    ]
    for name, times, ratio, target in checks:
        lines.append(f"| {name} | {times} | {ratio:.2f}x | >= {target}x | {'yes' if ratio >= target else 'NO'} |")
    lines += ["", f"Machine: {facts}", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-repo", type=Path, default=Path("models"))
    parser.add_argument("--quick", action="store_true", help="the first 1,024 sentences only, one round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of the duplicate and off checks")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    sentences = load_pairs("test").sentences
    sentences = sentences[:1024] if args.quick else sentences
    figures = asyncio.run(measure(args.model_repo.resolve(), sentences, 1 if args.quick else args.rounds))
    facts = machine_facts()
    data = {
        **asdict(figures),
        "second_pass": figures.second_pass,
        "duplicates": figures.duplicates,
        "off_vs_on": figures.off_vs_on,
        "machine": facts,
    }
    write_report("cache", markdown(figures, facts), data, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
