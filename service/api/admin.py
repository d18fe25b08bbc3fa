"""AdminService: API keys, tenant limits and usage reports, for admin keys only (checked by the interceptor)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from decimal import Decimal
from typing import TypeVar

import grpc

from service import errors
from service._gen.embeddings.v1 import admin_pb2 as pb
from service._gen.embeddings.v1 import admin_pb2_grpc as pb_grpc
from service.access.control import AccessControl
from service.access.records import KeyRecord, NewKey, TenantRecord, UsageQuery, UsageRow
from service.api.embeddings import rpc_errors
from service.fields import derive
from service.jobs.runner import now_s

_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
T = TypeVar("T")


def key_message(key: KeyRecord) -> pb.ApiKey:
    return derive(pb.ApiKey, key, object="api_key")


def usage_response(rows: list[UsageRow], currency: str) -> pb.GetUsageResponse:
    """The report; costs are summed exactly (decimals) and only then rounded to doubles."""
    return pb.GetUsageResponse(
        object="list",
        data=[pb.UsageRecord(**{**vars(row), "cost": float(row.cost)}) for row in rows],
        total_requests=sum(r.requests for r in rows),
        total_tokens=sum(r.tokens for r in rows),
        total_job_requests=sum(r.job_requests for r in rows),
        total_job_tokens=sum(r.job_tokens for r in rows),
        total_cost=float(sum((r.cost for r in rows), Decimal(0))),
        currency=currency,
    )


def _key_not_found(key_id: str) -> errors.ApiError:
    return errors.ApiError(
        grpc.StatusCode.NOT_FOUND, f"No active API key with id '{key_id}'.", "api_key_not_found", field="id"
    )


class AdminServicer(pb_grpc.AdminServiceServicer):
    def __init__(self, control: AccessControl, currency: str = "USD") -> None:
        self._control = control
        self._store = control.store
        self._currency = currency

    async def _refresh(self) -> None:
        """Apply a change to this server at once (other replicas and the CLI's changes: within a second)."""
        await asyncio.to_thread(self._control.refresh)

    @rpc_errors
    async def CreateKey(self, request: pb.CreateKeyRequest, context) -> pb.CreateKeyResponse:
        if not request.tenant.strip():
            raise errors.invalid_input("'tenant' is required.", field="tenant")
        new = derive(NewKey, request, tenant=request.tenant.strip(), models=tuple(request.models) or None)
        record, token = await asyncio.to_thread(self._store.create_key, new, now_s())
        await self._refresh()
        return pb.CreateKeyResponse(key=key_message(record), token=token)

    @rpc_errors
    async def ListKeys(self, request: pb.ListKeysRequest, context) -> pb.ListKeysResponse:
        records = await asyncio.to_thread(self._store.list_keys, request.tenant or None)
        return pb.ListKeysResponse(object="list", data=[key_message(k) for k in records])

    async def _change_key(self, change: Callable[[str, int], T | None], key_id: str) -> T:
        """`change(key_id, now)` through the store, applied at once; 404 when there is no such active key."""
        changed = await asyncio.to_thread(change, key_id, now_s())
        if changed is None:
            raise _key_not_found(key_id)
        await self._refresh()
        return changed

    @rpc_errors
    async def RevokeKey(self, request: pb.RevokeKeyRequest, context) -> pb.RevokeKeyResponse:
        record = await self._change_key(self._store.revoke_key, request.id)
        return pb.RevokeKeyResponse(key=key_message(record))

    @rpc_errors
    async def RotateKey(self, request: pb.RotateKeyRequest, context) -> pb.RotateKeyResponse:
        record, token = await self._change_key(self._store.rotate_key, request.id)
        return pb.RotateKeyResponse(key=key_message(record), token=token)

    @rpc_errors
    async def SetTenantLimits(self, request: pb.SetTenantLimitsRequest, context) -> pb.SetTenantLimitsResponse:
        if not request.name.strip():
            raise errors.invalid_input("'name' is required.", field="name")
        limits = derive(TenantRecord, request, name=request.name.strip())
        tenant = await asyncio.to_thread(self._store.set_tenant, limits, now_s())
        await self._refresh()
        return derive(pb.SetTenantLimitsResponse, tenant)

    @rpc_errors
    async def GetUsage(self, request: pb.GetUsageRequest, context) -> pb.GetUsageResponse:
        for name in ("since", "until"):
            value = getattr(request, name)
            if value and not _DAY.match(value):
                raise errors.invalid_input(f"'{name}' must be a UTC day, YYYY-MM-DD; got {value!r}.", field=name)
        await asyncio.to_thread(self._control.meter.flush)  # include the last second's calls
        query = UsageQuery(request.tenant or None, request.since or None, request.until or None, request.group_by_user)
        rows = await asyncio.to_thread(self._store.usage, query)
        return usage_response(rows, self._currency)


ADMIN_SERVICE = pb.DESCRIPTOR.services_by_name["AdminService"].full_name


def add_admin_service(control: AccessControl, server: grpc.aio.Server, currency: str = "USD") -> None:
    pb_grpc.add_AdminServiceServicer_to_server(AdminServicer(control, currency), server)
