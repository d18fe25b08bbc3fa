"""What the engine refuses or fails with, in its own terms: no transport, no status codes.

Each error carries the facts a caller needs to answer it (the API layer maps them to gRPC statuses and OpenAI's
error shape in one place: service/api/engine_errors.py). `field` names the request part at fault in the engine's
terms (`inputs`, `inputs[3]`, `dimensions`, `input_type`, `input`).
"""

from __future__ import annotations

from dataclasses import dataclass


class EngineError(Exception):
    """Base of every error the engine raises on purpose (anything else is a bug)."""


@dataclass(eq=False)
class InvalidInput(EngineError):
    """The call's inputs or options are malformed (empty input, unknown input type, bad token id)."""

    message: str
    field: str | None = None

    def __post_init__(self) -> None:
        super().__init__(self.message)


@dataclass(eq=False)
class TooManyInputs(EngineError):
    """More inputs in one call than the model accepts."""

    count: int
    cap: int

    def __post_init__(self) -> None:
        super().__init__(f"{self.count} inputs, the limit is {self.cap}")


@dataclass(eq=False)
class ContextLengthExceeded(EngineError):
    """An input over the model's token limit in a call that does not truncate. `at_least`: only a prefix of it was
    read, so `tokens` is a lower bound; `chars`/`max_chars` then say how long it is and how much the model reads."""

    index: int
    tokens: int
    limit: int
    model: str
    at_least: bool = False
    chars: int = 0
    max_chars: int = 0

    def __post_init__(self) -> None:
        super().__init__(f"input {self.index} has {self.tokens} tokens, the limit is {self.limit}")


@dataclass(eq=False)
class DimensionsNotSupported(EngineError):
    """A `dimensions` the model cannot shorten its vectors to."""

    model: str
    dimensions: int
    allowed: tuple[int, ...]
    full: int

    def __post_init__(self) -> None:
        super().__init__(f"model {self.model} cannot return {self.dimensions} dimensions")


@dataclass(eq=False)
class ModelNotFound(EngineError):
    """No served model has this id or alias."""

    name: str

    def __post_init__(self) -> None:
        super().__init__(f"no model {self.name!r}")


@dataclass(eq=False)
class NotReady(EngineError):
    """The engine is still loading its models: retrying shortly succeeds."""

    message: str = "The server is starting: models are still loading. Retry shortly."

    def __post_init__(self) -> None:
        super().__init__(self.message)


@dataclass(eq=False)
class QueueFull(EngineError):
    """Accepting the call would exceed the model's queue bound: retrying after a short wait may succeed."""

    model: str

    def __post_init__(self) -> None:
        super().__init__(f"the queue of model {self.model} is full")


class DeadlineExceeded(EngineError):
    """The call's deadline passed while its inputs were queued."""


@dataclass(eq=False)
class InferenceFailed(EngineError):
    """The backend failed, or produced a vector that must not leave the service (NaN, Inf)."""

    message: str

    def __post_init__(self) -> None:
        super().__init__(self.message)
