"""`python -m gateway.cluster`: a local cluster, N gRPC replicas on shared stores behind one Envoy (`make cluster`).

    python -m gateway.cluster --replicas 2 --store-url postgresql://root@127.0.0.1/test

Replica i listens on 127.0.0.1:<grpc-port-base + i>; Envoy serves REST and gRPC on --http-port and balances over
them (gateway.envoy.add_replicas: least request, gRPC health checks, outlier detection, retries). All replicas share
the store named by store_url (required: PostgreSQL) and the Redis rate limits at redis_url. A replica that dies is
reported and not restarted (Envoy routes around it; its job chunks are claimed again by the others when their lease
expires); the command exits when Envoy dies or no replica is left. Ctrl-C or SIGTERM drains the replicas, then stops
Envoy. Flags it does not know are passed to every `python -m service` (and EMBED_* variables apply as usual).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from gateway.envoy import GatewayPorts
from gateway.run import (
    POLL_S,
    StopSignals,
    _stop,
    add_envoy_flags,
    checked_config,
    configure,
    may_start,
    reap,
    rendered_config_dir,
    server_command,
    start_envoy,
    upstream_host,
)
from service.access.bootstrap import without_secrets
from service.stores import shared


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="python -m gateway.cluster", description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, default=2, help="gRPC server processes (default 2)")
    parser.add_argument("--grpc-port-base", type=int, default=50060, help="replica i listens on base + i")
    add_envoy_flags(parser)
    return parser.parse_known_args(argv)


def main(argv: list[str] | None = None) -> int:
    with rendered_config_dir() as rendered_dir:
        return supervise(argv, rendered_dir)


def supervise(argv: list[str] | None, rendered_dir: Path) -> int:
    configured = configure(parse(argv), "cluster")
    args, proxy, settings, server_args = configured.flags, configured.envoy, configured.settings, configured.server_args
    if args.replicas < 1:
        print("cluster: --replicas must be at least 1", file=sys.stderr)
        return 2
    try:
        if not shared(settings):
            print("cluster: replicas need shared stores: pass --store-url postgresql://...", file=sys.stderr)
            return 2
    except ValueError as exc:
        print(f"cluster: {exc}", file=sys.stderr)
        return 2
    if not may_start(configured, "cluster"):
        return 2
    ports = [args.grpc_port_base + i for i in range(1, args.replicas + 1)]
    host = upstream_host(settings)
    gateway = GatewayPorts(proxy.http_port, ports[0], proxy.admin_port, proxy.http_host, host)
    upstreams = [(host, port) for port in ports]
    config = checked_config(gateway, f"envoy-cluster-{proxy.http_port}.yaml", settings, rendered_dir, upstreams)
    if config is None:
        return 2
    stop = StopSignals()
    # The last --port wins: each replica gets its own.
    replicas = [
        subprocess.Popen(
            [*server_command(server_args, settings, proxy.http_host), "--port", str(port)],
            start_new_session=True,
            env=without_secrets(os.environ),
        )
        for port in ports
    ]
    envoy = start_envoy(config, proxy)
    print(
        f"cluster: REST on http://{proxy.http_host}:{proxy.http_port}/v1 -> {args.replicas} replicas on gRPC ports "
        f"{', '.join(map(str, ports))}",
        file=sys.stderr,
    )
    reported: set[int] = set()
    while not stop.requested and envoy.poll() is None:
        for port, replica in zip(ports, replicas, strict=True):
            if replica.poll() is not None and port not in reported:
                reported.add(port)
                print(f"cluster: replica on port {port} exited with {replica.returncode}", file=sys.stderr)
        if len(reported) == len(replicas):
            break
        time.sleep(POLL_S)

    for replica in replicas:  # SIGTERM to all first: they drain in parallel
        if replica.poll() is None:
            replica.send_signal(signal.SIGTERM)
    codes = [reap(replica, settings.shutdown_grace_s + 10) for replica in replicas]
    _stop(envoy, 10)
    if stop.requested:
        if any(codes):
            print(f"cluster: replicas exited with {codes}", file=sys.stderr)
        return 0 if not any(codes) else 1
    print("cluster: " + ("envoy exited" if envoy.poll() is not None else "no replica left"), file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
