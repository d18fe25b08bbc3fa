"""What the observability layer knows about the call being served, carried in a contextvar.

The gRPC interceptor opens a `CallInfo` per call; servicers add what only they know (the resolved model, the
engine's timings, the caller's tenant); log lines, metrics, timing headers and
spans read it. Outside a call (job workers, start-up) there is none and every helper is a no-op.
"""

from __future__ import annotations

import contextvars
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from service.access.records import DEFAULT_TENANT

if TYPE_CHECKING:
    from service.engine.model import EmbedResult, EmbedTimings


@dataclass(slots=True)
class CallInfo:
    rpc: str
    request_id: str
    started: float  # time.perf_counter()
    started_ns: int  # time.time_ns(), for spans
    model: str = ""
    tenant: str = DEFAULT_TENANT
    tokens: int = 0
    inputs: int = 0
    # Inputs cut to the model's limit.
    truncated: int = 0
    # Inputs served from the embedding cache, and inputs repeating another of the call (embedded once).
    cached: int = 0
    deduplicated: int = 0
    timings: EmbedTimings | None = None
    # When the engine answered (time.time_ns()): spans of tokenize/queue/inference are laid out backwards from it.
    engine_done_ns: int = 0
    # The call's OpenTelemetry span, when tracing is on.
    span: Any = None


_current: contextvars.ContextVar[CallInfo | None] = contextvars.ContextVar("embeddings_call", default=None)


def current_call() -> CallInfo | None:
    return _current.get()


def open_call(info: CallInfo) -> contextvars.Token:
    return _current.set(info)


def close_call(token: contextvars.Token) -> None:
    _current.reset(token)


def note_model(model_id: str) -> None:
    """The call's model, once resolved (so errors after that point are counted against it)."""
    info = _current.get()
    if info is not None:
        info.model = model_id


def note_result(result: EmbedResult, tenant: str) -> None:
    """What the engine did for this call of `tenant`'s: model, tokens and timings, for metrics, headers and spans."""
    info = _current.get()
    if info is not None:
        info.model = result.model
        info.tenant = tenant
        info.tokens = result.prompt_tokens
        info.inputs = len(result.token_counts)
        info.truncated = result.truncated_inputs
        info.cached = result.cached_inputs
        info.deduplicated = result.deduplicated_inputs
        info.timings = result.timings
        info.engine_done_ns = time.time_ns()


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def timing_headers(info: CallInfo | None = None) -> tuple[tuple[str, str], ...]:
    """TEI-style timing headers (milliseconds), the tokens computed and the inputs cut to the model's limit, for the
    call's initial (REST) or trailing (gRPC) metadata."""
    info = info or _current.get()
    if info is None or info.timings is None:
        return ()
    timings = info.timings
    return (
        ("x-total-time", _ms(time.perf_counter() - info.started)),
        ("x-tokenization-time", _ms(timings.tokenize_s)),
        ("x-queue-time", _ms(timings.queue_s)),
        ("x-inference-time", _ms(timings.inference_s)),
        ("x-compute-tokens", str(info.tokens)),
        ("x-truncated-inputs", str(info.truncated)),
        ("x-cached-inputs", str(info.cached)),
        ("x-deduplicated-inputs", str(info.deduplicated)),
    )
