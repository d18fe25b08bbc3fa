"""`python -m gateway.run`: the gRPC server and Envoy together, in one foreground command (what `make run` starts).

Ctrl-C or SIGTERM drains the gRPC server first (Envoy still delivers the answers of in-flight REST calls), then
stops Envoy. If either process dies, the other is stopped and the command exits non-zero. Flags it does not know
are passed to `python -m service`; every flag, its and the server's, has an EMBED_* variable (service.config).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from gateway.envoy import GatewayPorts, envoy_command, validate, write_rendered
from service.access.bootstrap import bootstrap_admin_key, without_secrets
from service.access.control import OpenMode
from service.config import Settings, add_setting_flags, load_settings, resolve_settings
from service.observability.tracing import exporter_from
from service.stores import open_access_store

POLL_S = 0.2


@dataclass(frozen=True)
class EnvoySettings:
    """The settings of the Envoy a supervisor starts (gateway.run, gateway.cluster): flags `--<name>` and variables
    `EMBED_<NAME>`, resolved as the server's are (service.config)."""

    http_host: str = "127.0.0.1"
    http_port: int = 8080
    # Envoy's admin interface, on 127.0.0.1 only; 0 turns it off.
    admin_port: int = 9901
    envoy_concurrency: int = 1
    envoy_log_level: str = "warning"


ENVOY_HELP = {
    "http_host": "where REST and gRPC through Envoy listen",
    "http_port": "the port of REST and gRPC through Envoy",
    "admin_port": "Envoy admin on 127.0.0.1; 0 turns it off",
    "envoy_concurrency": "Envoy worker threads",
    "envoy_log_level": "Envoy's log level (trace, debug, info, warning, error, critical, off)",
}


def add_envoy_flags(parser: argparse.ArgumentParser) -> None:
    add_setting_flags(parser, EnvoySettings, ENVOY_HELP)


def envoy_settings(args: argparse.Namespace, program: str, environ: Mapping[str, str] | None = None) -> EnvoySettings:
    """The Envoy settings from `EMBED_*` and the flags, or exit 2 with one line (as the server does)."""
    try:
        return resolve_settings(EnvoySettings, args, dict(os.environ if environ is None else environ))
    except ValueError as exc:
        print(f"{program}: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="embedgate-gateway",
        description=__doc__.splitlines()[0],
        epilog="Every other flag goes to the server (embedgate-server --help lists them, each with its EMBED_* name).",
    )
    add_envoy_flags(parser)
    return parser.parse_known_args(argv)


def upstream_host(settings: Settings) -> str:
    """Where Envoy reaches a server bound to `settings.host` (a wildcard address is reached on loopback)."""
    return "127.0.0.1" if settings.host in ("0.0.0.0", "::", "[::]") else settings.host


def checked_config(
    ports: GatewayPorts,
    name: str,
    settings: Settings,
    rendered_dir: Path,
    upstreams: Sequence[tuple[str, int]] = (),
) -> Path | None:
    """envoy.yaml rendered into a private directory of this run (`rendered_dir`) as <name> and validated by Envoy
    itself; None (the reason printed) if invalid.

    The server's exporter (otlp_endpoint or OTEL_EXPORTER_OTLP_ENDPOINT) turns tracing on in Envoy too: one trace
    from the HTTP request to inference. Envoy exports in plaintext only: to a TLS collector only the server traces.
    """
    exporter = exporter_from(settings.otlp_endpoint, os.environ)
    envoy_endpoint = exporter.endpoint if exporter is not None and exporter.insecure else ""
    config = write_rendered(ports, rendered_dir / name, envoy_endpoint, upstreams=upstreams)
    checked = validate(config)
    if checked.returncode != 0:
        print(f"invalid Envoy configuration:\n{checked.stdout}{checked.stderr}", file=sys.stderr)
        return None
    return config


def start_envoy(config: Path, args: EnvoySettings) -> subprocess.Popen:
    # Own sessions: a terminal's Ctrl-C reaches only the supervisor, which stops its children in order.
    return subprocess.Popen(
        envoy_command(config, args.envoy_concurrency, args.envoy_log_level),
        start_new_session=True,
        env=without_secrets(os.environ),
    )


def bootstrap_or_exit(settings: Settings, program: str) -> None:
    """The first admin key from EMBED_ADMIN_KEY / EMBED_ADMIN_KEY_FILE, stored before the open-mode check (a keyed
    store may listen on a public address); exit 2 with one line if it cannot be. Its children never see the key."""
    try:
        outcome = bootstrap_admin_key(settings, os.environ)
    except (ValueError, OSError) as exc:
        print(f"{program}: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if outcome is not None:
        print(f"{program}: {outcome.message}", file=sys.stderr)


class StopSignals:
    """SIGINT and SIGTERM set `requested` instead of interrupting: the supervisor's loop stops its children."""

    def __init__(self) -> None:
        self.requested = False
        signal.signal(signal.SIGINT, self._request)
        signal.signal(signal.SIGTERM, self._request)

    def _request(self, signum: int, frame: object) -> None:
        self.requested = True


def open_refusal(http_host: str, settings: Settings) -> str | None:
    """Why the server would refuse to start, checked before anything starts: the server's own rule (OpenMode) with
    Envoy's address among its listeners, or a store it cannot open (one line, as `python -m service` says it)."""
    mode = OpenMode((http_host, settings.host, *settings.gateway_hosts), settings.allow_open)
    try:
        store = open_access_store(settings)
    except (ValueError, OSError) as exc:
        return f"configuration error: {exc}"
    try:
        return mode.refusal(store.snapshot())
    finally:
        store.close()


def server_command(server_args: Sequence[str], settings: Settings, http_host: str) -> list[str]:
    """`python -m service` with these flags, told where Envoy listens (its open-mode rule counts that address)."""
    gateway_hosts = ",".join((*settings.gateway_hosts, http_host))
    return [sys.executable, "-m", "service", *server_args, "--gateway-hosts", gateway_hosts]


def settings_or_exit(server_args: list[str], program: str) -> Settings:
    """The server's settings, or exit 2 with one line (as `python -m service` does)."""
    try:
        return load_settings(server_args)
    except (ValueError, OSError) as exc:
        print(f"{program}: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


@dataclass(frozen=True)
class Configured:
    """What a supervisor starts from: its own flags, Envoy's settings, the server's settings and flags."""

    flags: argparse.Namespace
    envoy: EnvoySettings
    settings: Settings
    server_args: list[str]


def configure(parsed: tuple[argparse.Namespace, list[str]], program: str) -> Configured:
    """The settings of Envoy and of the server from the parsed command line, or exit 2 with one line."""
    flags, server_args = parsed
    return Configured(flags, envoy_settings(flags, program), settings_or_exit(server_args, program), server_args)


def may_start(configured: Configured, program: str) -> bool:
    """Store the first admin key, then check that the server would start with Envoy's listener; False (after one
    line on stderr) when it would refuse."""
    bootstrap_or_exit(configured.settings, program)
    refusal = open_refusal(configured.envoy.http_host, configured.settings)
    if refusal is not None:
        print(f"{program}: {refusal}", file=sys.stderr)
        return False
    return True


def reap(proc: subprocess.Popen, timeout: float) -> int:
    """Wait for a process already told to stop (a second SIGTERM could cut its shutdown short); kill it if late."""
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def _stop(proc: subprocess.Popen, timeout: float) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    return reap(proc, timeout)


@contextlib.contextmanager
def rendered_config_dir() -> Iterator[Path]:
    """A private directory for this run's rendered Envoy configuration (the installed package is read-only)."""
    with tempfile.TemporaryDirectory(prefix="embedgate-") as directory:
        yield Path(directory)


def main(argv: list[str] | None = None) -> int:
    with rendered_config_dir() as rendered_dir:
        return supervise(argv, rendered_dir)


def supervise(argv: list[str] | None, rendered_dir: Path) -> int:
    configured = configure(parse(argv), "gateway")
    args, settings, server_args = configured.envoy, configured.settings, configured.server_args
    if not may_start(configured, "gateway"):
        return 2
    ports = GatewayPorts(args.http_port, settings.port, args.admin_port, args.http_host, upstream_host(settings))
    config = checked_config(ports, f"envoy-{args.http_port}.yaml", settings, rendered_dir)
    if config is None:
        return 2
    stop = StopSignals()
    server = subprocess.Popen(
        server_command(server_args, settings, args.http_host), start_new_session=True, env=without_secrets(os.environ)
    )
    envoy = start_envoy(config, args)
    print(f"gateway: REST on http://{args.http_host}:{args.http_port}/v1 -> gRPC {settings.address}", file=sys.stderr)
    while not stop.requested and server.poll() is None and envoy.poll() is None:
        time.sleep(POLL_S)

    if stop.requested:
        server_code = _stop(server, settings.shutdown_grace_s + 10)
        _stop(envoy, 10)
        return 0 if server_code == 0 else server_code or 1
    dead, other = ("server", "envoy") if server.poll() is not None else ("envoy", "server")
    code = (server if dead == "server" else envoy).returncode
    print(f"gateway: {dead} exited with {code}; stopping {other}", file=sys.stderr)
    _stop(envoy, 10)
    _stop(server, settings.shutdown_grace_s + 10)
    return code or 1


if __name__ == "__main__":
    sys.exit(main())
