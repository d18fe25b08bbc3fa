"""The embed use case, one for every way in: gRPC Embed, the REST routes, async jobs and batches.

resolve the model -> authorize (a model the caller's key may not use does not exist for it: 404
`model_not_found`) -> charge (the call's request and tokens together, once the tokens are counted and before
inference; a job chunk's tokens from the room above the interactive reserve) -> embed -> meter (usage, once the
result is the caller's, under its end user when its key records users, at the model's price). The caller is passed
in (`Principal`, set per call by the access interceptor, `as_user` the call's `user`; a job's tenant, key and
user), never looked up out of sight, and usage is recorded here only.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from service import errors
from service.access.control import AccessControl, Principal
from service.engine.model import EmbedOptions, EmbedResult, ServedModel
from service.engine.registry import ModelRegistry
from service.observability.context import note_result
from service.pricing import PriceList


class Embedder:
    """The models as callers see them, and embedding on their behalf. `access` None: no limits, no metering."""

    def __init__(
        self,
        registry: ModelRegistry,
        access: AccessControl | None,
        prices: PriceList | None = None,
        cache_per_tenant: bool = True,
    ) -> None:
        """`cache_per_tenant`: each tenant reads and writes only its own embedding cache entries."""
        self.registry = registry
        self._access = access
        self.prices = prices or PriceList()
        self._cache_per_tenant = cache_per_tenant

    def _cache_scope(self, tenant: str) -> str:
        return f"tenant:{tenant}" if self._cache_per_tenant else "global"

    # --- resolve and authorize

    def resolve(self, caller: Principal, name: str) -> ServedModel:
        """The model `name` (id or alias) names, if the caller may use it; else 404 `model_not_found` (OpenAI's
        "does not exist or you do not have access to it")."""
        model = self.registry.resolve(name)
        if not self._allowed(caller, model):
            raise errors.model_not_found(name)
        return model

    def models(self, caller: Principal) -> list[ServedModel]:
        """The served models the caller may use."""
        return [model for model in self.registry.models() if self._allowed(caller, model)]

    def _allowed(self, caller: Principal, model: ServedModel) -> bool:
        return caller.may_use([model.id, *self.registry.aliases_of(model)])

    # --- charge, embed, meter

    async def embed(
        self,
        caller: Principal,
        model: ServedModel,
        texts: Sequence[str],
        options: EmbedOptions,
        deadline: float | None = None,
    ) -> EmbedResult:
        """An interactive call: its one request and its tokens charged together (all or nothing: a call refused on
        tokens takes no request either), then recorded as the caller's usage."""
        access = self._access

        async def admit(tokens: int) -> None:
            if access is not None:
                await access.charge(caller, requests=1, tokens=tokens)

        scope = self._cache_scope(caller.tenant)
        result = await model.embed(texts, options, deadline, admit=admit, cache_scope=scope)
        note_result(result, caller.tenant)
        if access is not None:
            access.meter.record(
                caller.tenant,
                caller.key_id,
                result.model,
                requests=1,
                tokens=result.prompt_tokens,
                user=caller.usage_user,
                price=self.prices.text_of(model),
            )
        return result

    def job_accepted(self, caller: Principal, model_id: str) -> None:
        """An async job was accepted: one job request of the caller, under its model (its request was charged
        before the call was read, its tokens are charged and recorded chunk by chunk)."""
        if self._access is not None:
            price = self.prices.text_of(self.registry.resolve(model_id))
            self._access.meter.record(
                caller.tenant, caller.key_id, model_id, job_requests=1, user=caller.usage_user, price=price
            )

    async def embed_chunk(
        self,
        tenant: str,
        key_id: str | None,
        model_name: str,
        texts: Sequence[str],
        options: EmbedOptions,
        keep: Callable[[EmbedResult], Awaitable[None]],
        user: str = "",
    ) -> EmbedResult:
        """A job chunk, in the engine's background lane: its tokens charged to the submitting key's, tenant's (and
        its end user's) limits above the interactive reserve (waiting for room), then `keep` stores the vectors,
        and only then are the tokens recorded (a chunk whose vectors were not kept runs again and is recorded
        then). The job was authorized when it was accepted."""
        access = self._access

        async def admit(tokens: int) -> None:
            if access is not None:
                await access.admit_job_tokens(tenant, key_id, tokens, user)

        model = self.registry.resolve(model_name)
        scope = self._cache_scope(tenant)
        result = await model.embed(texts, options, background=True, admit=admit, cache_scope=scope)
        await keep(result)
        if access is not None:
            recorded = access.job_principal(tenant, key_id, user).usage_user
            price = self.prices.text_of(model)
            access.meter.record(
                tenant, key_id, result.model, job_tokens=result.prompt_tokens, user=recorded, price=price
            )
        return result
