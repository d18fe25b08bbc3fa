"""The current call's principal (a contextvar set by the interceptor) and the model registry seen through it.

Servicers get a `ScopedRegistry` instead of the registry: a model the caller's key may not use does not exist for
it (404 `model_not_found`, OpenAI's "does not exist or you do not have access to it"), model lists show only the
key's models, and embedding through a resolved model charges the call's request and tokens to its rate limits
together (all or nothing) after tokenization and before inference, and meters them when the call succeeds.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from service import errors
from service.access.control import DEFAULT_TENANT, AccessControl, Principal

_CALL: ContextVar[Call | None] = ContextVar("embeddings_access_call", default=None)


@dataclass
class Call:
    """One authenticated RPC: who made it and what it used."""

    principal: Principal
    control: AccessControl
    method: str
    # (model id, tokens) of each successful embedding, for metering.
    embedded: list[tuple[str, int]] = field(default_factory=list)
    # The model the call named last (async job submissions are metered under it).
    model: str | None = None

    async def headers(self) -> dict[str, str]:
        return await self.control.headers(self.principal)


def current_call() -> Call | None:
    return _CALL.get()


def current_tenant() -> str:
    call = _CALL.get()
    return call.principal.tenant if call is not None else DEFAULT_TENANT


def current_key_id() -> str | None:
    call = _CALL.get()
    return call.principal.key_id if call is not None else None


def enter(call: Call):
    return _CALL.set(call)


def leave(token) -> None:
    _CALL.reset(token)


class MeteredModel:
    """A served model as one call sees it: `embed` charges tokens before inference and records them after."""

    def __init__(self, model: Any, call: Call) -> None:
        self._model = model
        self._call = call

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    @property
    def unwrapped(self) -> Any:
        return self._model

    async def _admit(self, tokens: int) -> None:
        """The call's one request and its tokens, charged together once the tokens are counted."""
        await self._call.control.charge(self._call.principal, requests=1, tokens=tokens)

    async def embed(self, texts: Sequence[str], options: Any, deadline: float | None = None, background: bool = False):
        result = await self._model.embed(texts, options, deadline, background=background, admit=self._admit)
        self._call.embedded.append((result.model, result.prompt_tokens))
        return result


def _unwrap(model: Any) -> Any:
    return model.unwrapped if isinstance(model, MeteredModel) else model


class ScopedRegistry:
    """The model registry, limited to what the current call's key may use (everything outside a call)."""

    def __init__(self, registry: Any) -> None:
        self._registry = registry

    def __getattr__(self, name: str) -> Any:
        return getattr(self._registry, name)

    def _allowed(self, principal: Principal, model: Any) -> bool:
        return principal.may_use([model.id, *self._registry.aliases_of(model)])

    def resolve(self, name: str) -> Any:
        model = self._registry.resolve(name)
        call = _CALL.get()
        if call is None:
            return model
        if not self._allowed(call.principal, model):
            raise errors.model_not_found(name)
        call.model = model.id
        return MeteredModel(model, call)

    def models(self) -> list[Any]:
        call = _CALL.get()
        models = self._registry.models()
        if call is None:
            return models
        return [m for m in models if self._allowed(call.principal, m)]

    def aliases_of(self, model: Any) -> list[str]:
        return self._registry.aliases_of(_unwrap(model))
