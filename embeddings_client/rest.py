"""`RestEmbeddingsClient`: the same client over the REST gateway's OpenAI-compatible routes (`http(s)://`), for
networks where only HTTP reaches the service. Vectors travel as base64 float32; errors are OpenAI's envelope,
turned into the same exception classes as over gRPC (the reason is the envelope's `code`)."""

from __future__ import annotations

import os
import ssl
import tempfile
from collections.abc import Mapping
from urllib.parse import quote

import httpx2 as httpx
import numpy as np
import orjson

from embeddings_client.base import DEFAULT_TIMEOUT_S, EmbedParams, SyncClientBase, page_vectors
from embeddings_client.config import USER_AGENT, PemSource, TlsFiles, parse_target
from embeddings_client.errors import DeadlineExceededError, EmbeddingsError, UnavailableError, from_http
from embeddings_client.retry import RetryPolicy
from embeddings_client.types import DEFAULT_MAX_REQUEST_BYTES, EmbedBatch, Job, JobPage, ModelInfo


def ssl_context(files: TlsFiles) -> ssl.SSLContext:
    """Trust `root_certificates` (else the system's roots); present the client certificate if there is one."""
    context = ssl.create_default_context(cadata=files.root_certificates.decode() if files.root_certificates else None)
    if files.certificate_chain is not None and files.private_key is not None:
        # ssl loads a certificate chain from files only: write both to a private temporary directory.
        with tempfile.TemporaryDirectory() as folder:
            cert, key = os.path.join(folder, "cert.pem"), os.path.join(folder, "key.pem")
            for path, data in ((cert, files.certificate_chain), (key, files.private_key)):
                with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as handle:
                    handle.write(data)
            context.load_cert_chain(cert, key)
    return context


class RestEmbeddingsClient(SyncClientBase):
    """A blocking client of the REST gateway (`http://host:8080`, `https://...`). Same methods and options as
    `EmbeddingsClient`; `server_name` is not supported over REST (use a certificate for the URL's host)."""

    def __init__(
        self,
        url: str = "http://127.0.0.1:8080",
        *,
        api_key: str | None = None,
        model: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        retry: RetryPolicy | None = None,
        root_certificates: PemSource | None = None,
        client_certificate: PemSource | None = None,
        client_key: PemSource | None = None,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(model=model, timeout=timeout, retry=retry, max_request_bytes=max_request_bytes)
        self.target = parse_target(url)
        if not self.target.is_rest:
            raise ValueError(f"{url} is not an http(s):// URL")
        files = TlsFiles.load(root_certificates, client_certificate, client_key)
        verify: ssl.SSLContext | bool = ssl_context(files) if self.target.tls else False
        all_headers = {"user-agent": USER_AGENT, **(headers or {})}
        if api_key:
            all_headers["authorization"] = f"Bearer {api_key}"
        self._http = httpx.Client(base_url=self.target.base_url, headers=all_headers, verify=verify, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, timeout: float, body: object = None, params: dict | None = None):
        content = orjson.dumps(body) if body is not None else None
        headers = {"content-type": "application/json"} if content is not None else None
        try:
            response = self._http.request(
                method, path, content=content, params=params, headers=headers, timeout=timeout
            )
        except httpx.TimeoutException as exc:
            raise DeadlineExceededError(f"no answer within {timeout:g} s ({exc})", code="DEADLINE_EXCEEDED") from None
        except httpx.TransportError as exc:
            raise UnavailableError(f"cannot reach {self.target.base_url}: {exc}", code="UNAVAILABLE") from None
        try:
            data = orjson.loads(response.content) if response.content else {}
        except orjson.JSONDecodeError:
            data = response.text
        if response.status_code >= 400:
            raise from_http(response.status_code, data, response.headers)
        if not isinstance(data, dict):
            raise EmbeddingsError(f"unexpected answer from {path}: {str(data)[:200]}", code="INTERNAL")
        return data

    def _embed_call(self, texts: list[str], params: EmbedParams, timeout: float) -> EmbedBatch:
        body = {**params.rest_fields(), "input": texts, "encoding_format": "base64"}
        data = self._request("POST", "/v1/embeddings", timeout, body)
        vectors = page_vectors(data)
        unknown = np.full(len(vectors), -1, dtype=np.int64)  # REST reports tokens for the whole call only
        cached = int(((data.get("usage") or {}).get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
        return EmbedBatch(0, vectors, unknown, np.zeros(len(vectors), bool), data.get("model", params.model), cached)

    def _model_call(self, name: str, timeout: float) -> ModelInfo:
        return ModelInfo.from_fields(self._request("GET", f"/v1/models/{quote(name, safe='')}", timeout))

    def _models_call(self, timeout: float) -> list[ModelInfo]:
        return [ModelInfo.from_fields(m) for m in self._request("GET", "/v1/models", timeout).get("data", [])]

    def _submit_call(self, texts: list[str], params: EmbedParams, metadata: dict[str, str], timeout: float) -> Job:
        body = {**params.rest_fields(), "input": texts, "encoding_format": "base64", "metadata": metadata}
        return Job.from_fields(self._request("POST", "/v1/async/embeddings", timeout, body))

    def _job_call(self, action: str, job_id: str, timeout: float) -> Job:
        path = f"/v1/async/jobs/{quote(job_id, safe='')}"
        if action == "cancel":
            return Job.from_fields(self._request("POST", f"{path}/cancel", timeout, {}))
        return Job.from_fields(self._request("GET", path, timeout))

    def _list_jobs_call(self, limit: int, after: str | None, timeout: float) -> JobPage:
        params = {"limit": limit, **({"after": after} if after else {})}
        page = self._request("GET", "/v1/async/jobs", timeout, params=params)
        jobs = [Job.from_fields(j) for j in page.get("data", [])]
        return JobPage(jobs, bool(page.get("has_more")), page.get("last_id") or "")

    def _results_call(self, job_id: str, offset: int, limit: int, timeout: float) -> dict:
        path = f"/v1/async/jobs/{quote(job_id, safe='')}/results"
        return self._request("GET", path, timeout, params={"offset": offset, "limit": limit})


def connect(url: str, *, tls: bool | None = None, server_name: str | None = None, **options) -> SyncClientBase:
    """The blocking client for a URL: `RestEmbeddingsClient` for `http(s)://`, `EmbeddingsClient` (gRPC) for
    `grpc(s)://` or `host:port`. `tls=True` upgrades a plaintext URL."""
    target = parse_target(url, tls)
    if target.is_rest:
        if server_name:
            raise ValueError("server_name is for gRPC only: over REST use a certificate for the URL's host")
        return RestEmbeddingsClient(target.base_url, **options)
    from embeddings_client.client import EmbeddingsClient

    return EmbeddingsClient(url, tls=tls, server_name=server_name, **options)
