"""The per-call cost of the gateway's request checks: REST calls with and without them, ratios in the same run.

One gRPC server (API keys on) behind four Envoys that differ only in the filters in front of the transcoder:

- `before`: neither check (the gateway as it was);
- `headers`: the header checks (gateway/request_checks.lua: grpc-* and *-bin refused on REST calls), no ext_authz;
- `every call`: those and the pre-body authorization (ext_authz: the server checks the key from the headers before
  Envoy reads the body) on every request;
- `shipped`: envoy.yaml as shipped: ext_authz only where the body may be large (no declared length, or over
  64 KiB); smaller requests are refused by the server itself before it reads them.

Each is measured on the same workloads, in interleaved rounds (the order rotates), after waiting for a quiet
machine: one client sending one short text at a time (the single-text latency), 32 clients sending one sentence a
request (the tiny-request throughput), one client sending 2,048 sentences a request (a body over 64 KiB, which the
shipped gateway pre-authorizes), and one client reading GET /v1/models (no inference: the checks' share of a call is
largest there). Reports medians, ratios to `before`, and the server's and Envoy's CPU per call.

    python -m bench.preauth [--model-repo models] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx2 as httpx
import orjson
import yaml

from bench.common import ENGINE_ONLY, Meter, machine_facts
from bench.report import RESULTS, write_report
from gateway.envoy import GatewayPorts, envoy_command, render
from service.access.records import NewKey
from service.stores.sqlite import SqliteAccessStore
from tests.serving import ROOT, ServerProcess, free_port, stop_process
from tests.stsb import load_pairs

MODEL = "all-minilm-l6-v2"
# Waiting for a quiet machine, at most this long before each measurement (runs disturbed anyway are flagged).
QUIET_WAIT_S = 20.0
EXT_AUTHZ = "envoy.filters.http.ext_authz"
VARIANTS = ("before", "headers", "every call", "shipped")
# The filters each variant leaves out.
CHECK_FILTERS = {"before": (EXT_AUTHZ, "request_checks"), "headers": (EXT_AUTHZ,)}


def variant_config(variant: str, http_port: int, grpc_port: int) -> dict:
    """envoy.yaml rendered for the ports, without the filters `variant` leaves out (and their per-route settings)."""
    config = render(GatewayPorts(http_port, grpc_port, admin=0))
    dropped = CHECK_FILTERS.get(variant, ())
    manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    manager["http_filters"] = [f for f in manager["http_filters"] if f["name"] not in dropped]
    if variant == "every call":
        for http_filter in manager["http_filters"]:
            if http_filter["name"] == EXT_AUTHZ:
                http_filter["typed_config"].pop("filter_enabled_metadata")
    for route in manager["route_config"]["virtual_hosts"][0]["routes"]:
        per_filter = route.get("typed_per_filter_config", {})
        for name in dropped:
            per_filter.pop(name, None)
        if not per_filter:
            route.pop("typed_per_filter_config", None)
    return config


@dataclass
class Gateway:
    variant: str
    port: int
    pid: int


async def calls(
    client: httpx.AsyncClient, method: str, url: str, bodies: list[bytes | None], clients: int
) -> list[float]:
    """Latencies (ms) of every call, `clients` at a time; any answer but 200 stops the benchmark."""
    queue: asyncio.Queue[bytes | None] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    latencies: list[float] = []

    async def worker() -> None:
        while not queue.empty():
            body = queue.get_nowait()
            start = time.perf_counter()
            response = await client.request(method, url, content=body)
            latencies.append((time.perf_counter() - start) * 1000)
            if response.status_code != 200:
                raise RuntimeError(f"{method} {url}: {response.status_code} {response.text[:200]}")

    await asyncio.gather(*(worker() for _ in range(clients)))
    return latencies


def workloads(sentences: list[str]) -> dict[str, tuple[str, str, list[bytes | None], int]]:
    """name -> (method, path, bodies, concurrent clients)."""

    def body(text: str) -> bytes:
        return orjson.dumps({"model": MODEL, "input": text, "encoding_format": "base64"})

    return {
        "single text, 1 client": ("POST", "/v1/embeddings", [body(sentences[i]) for i in range(200)], 1),
        "1 sentence/request, 32 clients": ("POST", "/v1/embeddings", [body(s) for s in sentences[:640]], 32),
        "2,048 sentences/request (104 KiB), 1 client": (
            "POST",
            "/v1/embeddings",
            [orjson.dumps({"model": MODEL, "input": sentences[:2048], "encoding_format": "base64"})],
            1,
        ),
        "GET /v1/models, 1 client": ("GET", "/v1/models", [None] * 300, 1),
    }


async def measure(gateways: list[Gateway], server_pid: int, key: str, rounds: int) -> dict:
    sentences = load_pairs().sentences
    loads = workloads(sentences)
    results: dict[str, dict[str, list[dict]]] = {name: {g.variant: [] for g in gateways} for name in loads}
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=120) as client:
        for gateway in gateways:  # warm-up: connections, the server's first calls
            await calls(
                client, "POST", f"http://127.0.0.1:{gateway.port}/v1/embeddings", loads[next(iter(loads))][2][:20], 1
            )
        for round_number in range(rounds):
            order = gateways[round_number % len(gateways) :] + gateways[: round_number % len(gateways)]
            for name, (method, path, bodies, clients) in loads.items():
                for gateway in order:
                    meter = Meter([server_pid, gateway.pid], max_wait_s=QUIET_WAIT_S)
                    with meter.measure() as m:
                        latencies = await calls(
                            client, method, f"http://127.0.0.1:{gateway.port}{path}", bodies, clients
                        )
                    results[name][gateway.variant].append({**m, "latencies_ms": latencies, "calls": len(bodies)})
                    print(f"round {round_number + 1} {name} {gateway.variant}: {m['seconds']:.2f} s", file=sys.stderr)
    return results


def summarize(results: dict) -> dict:
    summary = {}
    for name, by_variant in results.items():
        summary[name] = {}
        for variant, runs in by_variant.items():
            latencies = [ms for run in runs for ms in run["latencies_ms"]]
            summary[name][variant] = {
                "calls_per_s": statistics.median(run["calls"] / run["seconds"] for run in runs),
                "p50_ms": statistics.median(latencies),
                "p90_ms": statistics.quantiles(latencies, n=10)[-1],
                "server_and_envoy_cpu_ms_per_call": statistics.median(
                    run["server_cpu_s"] * 1000 / run["calls"] for run in runs
                ),
                "disturbed_runs": sum(run["other_cpu_s"] > 0.1 * run["seconds"] for run in runs),
            }
    return summary


def report(summary: dict, facts: dict, rounds: int) -> str:
    lines = [
        "# Per-call cost of the gateway's request checks",
        "",
        "`python -m bench.preauth`: one server (API keys on) behind four Envoys, measured in the same run, "
        f"{rounds} interleaved rounds; medians. `before`: no checks; `headers`: the header checks (Lua); "
        "`every call`: those and the pre-body authorization (ext_authz to the server) on every request; `shipped`: "
        "ext_authz only where the body may be large (no declared length, or over 64 KiB), as envoy.yaml ships.",
        "",
        f"Machine: {facts['cpu']}, {facts['cores']} cores; grpcio {facts['grpcio']}; {facts['date']}.",
        "",
        "| workload | gateway | calls/s | p50 ms | p90 ms | server + Envoy CPU ms/call | calls/s vs before "
        "| p50 vs before |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, by_variant in summary.items():
        base = by_variant["before"]
        for variant, row in by_variant.items():
            disturbed = " (disturbed)" if row["disturbed_runs"] else ""
            lines.append(
                f"| {name} | {variant}{disturbed} | {row['calls_per_s']:.3g} | {row['p50_ms']:.2f} "
                f"| {row['p90_ms']:.2f} "
                f"| {row['server_and_envoy_cpu_ms_per_call']:.2f} | {row['calls_per_s'] / base['calls_per_s']:.2f}x "
                f"| {row['p50_ms'] / base['p50_ms']:.2f}x |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-repo", default="models")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        store = SqliteAccessStore.in_data_dir(data_dir)
        _, key = store.create_key(NewKey("bench", "bench", rpm=0, tpm=0), int(time.time()))
        store.close()
        envoys = []
        with ServerProcess(
            Path(args.model_repo).resolve(), *ENGINE_ONLY, "--data-dir", str(data_dir), "--models", MODEL
        ) as server:
            try:
                gateways = []
                for variant in VARIANTS:
                    port = free_port()
                    config = Path(tmp) / f"envoy-{variant}.yaml"
                    config.write_text(yaml.safe_dump(variant_config(variant, port, server.port), sort_keys=False))
                    proc = subprocess.Popen(envoy_command(config), cwd=ROOT)
                    envoys.append(proc)
                    gateways.append(Gateway(variant, port, proc.pid))
                wait_listening([g.port for g in gateways])
                results = asyncio.run(measure(gateways, server.proc.pid, key, args.rounds))
            finally:
                for proc in envoys:
                    stop_process(proc)
    summary = summarize(results)
    facts = machine_facts()
    text = report(summary, facts, args.rounds)
    write_report("preauth", text, {"facts": facts, "summary": summary}, out=args.out)
    return 0


def wait_listening(ports: list[int], timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    for port in ports:
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > end:
                    raise RuntimeError(f"envoy did not listen on {port}") from None
                time.sleep(0.1)


if __name__ == "__main__":
    sys.exit(main())
