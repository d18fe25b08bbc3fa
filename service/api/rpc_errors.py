"""How every servicer method ends on an error: an API error (or the engine's, mapped to one) as its rich status, so
clients and the REST gateway see OpenAI's error; anything else is a bug, logged and answered INTERNAL."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc

from service import errors
from service.api.engine_errors import as_api_error
from service.engine.errors import EngineError

log = logging.getLogger(__name__)


async def _abort(context: grpc.aio.ServicerContext, exc: Exception, method: str, send_headers: bool) -> None:
    if isinstance(exc, errors.ApiError | EngineError):
        err = as_api_error(exc)
        if err.headers and send_headers:
            await context.send_initial_metadata(tuple(err.headers.items()))
        await context.abort_with_status(err.to_status())
    log.error("unexpected error in %s", method, exc_info=exc)
    await context.abort_with_status(errors.internal("Internal server error.").to_status())


def rpc_errors(method: Callable[..., Awaitable]) -> Callable[..., Awaitable]:
    """For unary-response methods: the error's headers (retry-after, ...) go out as initial metadata."""

    @functools.wraps(method)
    async def wrapper(self, request, context: grpc.aio.ServicerContext):
        try:
            return await method(self, request, context)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await _abort(context, exc, method.__name__, send_headers=True)

    return wrapper


def rpc_stream_errors(method: Callable[..., AsyncIterator]) -> Callable[..., AsyncIterator]:
    """For server-streaming methods: an error before or between messages ends the stream with it (the stream's
    headers may be gone already, so the error's own are not sent)."""

    @functools.wraps(method)
    async def wrapper(self, request, context: grpc.aio.ServicerContext):
        try:
            async for item in method(self, request, context):
                yield item
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await _abort(context, exc, method.__name__, send_headers=False)

    return wrapper
