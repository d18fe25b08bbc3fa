"""Async jobs on the real server under load: a live worker keeps its chunk's lease for as long as it works on it, so
no chunk is ever taken over or computed twice and a job never fails for chunks that merely took long, even when
every chunk takes several times the lease to embed."""

from __future__ import annotations

import sqlite3
import threading
import time

import grpc
import pytest
from google.protobuf import struct_pb2

from service._gen.embeddings.v1 import embeddings_pb2 as pb
from service._gen.embeddings.v1 import embeddings_pb2_grpc as pb_grpc
from service._gen.embeddings.v1 import jobs_pb2, jobs_pb2_grpc, rest_pb2
from tests.serving import ServerProcess

pytestmark = pytest.mark.slow  # minutes: `make test-slow`

FP32 = "all-minilm-l6-v2"
LEASE_S = 2
# ~100 tokens each: a chunk of 256 takes several seconds in the background lane, well over the lease.
DOCUMENT = "the quick brown fox jumps over the lazy dog while the farmer watches from the porch " * 6


def _strings(texts) -> struct_pb2.Value:
    return struct_pb2.Value(list_value=struct_pb2.ListValue(values=[struct_pb2.Value(string_value=t) for t in texts]))


def test_chunks_that_outlast_the_lease_are_never_taken_from_a_live_worker(model_repo):
    args = ("--models", FP32, "--job-lease-s", str(LEASE_S), "--job-chunk-size", "256")
    with ServerProcess(model_repo, *args) as server, grpc.insecure_channel(server.address) as channel:
        jobs = jobs_pb2_grpc.JobServiceStub(channel)
        texts = [f"document {i}: {DOCUMENT}" for i in range(768)]
        job = jobs.AsyncEmbed(rest_pb2.CreateEmbeddingRequest(model=FP32, input=_strings(texts)), timeout=60)
        stop = threading.Event()

        def interactive_load() -> None:  # keeps the engine busy: chunks take longer still
            stub = pb_grpc.EmbeddingServiceStub(channel)
            calls = 0
            while not stop.is_set():  # distinct inputs: the embedding cache must not answer them
                inputs = [f"call {calls}.{i}: {DOCUMENT}" for i in range(16)]
                stub.Embed(pb.EmbedRequest(model=FP32, inputs=inputs), timeout=120)
                calls += 1

        load = threading.Thread(target=interactive_load, daemon=True)
        load.start()
        try:
            while (job := jobs.GetJob(jobs_pb2.GetJobRequest(id=job.id), timeout=30)).status in (
                "queued",
                "in_progress",
            ):
                time.sleep(0.5)
        finally:
            stop.set()
            load.join(120)
        assert job.status == "completed", job.error
        with sqlite3.connect(server.data_dir / "jobs.sqlite3") as db:
            claims = db.execute("SELECT idx, attempts, failures FROM chunks WHERE job_id = ?", (job.id,)).fetchall()
    assert claims == [(0, 1, 0), (1, 1, 0), (2, 1, 0)]  # each chunk claimed once: no takeover, no failure
