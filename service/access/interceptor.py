"""The one place where calls are authenticated: a gRPC server interceptor in front of every service.

What it checks comes from each RPC's policy, declared in the contract (service/policy.py): it checks the
`authorization` metadata (REST clients' `Authorization: Bearer` header arrives as such through Envoy), refuses
admin RPCs to non-admin keys, charges one request to the rate limits of the methods metered by request (job
submissions, webhook creations, Batch API uploads and batches; embedding calls are charged with their tokens once
counted, by service/embedding.py), and hands the servicer the caller (`caller_of(context)`); all of that before
the request message is read, so a refused caller's body is never received. It adds the `x-ratelimit-*` headers to
whatever initial metadata the servicer sends (through Envoy: HTTP response headers), on success and on error.
Open methods, health checks and reflection need no key.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

import grpc

from service import errors, policy
from service.access.control import AccessControl, Principal, checked_user, permission_denied
from service.per_method import PerMethodInterceptor, behavior_of, handler_like
from service.policy import MethodPolicy

log = logging.getLogger(__name__)

# Health, the public API description and the browser pages with their files need no key (the pages' calls do), as
# the contract declares (service/policy.py).
OPEN_METHODS = policy.open_methods(policy.contract_policies())


def _metadata_value(metadata: Any, name: str) -> str | None:
    for key, value in metadata or ():
        if key == name:
            return value if isinstance(value, str) else value.decode(errors="replace")
    return None


class _CallerContext:
    """The servicer's context, carrying the authenticated caller, with the rate-limit headers added to the initial
    metadata however it is sent."""

    def __init__(self, context: grpc.aio.ServicerContext, caller: Principal, control: AccessControl) -> None:
        self._context = context
        self.caller = caller
        self._control = control
        self._sent = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)

    async def send_initial_metadata(self, metadata) -> None:
        self._sent = True
        headers = await self._control.headers(self.caller)
        await self._context.send_initial_metadata((*tuple(metadata), *headers.items()))

    async def flush(self) -> None:
        if not self._sent:
            self._sent = True
            headers = await self._control.headers(self.caller)
            if headers:
                await self._context.send_initial_metadata(tuple(headers.items()))

    async def abort_with_status(self, status) -> None:
        await self.flush()
        await self._context.abort_with_status(status)

    async def abort(self, code, details: str = "", trailing_metadata=()) -> None:
        await self.flush()
        await self._context.abort(code, details, trailing_metadata)


def caller_of(context: grpc.aio.ServicerContext) -> Principal:
    """The caller of a guarded call, as the interceptor authenticated it. Fails closed: a servicer reached without
    the interceptor has no caller, and its call fails."""
    caller = getattr(context, "caller", None)
    if not isinstance(caller, Principal):
        raise errors.internal("The call reached its servicer without an authenticated caller.")
    return caller


def acting_for(context: grpc.aio.ServicerContext, user: str) -> Principal:
    """The caller acting for end user `user` (OpenAI's `user`; "" none), which becomes the call's caller: its
    per-user limits are charged with the key's and the tenant's, and the `x-ratelimit-*` headers the call answers
    with report the tightest of them all. 400 when `user` is too long to key buckets and usage by."""
    caller = caller_of(context).as_user(checked_user(user))
    context.caller = caller  # type: ignore[attr-defined]  # the interceptor's context: its headers follow
    return caller


def _guarded(handler: grpc.RpcMethodHandler, control: AccessControl, method: MethodPolicy) -> grpc.RpcMethodHandler:
    """`handler` as a request-streaming handler that authenticates, authorizes and limits each call before reading
    its request, then runs it with the caller on its context (`caller_of`).

    grpc reads a unary request whole before calling its handler; a request-streaming handler reads when asked. So
    a caller without a valid key is refused once its headers are in: its message is never read, and HTTP/2 flow
    control stops it from sending more than a window's worth. Clients see no difference (the wire format of a
    unary call is a stream of one message). The checks run inside the call, so the handler holds no per-call
    state and other interceptors may cache it.
    """
    behavior = behavior_of(handler)

    async def admit(context: grpc.aio.ServicerContext) -> Principal:
        principal: Principal | None = None
        try:
            principal = control.authenticate(_metadata_value(context.invocation_metadata(), "authorization"))
            if method.needs_admin and not principal.admin:
                raise permission_denied("This operation needs an admin API key.")
            if method.needs_admin_key and principal.key_id is None:
                # Running open, anyone local may call anything else; keys themselves are managed with a key.
                raise permission_denied(
                    "Key management needs an admin API key: create the first one with "
                    "python -m service.admin keys create --tenant NAME --name NAME --admin"
                )
            if method.charges_request_first:
                await control.charge(principal, requests=1)
        except errors.ApiError as err:
            headers = {**await control.headers(principal), **err.headers} if principal is not None else err.headers
            if headers:
                await context.send_initial_metadata(tuple(headers.items()))
            await context.abort_with_status(err.to_status())
        assert principal is not None
        return principal

    async def request_of(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
        """What the wrapped behavior takes: the one message of a unary request, else the stream itself."""
        if handler.request_streaming:
            return requests
        async for request in requests:
            return request
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "The call carried no request message.")

    async def unary_response(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
        caller = await admit(context)
        request = await request_of(requests, context)
        wrapped = _CallerContext(context, caller, control)
        response = await behavior(request, wrapped)
        await wrapped.flush()
        return response

    async def streaming_response(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext):
        caller = await admit(context)
        request = await request_of(requests, context)
        wrapped = _CallerContext(context, caller, control)
        async for item in behavior(request, wrapped):
            await wrapped.flush()
            yield item

    return handler_like(
        handler, streaming_response if handler.response_streaming else unary_response, request_streaming=True
    )


def _refused(handler: grpc.RpcMethodHandler, path: str) -> grpc.RpcMethodHandler:
    """A served method without a declared policy (the server refuses to start with one): every call fails."""
    status = errors.internal(f"{path} has no access policy.").to_status()

    async def refuse(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
        log.error("%s has no declared policy: refusing it", path)
        await context.abort_with_status(status)

    async def refuse_stream(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext):
        await refuse(requests, context)
        yield  # an async generator, as a streaming handler must be

    return handler_like(handler, refuse_stream if handler.response_streaming else refuse, request_streaming=True)


class AuthInterceptor(PerMethodInterceptor):
    """Guards every method by its declared policy; a method with none (not ours and not a known open service) is
    refused outright, so nothing is served unguarded by omission. Each method's guarded handler is made once."""

    def __init__(self, control: AccessControl, policies: Mapping[str, MethodPolicy]) -> None:
        super().__init__()
        self._control = control
        self._policies = policies

    def wrap(self, path: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        if policy.is_foreign_open(path):
            return handler
        method = self._policies.get(path)
        if method is None:
            return _refused(handler, path)
        if method.is_open:
            return handler
        return _guarded(handler, self._control, method)
