"""The cost of huge inputs: how long a multi-megabyte string takes to be refused or cut, and what it does to memory.

One server (fp32 model only) and Envoy. For each case, the median of `--repeats` calls and the server's RSS before
the first and after the last call. The reference: before the bound, an 8 MiB string took 14.5 s to be refused
and grew the server by ~1 GiB; a 15 MiB string with truncation took 127 s and 0.9 -> 3.4 GiB.

    python -m bench.long_inputs [--model-repo models] [--repeats 5]
"""

from __future__ import annotations

import argparse
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

MODEL = "all-minilm-l6-v2"
MiB = 1 << 20
SENTENCE = "hello world, this is a sentence. "


def rss_mib(server: ServerProcess) -> float:
    assert server.proc is not None
    status = Path(f"/proc/{server.proc.pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1]) / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-repo", default="models")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    huge = SENTENCE * (15 * MiB // len(SENTENCE))
    with (
        ServerProcess(Path(args.model_repo).resolve(), *ENGINE_ONLY, "--models", MODEL) as server,
        tempfile.TemporaryDirectory() as tmp,
        EnvoyProcess(server.port, Path(tmp)) as envoy,
        grpc.insecure_channel(server.address) as channel,
    ):
        stub = pb_grpc.EmbeddingServiceStub(channel)

        def rest(text: str, truncate: bool) -> float | None:
            status, headers, _ = http(
                envoy, "POST", "/v1/embeddings", {"model": MODEL, "input": text, "truncate": truncate}
            )
            assert status == (200 if truncate else 400), status
            return float(headers["openai-processing-ms"])  # the call's time in the server

        def grpc_call(text: str, truncate: bool) -> float | None:
            try:
                stub.Embed(pb.EmbedRequest(model=MODEL, inputs=[text], truncate=truncate), timeout=600)
                assert truncate
            except grpc.RpcError as err:
                assert not truncate and err.code() == grpc.StatusCode.INVALID_ARGUMENT
            return None

        cases = [
            ("REST, 8 MiB, truncate: false (400)", rest, huge[: 8 * MiB], False),
            ("REST, 15 MiB, cut to 256 tokens", rest, huge, True),
            ("gRPC, 8 MiB, truncate: false (INVALID_ARGUMENT)", grpc_call, huge[: 8 * MiB], False),
            ("gRPC, 15 MiB, cut to 256 tokens", grpc_call, huge, True),
        ]
        rows = []
        started_rss = rss_mib(server)
        for name, call, text, truncate in cases:
            before = rss_mib(server)
            seconds, in_server = [], []
            for _ in range(args.repeats):
                started = time.perf_counter()
                server_ms = call(text, truncate)
                seconds.append(time.perf_counter() - started)
                if server_ms is not None:
                    in_server.append(server_ms)
            server_median = f"{statistics.median(in_server):.0f}" if in_server else "-"
            rows.append((name, statistics.median(seconds) * 1000, server_median, before, rss_mib(server)))
        # The server's own share of a call: `x-tokenization-time` of a 15 MiB input.
        _, headers, _ = http(envoy, "POST", "/v1/embeddings", {"model": MODEL, "input": huge})
        parts = {name: float(headers[f"x-{name}-time"]) for name in ("total", "tokenization", "queue", "inference")}
    lines = [
        "# Huge inputs: time to answer and server memory",
        "",
        f"Median of {args.repeats} calls each, measured by the client (the transfer of the body included); server RSS "
        "before the first and after the last call of each case; ms in the server: REST `openai-processing-ms`.",
        "",
        "| case | ms per call (client) | ms in the server | server RSS before -> after (MiB) |",
        "|---|---:|---:|---|",
        *(f"| {name} | {ms:.0f} | {srv} | {a:.0f} -> {b:.0f} |" for name, ms, srv, a, b in rows),
        "",
        "Where a 15 MiB input's time goes in the server (ms, one more call): "
        + ", ".join(f"{name} {ms:.1f}" for name, ms in parts.items())
        + f". RSS over the whole run: {started_rss:.0f} -> {rows[-1][4]:.0f} MiB.",
    ]
    text = "\n".join(lines) + "\n"
    write_report("long_inputs", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
