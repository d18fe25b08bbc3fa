"""The first pass over a batch's input file: its structure, checked as OpenAI checks it before running a batch.

A problem here (a line that is not JSON, a missing or repeated custom_id, another method or url, two models, too
many requests or inputs) fails the whole batch with up to `max_errors` line errors. What a request's body asks is
left to the second pass (service/batches/job_parts.py), which refuses a request on its own, as the live call would.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from service import errors
from service.batches.settings import BatchSettings
from service.engine.errors import EngineError
from service.engine.model import ServedModel

CUSTOM_ID_MAX = 512

# The models as the batch's key sees them (Embedder.resolve for its caller): others do not exist, as for its live
# calls.
KeyModels = Callable[[str], ServedModel]


@dataclass
class Structure:
    """What the first pass learns: the batch's model, and its problems."""

    model: str | None = None
    requests: int = 0
    inputs: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)


def line_error(line: int, code: str, message: str, param: str | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "param": param, "line": line}


def input_count(body: dict) -> int:
    """How many embedding inputs a request body holds (a string or token-id list is one)."""
    value = body.get("input")
    if isinstance(value, list) and value and not all(isinstance(v, int) for v in value):
        return len(value)
    return 1


def check_structure(
    lines: Iterable[tuple[int, bytes]],
    endpoint: str,
    models: KeyModels,
    settings: BatchSettings,
    keep_lease: Callable[[], None],
) -> Structure:
    """Every problem OpenAI reports by failing a batch, up to `max_errors` (blocking: run it in a thread)."""
    found = Structure()
    seen: set[str] = set()
    for line, raw in lines:
        keep_lease()
        found.requests += 1
        problem = _line_problem(line, raw, endpoint, seen, models, found)
        if problem is not None:
            found.errors.append(problem)
            if len(found.errors) >= settings.max_errors:
                return found
        if found.inputs > settings.max_inputs:
            found.errors.append(
                line_error(
                    line,
                    "too_many_inputs",
                    f"The batch holds more than {settings.max_inputs:,} embedding inputs, the most one "
                    "/v1/embeddings batch may hold.",
                )
            )
            return found
    if found.requests == 0:
        found.errors.append(line_error(1, "empty_file", "The input file holds no requests."))
    elif found.requests > settings.max_requests:
        found.errors.append(
            line_error(
                settings.max_requests + 1,
                "too_many_tasks",
                f"The batch holds {found.requests:,} requests; the limit is {settings.max_requests:,}.",
            )
        )
    return found


def _line_problem(
    line: int, raw: bytes, endpoint: str, seen: set[str], models: KeyModels, found: Structure
) -> dict[str, Any] | None:
    try:
        request = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return line_error(line, "invalid_json_line", "This line is not parseable as valid JSON.")
    if not isinstance(request, dict):
        return line_error(line, "invalid_json_line", "This line is not a JSON object.")
    for name in ("custom_id", "method", "url", "body"):
        if request.get(name) is None:
            return line_error(line, "missing_required_parameter", f"Missing required parameter: '{name}'.", param=name)
    custom_id, body = request["custom_id"], request["body"]
    if not isinstance(custom_id, str) or not custom_id or len(custom_id) > CUSTOM_ID_MAX:
        return line_error(
            line, "invalid_custom_id", f"'custom_id' must be a string of 1 to {CUSTOM_ID_MAX} characters.",
            param="custom_id",
        )  # fmt: skip
    if custom_id in seen:
        return line_error(
            line,
            "duplicate_custom_id",
            "The custom_id for this request is a duplicate of another request. The custom_id parameter must be "
            "unique for each request in a batch.",
            param="custom_id",
        )
    seen.add(custom_id)
    if request["method"] != "POST":
        return line_error(line, "invalid_method", "The method must be 'POST'.", param="method")
    if request["url"] != endpoint:
        return line_error(
            line, "url_mismatch", f"The url of this request does not match the batch's endpoint '{endpoint}'.",
            param="url",
        )  # fmt: skip
    if not isinstance(body, dict):
        return line_error(line, "invalid_request", "'body' must be a JSON object.", param="body")
    found.inputs += input_count(body)
    return _model_problem(line, body.get("model"), models, found)


def _model_problem(line: int, name: Any, models: KeyModels, found: Structure) -> dict[str, Any] | None:
    """One model per batch: the first known model named sets it (an unknown one is the request's own error, written
    to the error file as the live call's)."""
    if not isinstance(name, str) or not name:
        return None
    try:
        model_id = models(name).id
    except (errors.ApiError, EngineError):
        return None
    if found.model is None:
        found.model = model_id
    elif model_id != found.model:
        return line_error(
            line,
            "model_mismatch",
            f"All requests of a batch must use one model: this one uses '{model_id}', earlier ones '{found.model}'.",
            param="body.model",
        )
    return None
