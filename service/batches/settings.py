"""A batch worker's limits and timings (the server builds them from its Settings), and the one endpoint batches run."""

from __future__ import annotations

from dataclasses import dataclass

from service.config import setting

MiB = 1024 * 1024
ENDPOINT = "/v1/embeddings"


@dataclass(frozen=True)
class BatchSettings:
    """A batch worker's limits and timings (`from_settings`: each field the setting of its name, or the one it
    names; the others are fixed)."""

    max_requests: int = setting("batch_max_requests")
    # Embedding inputs across all requests of a batch (OpenAI's /v1/embeddings batch limit).
    max_inputs: int = setting("batch_max_inputs")
    window_s: int = 24 * 3600
    lease_s: int = setting("job_lease_s")
    poll_s: float = 0.5
    # Inputs per chunk of the batch's jobs (the job engine's job_chunk_size).
    chunk_size: int = setting("job_chunk_size")
    # A part (one job) holds at most this many inputs, or this much text.
    part_inputs: int = 8192
    part_text_bytes: int = 8 * MiB
    # Validation errors listed in a failed batch's `errors` (validation stops there).
    max_errors: int = 100
    # How often expired files are removed, and after how long an upload that never finished is.
    sweep_s: float = 60.0
    stale_upload_s: int = 6 * 3600
