"""What every client does the same way whatever the transport: split a call's texts to the server's limits, retry
with back-off, follow async jobs and page their results. The transports (gRPC in `client.py`, REST in `rest.py`)
supply single calls. The asyncio client (`aio.py`) shares what a client holds (`ClientCore`) and the bookkeeping of
retries, job waits and result pages (`Attempts`, `JobWait`, `ResultPages`): only how it waits differs."""

from __future__ import annotations

import functools
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TypeVar

import numpy as np

from embeddings_client.errors import DeadlineExceededError, EmbeddingsError
from embeddings_client.retry import RetryPolicy
from embeddings_client.types import (
    DEFAULT_MAX_REQUEST_BYTES,
    EmbedBatch,
    Job,
    JobPage,
    ModelInfo,
    as_texts,
    decode_vector,
    input_type_name,
    plan_batches,
)

T = TypeVar("T")
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_PAGE_SIZE = 1000


@dataclass(frozen=True)
class EmbedParams:
    """Options of an embedding call (None: the server's default)."""

    model: str
    dimensions: int | None = None
    normalize: bool | None = None
    input_type: str = ""  # "query" / "document": the model's prefix
    truncate: bool | None = None  # True: cut over-long inputs; False: reject them; None: the server's default
    user: str = ""

    def rest_fields(self) -> dict:
        """The OpenAI-style request fields (REST, async jobs) besides `input`."""
        fields: dict = {"model": self.model}
        for name in ("dimensions", "normalize", "truncate"):
            if getattr(self, name) is not None:
                fields[name] = getattr(self, name)
        if self.input_type:
            fields["input_type"] = self.input_type
        if self.user:
            fields["user"] = self.user
        return fields


def make_params(
    model: str | None,
    default_model: str | None,
    dimensions: int | None,
    normalize: bool | None,
    input_type: str | None,
    truncate: bool | None,
    user: str | None,
) -> EmbedParams:
    name = model or default_model
    if not name:
        raise ValueError("no model: pass model=... to the call or to the client")
    return EmbedParams(name, dimensions, normalize, input_type_name(input_type), truncate, user or "")


def page_vectors(page: Mapping) -> np.ndarray:
    """The vectors of one job-results page (a /v1/embeddings response), as float32 rows."""
    rows = [decode_vector(item["embedding"]) for item in page["data"]]
    return np.stack(rows).astype(np.float32, copy=False) if rows else np.zeros((0, 0), np.float32)


def stack_pages(pages: Sequence[np.ndarray]) -> np.ndarray:
    """A job's result pages as one array [inputs, dimensions]."""
    return np.concatenate(pages) if pages else np.zeros((0, 0), np.float32)


def request_limit(info: ModelInfo, batch_size: int | None) -> int:
    """Inputs one embedding request may carry: the model's limit, or `batch_size` when smaller."""
    return min(info.max_inputs_per_request, batch_size) if batch_size else info.max_inputs_per_request


def job_fields(metadata: Mapping[str, str] | None, webhook_id: str | None) -> dict[str, str]:
    """A job submission's metadata, with the webhook to notify among it."""
    return {**(metadata or {}), **({"webhook_id": webhook_id} if webhook_id else {})}


def concatenate(batches: Sequence[EmbedBatch], dimensions: int) -> np.ndarray:
    if not batches:
        return np.zeros((0, dimensions), np.float32)
    return batches[0].vectors if len(batches) == 1 else np.concatenate([b.vectors for b in batches])


class Attempts:
    """One call's attempts within one deadline, retried per the policy."""

    def __init__(self, budget_s: float, retry: RetryPolicy, idempotent: bool) -> None:
        self._budget_s, self._retry, self._idempotent = budget_s, retry, idempotent
        self._deadline = time.monotonic() + budget_s
        self._attempt = 0

    def next(self) -> float:
        """The seconds the next attempt may take (DeadlineExceededError when none are left)."""
        self._attempt += 1
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise DeadlineExceededError(f"no answer within {self._budget_s:g} s", code="DEADLINE_EXCEEDED")
        return left

    def wait_after(self, error: EmbeddingsError) -> float:
        """The seconds to wait before trying again after `error`; raises it when the policy or the deadline say no."""
        wait = self._retry.delay(self._attempt, error, self._idempotent)
        if wait is None or time.monotonic() + wait >= self._deadline:
            raise error
        self._retry.notify(self._attempt, error, wait)
        return wait


@dataclass
class JobWait:
    """Polling a job until it ends: its progress reported, its deadline (timeout None: none) kept."""

    job_id: str
    poll_interval_s: float
    timeout: float | None
    on_progress: Callable[[Job], None] | None
    deadline: float | None = field(init=False)

    def __post_init__(self) -> None:
        self.deadline = None if self.timeout is None else time.monotonic() + self.timeout

    def ended(self, job: Job) -> bool:
        """Whether the job state just read is final; DeadlineExceededError when the next poll would be too late."""
        if self.on_progress is not None:
            self.on_progress(job)
        if job.finished:
            return True
        if self.deadline is not None and time.monotonic() + self.poll_interval_s > self.deadline:
            raise DeadlineExceededError(
                f"job {self.job_id} is still {job.status} after {self.timeout:g} s", code="DEADLINE_EXCEEDED"
            )
        return False


class ResultPages:
    """Where paging through a job's results stands: the next offset, and whether the last page was read."""

    def __init__(self, offset: int = 0) -> None:
        self.offset = offset
        self.done = False

    def take(self, page: Mapping) -> np.ndarray:
        """The rows of the page just read (at `offset`), and move past them."""
        rows = page_vectors(page)
        self.offset += len(rows)
        self.done = not page.get("has_more") or not len(rows)
        return rows


class ClientCore:
    """What every client holds, whatever its transport and however it waits: the default model, a call's time and
    retry budget, the request size, and the models read so far (by id and by the names asked for)."""

    def __init__(
        self,
        *,
        model: str | None,
        timeout: float,
        retry: RetryPolicy | None,
        max_request_bytes: int,
    ) -> None:
        self.default_model = model
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.max_request_bytes = max_request_bytes or DEFAULT_MAX_REQUEST_BYTES
        self._models: dict[str, ModelInfo] = {}

    def _attempts(self, timeout: float | None, idempotent: bool) -> Attempts:
        """One call's attempts, within `timeout` (None: the client's)."""
        return Attempts(self.timeout if timeout is None else timeout, self.retry, idempotent)

    def _model_name(self, name: str | None) -> str:
        name = name or self.default_model
        if not name:
            raise ValueError("no model: pass a name or set the client's model")
        return name

    def _remember(self, found: list[ModelInfo]) -> list[ModelInfo]:
        self._models.update({m.id: m for m in found})
        return found


class SyncClientBase(ClientCore, ABC):
    """Splitting, retries, jobs: everything above a single call, for blocking clients."""

    # --- what a transport provides ---------------------------------------------------------------------------

    @abstractmethod
    def _embed_call(self, texts: list[str], params: EmbedParams, timeout: float) -> EmbedBatch: ...

    @abstractmethod
    def _model_call(self, name: str, timeout: float) -> ModelInfo: ...

    @abstractmethod
    def _models_call(self, timeout: float) -> list[ModelInfo]: ...

    @abstractmethod
    def _submit_call(self, texts: list[str], params: EmbedParams, metadata: dict[str, str], timeout: float) -> Job: ...

    @abstractmethod
    def _job_call(self, action: str, job_id: str, timeout: float) -> Job: ...

    @abstractmethod
    def _list_jobs_call(self, limit: int, after: str | None, timeout: float) -> JobPage: ...

    @abstractmethod
    def _results_call(self, job_id: str, offset: int, limit: int, timeout: float) -> dict: ...

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- retries -----------------------------------------------------------------------------------------------

    def _retrying(self, call: Callable[[float], T], timeout: float | None, idempotent: bool = True) -> T:
        """Run `call(seconds_left)` until it succeeds, retrying per the policy within one deadline."""
        attempts = self._attempts(timeout, idempotent)
        while True:
            left = attempts.next()
            try:
                return call(left)
            except EmbeddingsError as err:
                error = err
            time.sleep(attempts.wait_after(error))

    # --- models ------------------------------------------------------------------------------------------------

    def models(self, timeout: float | None = None) -> list[ModelInfo]:
        """The models the server serves to this caller."""
        return self._remember(self._retrying(self._models_call, timeout))

    def model(self, name: str | None = None, timeout: float | None = None) -> ModelInfo:
        """One model, by id or alias (cached: the client splits calls to its limits)."""
        name = self._model_name(name)
        if name not in self._models:
            self._models[name] = self._retrying(lambda left: self._model_call(name, left), timeout)
        return self._models[name]

    # --- embeddings --------------------------------------------------------------------------------------------

    def iter_embed(
        self,
        texts: str | Sequence[str],
        model: str | None = None,
        *,
        dimensions: int | None = None,
        normalize: bool | None = None,
        input_type: str | None = None,
        truncate: bool | None = None,
        user: str | None = None,
        batch_size: int | None = None,
        timeout: float | None = None,
    ) -> Iterator[EmbedBatch]:
        """The vectors of `texts` batch by batch, in order, as each request returns: for inputs too many to hold.

        Requests carry at most the model's `max_inputs_per_request` (and `batch_size`) texts and about
        `max_request_bytes` of text. `timeout` bounds each request, its retries included. An error's `index` and
        message name the position in `texts`."""
        items = as_texts(texts)
        params = make_params(model, self.default_model, dimensions, normalize, input_type, truncate, user)
        limit = request_limit(self.model(params.model, timeout), batch_size)
        for start, stop in plan_batches(items, limit, self.max_request_bytes):
            chunk = items[start:stop]
            try:
                batch = self._retrying(lambda left, chunk=chunk: self._embed_call(chunk, params, left), timeout)
            except EmbeddingsError as err:
                raise err.shifted(start) from None
            yield replace(batch, start=start)

    def embed(
        self,
        texts: str | Sequence[str],
        model: str | None = None,
        *,
        dimensions: int | None = None,
        normalize: bool | None = None,
        input_type: str | None = None,
        truncate: bool | None = None,
        user: str | None = None,
        batch_size: int | None = None,
        timeout: float | None = None,
    ) -> np.ndarray:
        """One float32 vector per text, in order: an array [len(texts), dimensions]."""
        batches = list(
            self.iter_embed(
                texts,
                model,
                dimensions=dimensions,
                normalize=normalize,
                input_type=input_type,
                truncate=truncate,
                user=user,
                batch_size=batch_size,
                timeout=timeout,
            )
        )
        return concatenate(batches, dimensions or self.model(model, timeout).dimensions)

    # --- async jobs --------------------------------------------------------------------------------------------

    def submit_job(
        self,
        texts: Sequence[str],
        model: str | None = None,
        *,
        dimensions: int | None = None,
        normalize: bool | None = None,
        input_type: str | None = None,
        truncate: bool | None = None,
        user: str | None = None,
        metadata: Mapping[str, str] | None = None,
        webhook_id: str | None = None,
        timeout: float | None = None,
    ) -> Job:
        """Submit a large corpus as one async job (validated whole before it exists); returns it at once.

        Not retried when the server may have acted on it (UNAVAILABLE): list the jobs to find out."""
        items = as_texts(texts)
        params = make_params(model, self.default_model, dimensions, normalize, input_type, truncate, user)
        fields = job_fields(metadata, webhook_id)
        return self._retrying(lambda left: self._submit_call(items, params, fields, left), timeout, idempotent=False)

    def get_job(self, job_id: str, timeout: float | None = None) -> Job:
        return self._retrying(lambda left: self._job_call("get", job_id, left), timeout)

    def cancel_job(self, job_id: str, timeout: float | None = None) -> Job:
        return self._retrying(lambda left: self._job_call("cancel", job_id, left), timeout, idempotent=False)

    def list_jobs(self, limit: int = 20, after: str | None = None, timeout: float | None = None) -> JobPage:
        """Newest first; `after`: the previous page's `last_id`."""
        return self._retrying(lambda left: self._list_jobs_call(limit, after, left), timeout)

    def wait_job(
        self,
        job_id: str,
        *,
        poll_interval_s: float = 1.0,
        timeout: float | None = None,
        on_progress: Callable[[Job], None] | None = None,
    ) -> Job:
        """Poll until the job is completed, failed or cancelled (`timeout`: None waits as long as it takes);
        `on_progress` sees every state read. Returns the finished job: check its `status`."""
        waiting = JobWait(job_id, poll_interval_s, timeout, on_progress)
        while not waiting.ended(job := self.get_job(job_id)):
            time.sleep(poll_interval_s)
        return job

    def iter_job_results(
        self, job_id: str, *, page_size: int = DEFAULT_PAGE_SIZE, offset: int = 0, timeout: float | None = None
    ) -> Iterator[tuple[int, np.ndarray]]:
        """A completed job's vectors page by page, in input order, as (offset of the first row, rows)."""
        pages = ResultPages(offset)
        while not pages.done:
            at = pages.offset
            page = self._retrying(functools.partial(self._results_call, job_id, at, page_size), timeout)
            rows = pages.take(page)
            if len(rows):
                yield at, rows

    def job_results(self, job_id: str, *, page_size: int = DEFAULT_PAGE_SIZE, timeout: float | None = None):
        """All of a completed job's vectors: an array [inputs, dimensions]."""
        return stack_pages([rows for _, rows in self.iter_job_results(job_id, page_size=page_size, timeout=timeout)])
