"""Where the server is and how to reach it: URLs, TLS material, and the shipped gRPC channel configuration.

`grpc_config.json` (in this package) holds a standard gRPC service config (a retry policy on UNAVAILABLE for the
idempotent methods, retry throttling) and the channel arguments that go with it (keepalive every 30 s, 256 MiB
messages, the server's own limit). Other languages can load the same file: `serviceConfig` is what
`grpc.WithDefaultServiceConfig` (Go) or `defaultServiceConfig` (Java) take.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from urllib.parse import urlsplit

import grpc

GRPC_SCHEMES = ("grpc", "grpcs")
REST_SCHEMES = ("http", "https")
DEFAULT_PORTS = {"grpc": 50051, "grpcs": 443, "http": 80, "https": 443}
USER_AGENT = "embeddings-client/0.1"

PemSource = bytes | str | Path


@dataclass(frozen=True)
class Target:
    """A parsed server URL. `grpc://` and bare `host:port` are plaintext gRPC; `grpcs://` gRPC over TLS;
    `http(s)://` the REST gateway (its OpenAI-compatible routes)."""

    scheme: str
    host: str
    port: int
    path: str = ""

    @property
    def tls(self) -> bool:
        return self.scheme in ("grpcs", "https")

    @property
    def is_rest(self) -> bool:
        return self.scheme in REST_SCHEMES

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.authority}{self.path}"


def parse_target(url: str, tls: bool | None = None) -> Target:
    """`grpc://host:port`, `grpcs://host[:port]`, `http(s)://host[:port][/prefix]`, or `host:port` (gRPC).

    `tls=True` turns a bare or `grpc://` address into TLS; `tls=False` refuses a TLS scheme (a contradiction)."""
    text = url.strip()
    if "://" not in text:
        text = f"grpc://{text}"
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in (*GRPC_SCHEMES, *REST_SCHEMES):
        raise ValueError(f"unsupported URL scheme {parts.scheme!r} in {url!r}: use grpc(s):// or http(s)://")
    if not parts.hostname:
        raise ValueError(f"no host in {url!r}")
    if tls and scheme in ("grpc", "http"):
        scheme += "s"
    elif tls is False and scheme in ("grpcs", "https"):
        raise ValueError(f"{url!r} is a TLS URL but TLS was turned off")
    try:
        port = parts.port or DEFAULT_PORTS[scheme]
    except ValueError as exc:
        raise ValueError(f"bad port in {url!r}") from exc
    path = parts.path.rstrip("/") if scheme in REST_SCHEMES else ""
    if scheme in GRPC_SCHEMES and parts.path not in ("", "/"):
        raise ValueError(f"a gRPC URL has no path: {url!r}")
    return Target(scheme, parts.hostname, port, path)


def read_pem(source: PemSource | None) -> bytes | None:
    """PEM bytes as given, PEM text, or the contents of a file path."""
    if source is None or isinstance(source, bytes):
        return source
    if isinstance(source, str) and source.lstrip().startswith("-----BEGIN"):
        return source.encode()
    return Path(source).read_bytes()


@dataclass(frozen=True)
class TlsFiles:
    """TLS material: the CA to trust (None: the system's roots) and an optional client certificate (mutual TLS)."""

    root_certificates: bytes | None = None
    certificate_chain: bytes | None = None
    private_key: bytes | None = None
    server_name: str | None = None  # check the server's certificate for this name instead of the URL's host

    @classmethod
    def load(
        cls,
        root_certificates: PemSource | None = None,
        client_certificate: PemSource | None = None,
        client_key: PemSource | None = None,
        server_name: str | None = None,
    ) -> TlsFiles:
        if (client_certificate is None) != (client_key is None):
            raise ValueError("a client certificate needs its key, and a key its certificate")
        return cls(read_pem(root_certificates), read_pem(client_certificate), read_pem(client_key), server_name)

    def grpc_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(self.root_certificates, self.private_key, self.certificate_chain)


@cache
def shipped_config() -> dict:
    """The package's grpc_config.json: {"serviceConfig": {...}, "channelArgs": {...}}."""
    return json.loads(resources.files(__package__).joinpath("grpc_config.json").read_text(encoding="utf-8"))


def channel_options(tls: TlsFiles | None, extra: Mapping[str, object] | Sequence[tuple[str, object]] = ()) -> list:
    """gRPC channel options: the shipped service config and channel arguments, then `extra` (wins)."""
    config = shipped_config()
    options: dict[str, object] = {
        "grpc.service_config": json.dumps(config["serviceConfig"]),
        "grpc.primary_user_agent": USER_AGENT,
        **config["channelArgs"],
    }
    if tls is not None and tls.server_name:
        options["grpc.ssl_target_name_override"] = tls.server_name
    options.update(dict(extra.items()) if isinstance(extra, Mapping) else dict(extra))
    return list(options.items())


def grpc_channel(target: Target, tls: TlsFiles | None, extra=(), asynchronous: bool = False):
    """A sync (`grpc.Channel`) or asyncio (`grpc.aio.Channel`) channel to a gRPC target."""
    if target.is_rest:
        raise ValueError(f"{target.base_url} is a REST URL: the gRPC client needs grpc:// or grpcs://")
    options = channel_options(tls if target.tls else None, extra)
    module = grpc.aio if asynchronous else grpc
    if target.tls:
        return module.secure_channel(target.authority, (tls or TlsFiles()).grpc_credentials(), options=options)
    return module.insecure_channel(target.authority, options=options)


def auth_metadata(api_key: str | None) -> tuple[tuple[str, str], ...]:
    """The API key as `authorization: Bearer` metadata (what the server and every OpenAI SDK use)."""
    return (("authorization", f"Bearer {api_key}"),) if api_key else ()
