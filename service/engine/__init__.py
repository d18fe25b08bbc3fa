"""The engine: a library with no transport in it. Data flows ServedModel (validate, tokenize) -> Batcher (dynamic
batches) -> Encoder (pad, backend, pool, Dense) and back; ModelRegistry (registry.py) builds it from EngineOptions
and a model repository. Failures are `errors.EngineError`s, which the API layer maps to its own errors."""
