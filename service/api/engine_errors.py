"""The one place where the engine's errors become API errors (gRPC status, reason, field, retry headers)."""

from __future__ import annotations

from service import errors
from service.engine import errors as engine


def api_error(err: engine.EngineError) -> errors.ApiError:
    """The API's answer to an engine error."""
    match err:
        case engine.InvalidInput():
            return errors.invalid_input(err.message, field=err.field)
        case engine.TooManyInputs():
            return errors.too_many_inputs(err.count, err.cap)
        case engine.ContextLengthExceeded():
            return errors.context_length_exceeded(
                err.index, err.tokens, err.limit, err.model, err.at_least, err.chars, err.max_chars
            )
        case engine.DimensionsNotSupported():
            return errors.dimensions_not_supported(err.model, err.dimensions, err.allowed, err.full)
        case engine.ModelNotFound():
            return errors.model_not_found(err.name)
        case engine.NotReady():
            return errors.unavailable(err.message)
        case engine.QueueFull():
            return errors.queue_full(err.model)
        case engine.DeadlineExceeded():
            return errors.deadline_exceeded()
        case engine.InferenceFailed():
            return errors.internal(err.message)
    return errors.internal(f"Engine error: {err}")


def as_api_error(err: errors.ApiError | engine.EngineError) -> errors.ApiError:
    """`err` as an API error, whichever layer raised it."""
    return api_error(err) if isinstance(err, engine.EngineError) else err
