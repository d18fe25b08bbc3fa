"""Operator routes: Prometheus metrics (GET /metrics), the OpenAPI document (GET /openapi.json), and the browser
pages over them, the API reference (GET /docs) and the operator console (GET /console), with their files."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import grpc
from google.api import httpbody_pb2

from service import console, errors
from service._gen.embeddings.v1 import ops_pb2 as pb
from service._gen.embeddings.v1 import ops_pb2_grpc as pb_grpc
from service.api.rpc_errors import rpc_errors
from service.observability.metrics import CONTENT_TYPE, Metrics

log = logging.getLogger(__name__)


class OpsServicer(pb_grpc.OpsServiceServicer):
    def __init__(
        self, metrics: Metrics, job_counts: Callable[[], dict[str, int]], openapi_path: Path, swagger_ui_dir: Path
    ) -> None:
        self._metrics = metrics
        self._job_counts = job_counts
        self._openapi_path = openapi_path
        self._openapi: bytes | None = None
        self._swagger_ui_dir = swagger_ui_dir
        # Read on first use (most servers never serve a page), then kept.
        self._console: console.Site | None = None
        self._docs: console.Site | None = None

    @rpc_errors
    async def GetMetrics(self, request: pb.GetMetricsRequest, context) -> httpbody_pb2.HttpBody:
        try:
            self._metrics.set_job_counts(await asyncio.to_thread(self._job_counts))
        except Exception:
            log.exception("counting jobs for metrics failed")  # the other metrics are still worth answering
        return httpbody_pb2.HttpBody(content_type=CONTENT_TYPE, data=self._metrics.exposition())

    @rpc_errors
    async def GetOpenApiDocument(self, request: pb.GetOpenApiDocumentRequest, context) -> httpbody_pb2.HttpBody:
        if self._openapi is None:
            try:
                self._openapi = await asyncio.to_thread(self._openapi_path.read_bytes)
            except OSError:
                raise errors.ApiError(
                    grpc.StatusCode.NOT_FOUND,
                    f"No OpenAPI document at {self._openapi_path}: build it with `make proto`.",
                    "openapi_not_built",
                ) from None
        return httpbody_pb2.HttpBody(content_type="application/json", data=self._openapi)

    async def _console_site(self) -> console.Site:
        if self._console is None:
            self._console = await asyncio.to_thread(console.console_site)
        return self._console

    async def _docs_site(self) -> console.Site:
        if self._docs is None:
            try:
                self._docs = await asyncio.to_thread(console.docs_site, self._swagger_ui_dir)
            except FileNotFoundError:
                raise errors.ApiError(
                    grpc.StatusCode.NOT_FOUND,
                    f"Swagger UI is not installed at {self._swagger_ui_dir}: install it with `make setup`.",
                    "docs_not_built",
                ) from None
        return self._docs

    @rpc_errors
    async def GetDocs(self, request: pb.GetDocsRequest, context) -> httpbody_pb2.HttpBody:
        return await _send(context, (await self._docs_site()).page, console.PAGE_CACHE_CONTROL)

    @rpc_errors
    async def GetDocsAsset(self, request: pb.GetDocsAssetRequest, context) -> httpbody_pb2.HttpBody:
        return await _send_asset(context, await self._docs_site(), request, "/docs")

    @rpc_errors
    async def GetConsole(self, request: pb.GetConsoleRequest, context) -> httpbody_pb2.HttpBody:
        return await _send(context, (await self._console_site()).page, console.PAGE_CACHE_CONTROL)

    @rpc_errors
    async def GetConsoleAsset(self, request: pb.GetConsoleAssetRequest, context) -> httpbody_pb2.HttpBody:
        return await _send_asset(context, await self._console_site(), request, "/console")


async def _send(context: grpc.aio.ServicerContext, file: console.WebFile, cache_control: str) -> httpbody_pb2.HttpBody:
    """The file, with its caching and security headers (initial metadata: HTTP headers through the gateway)."""
    await context.send_initial_metadata((("cache-control", cache_control), *console.SECURITY_HEADERS))
    return httpbody_pb2.HttpBody(content_type=file.content_type, data=file.data)


async def _send_asset(
    context: grpc.aio.ServicerContext,
    site: console.Site,
    request: pb.GetDocsAssetRequest | pb.GetConsoleAssetRequest,
    page: str,
) -> httpbody_pb2.HttpBody:
    file = site.asset(request.version, request.name)
    if file is None:
        raise errors.ApiError(
            grpc.StatusCode.NOT_FOUND,
            f"No such file in this build of {page}: reload the page.",
            "asset_not_found",
        )
    return await _send(context, file, console.ASSET_CACHE_CONTROL)
