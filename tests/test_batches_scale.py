"""A 50,000-request batch (OpenAI's limit) with bounded memory, through a SIGKILL of the server mid-batch: after a
restart on the same store it completes with every custom_id answered exactly once."""

from __future__ import annotations

import io
import json
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from openai import OpenAI

from tests.serving import EnvoyProcess, ServerProcess
from tests.stsb import load_pairs
from tests.test_batches import cosines, live, vectors_of, wait_batch

pytestmark = pytest.mark.slow  # minutes: `make test-slow`

FP32 = "all-minilm-l6-v2"
REQUESTS = 50_000
RSS_LIMIT = 1024**3


class RssSampler:
    """The largest resident set size of a process, sampled every 0.2 s from /proc until stopped."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            try:
                status = Path(f"/proc/{self.pid}/status").read_text()
            except OSError:
                return
            for row in status.splitlines():
                if row.startswith("VmRSS:"):
                    self.peak = max(self.peak, int(row.split()[1]) * 1024)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def requests_file() -> tuple[bytes, dict[str, str]]:
    """STS-B sentences, cut to their first five words, repeated to 50,000 requests: the repeats are answered by the
    embedding cache (as a real corpus's repeats are), so the run times the Batch API's machinery, not the model."""
    sentences = [" ".join(s.split()[:5]) for s in load_pairs().sentences]
    texts = {f"r{i}": sentences[i % len(sentences)] for i in range(REQUESTS)}
    lines = [
        json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/embeddings",
                    "body": {"model": FP32, "input": text, "encoding_format": "base64"}})
        for custom_id, text in texts.items()
    ]  # fmt: skip
    return ("\n".join(lines) + "\n").encode(), texts


def test_50k_requests_survive_a_sigkill_with_bounded_memory(model_repo, tmp_path):
    data_dir = tmp_path / "data"
    args = ("--data-dir", str(data_dir), "--models", FP32, "--job-lease-s", "3")
    data, texts = requests_file()
    first = ServerProcess(model_repo, *args).start()
    sampler = RssSampler(first.proc.pid)
    (tmp_path / "e1").mkdir()
    with EnvoyProcess(first.port, tmp_path / "e1") as envoy:
        client = OpenAI(base_url=f"{envoy.base_url}/v1", api_key="unused", max_retries=0)
        uploaded = client.files.create(file=("stsb.jsonl", io.BytesIO(data)), purpose="batch")
        assert uploaded.bytes == len(data)
        batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h")
        end = time.monotonic() + 600
        while (progress := client.batches.retrieve(batch.id)).request_counts.completed < 2000:
            assert progress.status in ("validating", "in_progress") and time.monotonic() < end, progress
            time.sleep(0.1)
    first.signal(signal.SIGKILL)
    first.wait(30)
    first_peak = sampler.stop()

    second = ServerProcess(model_repo, *args).start()
    sampler = RssSampler(second.proc.pid)
    try:
        (tmp_path / "e2").mkdir()
        with EnvoyProcess(second.port, tmp_path / "e2") as envoy:
            client = OpenAI(base_url=f"{envoy.base_url}/v1", api_key="unused", max_retries=0)
            done = wait_batch(client, batch.id, timeout=1800)
            second_peak = sampler.stop()
            assert done.status == "completed", done
            assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (
                REQUESTS,
                REQUESTS,
                0,
            )
            assert done.error_file_id is None
            seen: dict[str, np.ndarray] = {}
            for raw in client.files.content(done.output_file_id).text.splitlines():
                entry = json.loads(raw)
                assert entry["custom_id"] not in seen, f"{entry['custom_id']} answered twice"
                seen[entry["custom_id"]] = vectors_of(entry["response"]["body"])[0]
            assert set(seen) == set(texts)
            sample = [f"r{i}" for i in range(0, REQUESTS, 997)]
            expected = vectors_of(live((second, envoy), {"model": FP32, "input": [texts[c] for c in sample]}))
            assert cosines(np.stack([seen[c] for c in sample]), expected).min() >= 0.9999
    finally:
        second.stop()
    assert first_peak < RSS_LIMIT and second_peak < RSS_LIMIT, (first_peak, second_peak)
