"""Server settings: defaults, overridden by a TOML config file, then `EMBED_*` environment variables, then flags."""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import tomllib
from dataclasses import dataclass, fields
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

from service.engine.prices import parse_price

ENV_PREFIX = "EMBED_"
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off", "")
T = TypeVar("T")


@dataclass(frozen=True)
class Settings:
    """Every knob of the server. Field names double as config-file keys, env vars (EMBED_<NAME>) and flags."""

    host: str = "127.0.0.1"
    port: int = 50051
    # Let several server processes listen on one port (SO_REUSEPORT; the kernel spreads connections over them), each
    # with its own engine. Off: a second server on a port in use fails to start instead of sharing it by accident.
    reuse_port: bool = False
    model_repo: str = "models"
    # Model ids to load; empty loads every model in the repository.
    models: tuple[str, ...] = ()
    # Extra aliases, "alias=model-id" (e.g. "text-embedding-3-small=all-minilm-l6-v2").
    aliases: tuple[str, ...] = ()
    max_inputs_per_request: int = 2048
    # Inputs over a model's limit are cut to it (as sentence-transformers does) unless a call says truncate=false;
    # a model's manifest may override it. False: they are refused with context_length_exceeded.
    auto_truncate: bool = True
    # Padded tokens (longest input x inputs) in one inference batch, and inputs in one batch.
    max_batch_tokens: int = 2048
    max_batch_size: int = 128
    # Padded tokens / real tokens at which a batch is cut (inputs of similar length share a batch).
    max_padding_ratio: float = 1.05
    # Padded tokens any batch may waste beyond that ratio (about one batch's fixed cost: small batches coalesce).
    padding_slack_tokens: int = 0
    # Batches run at once; 0: one per core on the CPU, 1 on a GPU.
    inference_workers: int = 0
    # Inputs waiting for inference across all requests of a model; beyond it calls fail fast.
    max_queued_inputs: int = 32768
    # ONNX Runtime threads per batch; 0: cores / inference_workers (ONNX Runtime's own choice for one worker).
    intra_op_threads: int = 0
    inter_op_threads: int = 1
    # "auto" (TensorRT/CUDA when usable, else CPU) or a comma-separated list of execution providers.
    providers: str = "auto"
    # Execution provider options, "Provider:key=value" (e.g. "CUDAExecutionProvider:device_id=1").
    provider_options: tuple[str, ...] = ()
    tokenizer_threads: int = 2
    # Serve lone small batches (one short text on an idle server) from a model's offline-fused solo graph where it
    # has one: faster for them, its vectors equal to the plain graph's to float rounding (cosine 1.000000), not bit
    # for bit. false: every batch from the plain graph.
    solo_graph: bool = True
    max_message_bytes: int = 256 * 1024 * 1024
    # Async jobs: where the job store (SQLite) lives, and how jobs are cut and kept.
    data_dir: str = "data"
    max_inputs_per_job: int = 1_000_000
    job_chunk_size: int = 256
    job_lease_s: int = 60
    # Share of inference time async jobs keep while interactive calls also wait (they come first otherwise).
    job_min_share: float = 0.2
    results_retention_s: int = 7 * 24 * 3600
    results_expiry_sweep_s: float = 60.0
    # The Batch API (OpenAI's limits by default): bytes of an uploaded file, requests (lines) of a batch, and
    # embedding inputs across a batch's requests.
    batch_max_file_bytes: int = 200 * 1024 * 1024
    batch_max_requests: int = 50_000
    batch_max_inputs: int = 50_000
    # Webhook retry schedule (durations with unit s, m or h), per-attempt timeout, and whether endpoints may be
    # private or loopback addresses (off: a public service must not be turned against its own network).
    webhook_retry_schedule: str = "5s,30s,2m,10m,30m,2h,5h"
    webhook_timeout_s: float = 10.0
    webhook_allow_private: bool = False
    # Webhook endpoints one tenant may have at once (0: no cap).
    max_webhooks_per_tenant: int = 100
    # Access control (service/access): with no active API key the server runs open, but only on a loopback address
    # unless allow_open. Rate limits per minute, 0 = unlimited: per key (a key may override them) and per tenant (a
    # tenant may override them); async jobs leave job_rate_limit_reserve of every token bucket to interactive calls.
    allow_open: bool = False
    # Where a gateway in front of this server listens (Envoy's REST and gRPC address; gateway.run and gateway.cluster
    # pass it): open mode needs these on loopback too, since they reach the server without a key as well.
    gateway_hosts: tuple[str, ...] = ()
    rate_limit_rpm: int = 3000
    rate_limit_tpm: int = 1_000_000
    tenant_rate_limit_rpm: int = 0
    tenant_rate_limit_tpm: int = 0
    job_rate_limit_reserve: float = 0.5
    # Per-user limits (OpenAI's `user` names an end user inside a key): the default requests and tokens per minute
    # of each (key, user) pair, 0 = none; a tenant or a key may set its own. Calls without `user` are not limited
    # per user. usage_by_user: record the user in usage for every key (else only for keys with per-user limits).
    user_rate_limit_rpm: int = 0
    user_rate_limit_tpm: int = 0
    usage_by_user: bool = False
    # Prices for charge-back: "model-id=price" per million tokens (overriding the manifest's
    # price_per_million_tokens), in `currency`.
    model_prices: tuple[str, ...] = ()
    currency: str = "USD"
    # The embedding cache (service/engine/cache.py): vectors of inputs already embedded, bounded in bytes in this
    # process (LRU; 0 turns the cache off, and with it the merging of identical inputs within a call, unless
    # cache_shared: then Redis alone serves). cache_scope "tenant" keeps each tenant's entries apart (a fast answer
    # never tells one tenant what another embedded); "global" shares them. cache_shared adds a tier in Redis at
    # cache_redis_url (empty: redis_url, the rate limiter's) shared by replicas, entries expiring after cache_ttl_s,
    # each read waiting at most cache_redis_timeout_s.
    cache_bytes: int = 256 * 1024 * 1024
    cache_scope: str = "tenant"
    cache_shared: bool = False
    cache_redis_url: str = ""
    cache_ttl_s: int = 24 * 3600
    cache_redis_prefix: str = "embeddings:vc:"
    cache_redis_timeout_s: float = 0.05
    # Shared mode, for several replicas (service/stores): empty keeps jobs, keys and usage in SQLite under data_dir;
    # a postgresql:// URL keeps them in that database, and rate limits in Redis at redis_url (empty: per replica).
    # rate_limit_redis_failure: "open" (allow, with a warning) or "closed" (refuse, 429) while Redis is unreachable.
    store_url: str = ""
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_key_prefix: str = "embeddings:rl:"
    rate_limit_redis_failure: str = "open"
    # How long one call may wait for Redis before rate_limit_redis_failure applies (it never delays other calls).
    rate_limit_redis_timeout_s: float = 0.25
    # Seconds in-flight calls get to finish on SIGTERM/SIGINT.
    shutdown_grace_s: float = 30.0
    log_level: str = "INFO"
    # "text" or "json" (one JSON object per line); every line of a call carries its request id.
    log_format: str = "text"
    # OTLP/gRPC collector (e.g. http://127.0.0.1:4317) for OpenTelemetry traces; empty: tracing off.
    otlp_endpoint: str = ""
    # The asyncio event loop: "auto" (uvloop where installed, else asyncio's), "uvloop" or "asyncio".
    event_loop: str = "auto"

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else self.host
        return f"{host}:{self.port}"

    def alias_map(self) -> dict[str, str]:
        """Parse `aliases` into {alias: model id}."""
        result: dict[str, str] = {}
        for entry in self.aliases:
            alias, sep, target = entry.partition("=")
            if not sep or not alias.strip() or not target.strip():
                raise ValueError(f"alias {entry!r} must look like 'alias=model-id'")
            result[alias.strip()] = target.strip()
        return result

    def price_map(self) -> dict[str, Decimal]:
        """Parse `model_prices` into {model id: price per million tokens}."""
        result: dict[str, Decimal] = {}
        for entry in self.model_prices:
            model, sep, price = entry.partition("=")
            if not sep or not model.strip():
                raise ValueError(f"model price {entry!r} must look like 'model-id=price'")
            try:
                result[model.strip()] = parse_price(price)
            except ValueError as exc:
                raise ValueError(f"model price {entry!r}: {exc}") from None
        return result

    def provider_option_map(self) -> dict[str, dict[str, str]]:
        """Parse `provider_options` into {provider: {key: value}}."""
        result: dict[str, dict[str, str]] = {}
        for entry in self.provider_options:
            provider, _, option = entry.partition(":")
            key, sep, value = option.partition("=")
            if not sep or not provider.strip() or not key.strip():
                raise ValueError(f"provider option {entry!r} must look like 'Provider:key=value'")
            result.setdefault(provider.strip(), {})[key.strip()] = value.strip()
        return result


def _coerce(field: dataclasses.Field, value: Any) -> Any:
    """Turn a config-file, env or flag value into the field's type."""
    kind = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", str(field.type))
    if kind.startswith("tuple"):
        if isinstance(value, str):
            return tuple(v.strip() for v in value.split(",") if v.strip())
        return tuple(str(v) for v in value)
    if kind == "int":
        return int(value)
    if kind == "float":
        number = float(value)
        if math.isnan(number):  # NaN passes every range check (comparisons are false) and breaks timers later
            raise ValueError(f"{field.name} must be a number, got {value!r}")
        return number
    if kind == "bool":
        return value if isinstance(value, bool) else _flag(field.name, value)
    return str(value)


def _flag(name: str, value: Any) -> bool:
    """A boolean setting's text: a typo (`--cache-shared ture`) is an error, not a silent false."""
    text = str(value).strip().lower()
    if text in TRUE_WORDS:
        return True
    if text in FALSE_WORDS:
        return False
    raise ValueError(f"{name} must be true or false, got {value!r}")


def _from_mapping(values: dict[str, Any], source: str, kind: type = Settings) -> dict[str, Any]:
    known = {f.name: f for f in fields(kind)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"{source}: unknown setting(s) {unknown}")
    return {name: _coerce(known[name], value) for name, value in values.items()}


def _from_env(environ: dict[str, str], kind: type = Settings) -> dict[str, Any]:
    values = {}
    for f in fields(kind):
        key = ENV_PREFIX + f.name.upper()
        if key in environ:
            values[f.name] = environ[key]
    return _from_mapping(values, "environment", kind)


def add_setting_flags(parser: argparse.ArgumentParser, kind: type, helps: dict[str, str] | None = None) -> None:
    """One flag `--<name>` per field of the settings dataclass `kind`, each saying its default and its variable."""
    for f in fields(kind):
        note = f"default: {f.default!r} (env {ENV_PREFIX}{f.name.upper()})"
        text = f"{helps[f.name]}; {note}" if helps and f.name in helps else note
        parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=None, help=text)


def resolve_settings(kind: type, args: argparse.Namespace, environ: dict[str, str], base: dict[str, Any] | None = None):
    """An instance of the settings dataclass `kind`: `base` (defaults, a config file) < `EMBED_*` < flags."""
    values = dict(base or {})
    values.update(_from_env(environ, kind))
    flags = {f.name: getattr(args, f.name) for f in fields(kind) if getattr(args, f.name, None) is not None}
    values.update(_from_mapping(flags, "command line", kind))
    return kind(**values)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m service", description="Embeddings gRPC server on ONNX Runtime.")
    parser.add_argument("--config", help="TOML file of settings (also EMBED_CONFIG)")
    add_setting_flags(parser, Settings)
    return parser


def load_settings(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> Settings:
    """Resolve settings from defaults < config file < environment < command-line flags."""
    environ = dict(os.environ if environ is None else environ)
    args = build_parser().parse_args(argv)
    values: dict[str, Any] = {}
    config_path = args.config or environ.get(ENV_PREFIX + "CONFIG")
    if config_path:
        with Path(config_path).open("rb") as fh:
            values.update(_from_mapping(tomllib.load(fh), config_path))
    return resolve_settings(Settings, args, environ, values)


# The metadata key naming the setting a component's field takes, when it is not the field's own name.
SETTING = "setting"


def setting(name: str, default: Any = dataclasses.MISSING) -> Any:
    """A field of a component's dataclass (jobs, batches, access limits) that takes the setting `name` of `Settings`
    rather than the one of its own name. Its default, where the component is built without settings, is the
    setting's unless `default` says otherwise; a name `Settings` lacks fails at import."""
    defaults = {f.name: f.default for f in fields(Settings)}
    if name not in defaults:
        raise AttributeError(f"Settings has no setting {name!r}")
    return dataclasses.field(
        default=defaults[name] if default is dataclasses.MISSING else default, metadata={SETTING: name}
    )


def setting_of(field: dataclasses.Field) -> str:
    """The setting a component's field takes: the one its `setting()` names, else the one of its own name."""
    return field.metadata.get(SETTING, field.name)


def from_settings(kind: type[T], settings: Settings, /, **given: Any) -> T:
    """An instance of the dataclass `kind`: every field the setting it takes (`setting_of`), where `Settings` has one
    and it is not `given` (values the server parses or composes); the others keep their defaults. So a setting is
    declared once, in `Settings`, and a component takes it by naming a field after it."""
    known = {f.name for f in fields(settings)}
    taken = {f.name: setting_of(f) for f in fields(kind) if f.name not in given}  # type: ignore[arg-type]
    return kind(**given, **{field: getattr(settings, name) for field, name in taken.items() if name in known})
