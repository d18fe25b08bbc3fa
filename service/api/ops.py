"""Operator routes: Prometheus metrics (GET /metrics) and the OpenAPI document (GET /openapi.json)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import grpc
from embeddings.v1 import ops_pb2 as pb
from embeddings.v1 import ops_pb2_grpc as pb_grpc
from google.api import httpbody_pb2

from service import errors
from service.api.embeddings import rpc_errors
from service.observability.metrics import CONTENT_TYPE, Metrics

log = logging.getLogger(__name__)


class OpsServicer(pb_grpc.OpsServiceServicer):
    def __init__(self, metrics: Metrics, job_counts: Callable[[], dict[str, int]], openapi_path: Path) -> None:
        self._metrics = metrics
        self._job_counts = job_counts
        self._openapi_path = openapi_path
        self._openapi: bytes | None = None

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
