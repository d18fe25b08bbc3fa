"""Batch API throughput as a ratio of in-process ONNX Runtime, on the same sentences in the same run.

One request per STS-B sentence (repeated to `--requests`), uploaded as a JSONL file through Envoy with the openai
SDK; the batch is timed from `batches.create` to `completed` (validation, the jobs, writing the output file), and
the upload and the download of the output are timed apart. The same sentences as one async job
(`/v1/async/embeddings`) and in-process (the engine's tokenizer and ONNX Runtime with sorted fixed-size batches, the
best of two batchings) give the baselines. Writes bench/results/batches.md.

    python -m bench.batch_throughput [--model-repo models] [--model all-minilm-l6-v2] [--requests 5000]
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import httpx2
from openai import OpenAI

from bench.common import ENGINE_ONLY, BaselineConfig, best_in_process_rate
from bench.report import write_report
from tests.serving import EnvoyProcess, ServerProcess
from tests.stsb import load_pairs


def batch_run(client: OpenAI, model: str, sentences: list[str]) -> dict[str, float]:
    lines = [
        json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/embeddings",
                    "body": {"model": model, "input": text, "encoding_format": "base64"}})
        for i, text in enumerate(sentences)
    ]  # fmt: skip
    data = ("\n".join(lines) + "\n").encode()
    start = time.perf_counter()
    uploaded = client.files.create(file=("bench.jsonl", io.BytesIO(data)), purpose="batch")
    upload_s = time.perf_counter() - start
    start = time.perf_counter()
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h")
    while (batch := client.batches.retrieve(batch.id)).status not in ("completed", "failed", "cancelled"):
        time.sleep(0.2)
    run_s = time.perf_counter() - start
    assert batch.request_counts.completed == len(sentences), batch
    start = time.perf_counter()
    output = client.files.content(batch.output_file_id).content
    download_s = time.perf_counter() - start
    return {"upload_s": upload_s, "run_s": run_s, "download_s": download_s, "output_mb": len(output) / 1e6}


def job_run(base_url: str, model: str, sentences: list[str]) -> float:
    start = time.perf_counter()
    job = httpx2.post(f"{base_url}/v1/async/embeddings", json={"model": model, "input": sentences}, timeout=300).json()
    while (job := httpx2.get(f"{base_url}/v1/async/jobs/{job['id']}").json())["status"] != "completed":
        time.sleep(0.2)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-repo", default="models")
    parser.add_argument("--model", default="all-minilm-l6-v2")
    parser.add_argument("--requests", type=int, default=5000)
    args = parser.parse_args(argv)
    pool = load_pairs().sentences
    sentences = [pool[i % len(pool)] for i in range(args.requests)]
    repo = Path(args.model_repo).resolve()
    limit = best_in_process_rate(repo / args.model, sentences, (BaselineConfig(32), BaselineConfig(16, 2)), warm_up=256)
    with (
        ServerProcess(repo, *ENGINE_ONLY, "--models", args.model) as server,
        tempfile.TemporaryDirectory() as tmp,
        EnvoyProcess(server.port, Path(tmp)) as gateway,
    ):
        client = OpenAI(base_url=f"{gateway.base_url}/v1", api_key="unused", max_retries=0, timeout=600)
        batch = batch_run(client, args.model, sentences)
        job_s = job_run(gateway.base_url, args.model, sentences)
    batch_rate, job_rate = len(sentences) / batch["run_s"], len(sentences) / job_s
    rows = [
        ("in-process ONNX Runtime (best batching)", limit, 1.0),
        ("async job (/v1/async/embeddings)", job_rate, job_rate / limit),
        ("Batch API (create -> completed)", batch_rate, batch_rate / limit),
    ]
    report = [
        "# Batch API throughput",
        "",
        f"`python -m bench.batch_throughput --model {args.model} --requests {args.requests}`: {args.requests} "
        "requests of one STS-B sentence each; one run, all three measured back to back on this machine.",
        "",
        "| path | sentences/s | ratio to in-process |",
        "|---|---|---|",
        *(f"| {name} | {rate:.0f} | {ratio:.2f}x |" for name, rate, ratio in rows),
        "",
        f"Batch: upload {batch['upload_s']:.2f} s, create -> completed {batch['run_s']:.1f} s (validation, jobs, "
        f"writing {batch['output_mb']:.1f} MB of output), download {batch['download_s']:.2f} s.",
        "",
    ]
    write_report("batches", "\n".join(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
