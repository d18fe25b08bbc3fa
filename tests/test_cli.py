"""The command-line client end to end, as a real process against the session's real server (gRPC) and gateway (REST):
a small file embedded synchronously, a large one through an async job, JSONL and .npy, blank lines, errors naming
file lines, models and jobs commands, and Ctrl-C mid-job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf import struct_pb2

from service._gen.embeddings.v1 import embeddings_pb2 as pb
from service._gen.embeddings.v1 import jobs_pb2, jobs_pb2_grpc, rest_pb2
from tests.serving import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
FP32 = "all-minilm-l6-v2"
TEXTS = [f"sentence number {i} about {topic}" for i, topic in enumerate(["cats", "dogs", "the sea", "trains"] * 5)]


def cli(server, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return cli_at(server.address, *args, timeout=timeout)


def cli_at(url: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "embeddings_client", "--url", url, *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def server_vectors(stub, texts) -> np.ndarray:
    response = stub.Embed(pb.EmbedRequest(model=FP32, inputs=texts), timeout=60)
    return np.array([list(e.values) for e in response.embeddings], dtype=np.float32)


def _strings(texts) -> struct_pb2.Value:
    return struct_pb2.Value(list_value=struct_pb2.ListValue(values=[struct_pb2.Value(string_value=t) for t in texts]))


@pytest.fixture(scope="module")
def jobs_stub(server):
    with grpc.insecure_channel(server.address) as channel:
        yield jobs_pb2_grpc.JobServiceStub(channel)


def test_small_text_file_is_embedded_synchronously_to_npy(server, stub, tmp_path):
    source = tmp_path / "texts.txt"
    source.write_text("\n".join(TEXTS) + "\n")
    out = tmp_path / "vectors.npy"
    done = cli(server, "embed", str(source), "--model", FP32, "--output", str(out), "--batch-size", "8")
    assert done.returncode == 0, done.stderr
    assert "submitted async job" not in done.stderr and f"wrote {len(TEXTS)} vectors" in done.stderr
    vectors = np.load(out)
    assert vectors.shape == (len(TEXTS), 384)
    assert np.allclose(vectors, server_vectors(stub, TEXTS), atol=1e-6)


def test_a_blank_line_is_an_error_naming_it_unless_skipped(server, stub, tmp_path):
    source = tmp_path / "gaps.txt"
    source.write_text("first\nsecond\n\nfourth\n  \nsixth\n")
    out = tmp_path / "vectors.npy"
    done = cli(server, "embed", str(source), "--model", FP32, "--output", str(out))
    assert done.returncode == 2 and f"{source}:3: blank line" in done.stderr and "--skip-blank" in done.stderr
    assert not out.exists()
    # --skip-blank: row i is still line i + 1; the rows of the blank lines 3 and 5 are NaN, and stderr says so.
    done = cli(server, "embed", str(source), "--model", FP32, "--output", str(out), "--skip-blank", "--batch-size", "2")
    assert done.returncode == 0, done.stderr
    assert "skipping 2 blank lines" in done.stderr and ": 3, 5" in done.stderr
    vectors = np.load(out)
    assert vectors.shape == (6, 384)
    assert np.isnan(vectors[[2, 4]]).all() and not np.isnan(vectors[[0, 1, 3, 5]]).any()
    expected = server_vectors(stub, ["first", "second", "fourth", "sixth"])
    assert np.allclose(vectors[[0, 1, 3, 5]], expected, atol=1e-6)
    # JSONL: the same indexes, and no line for a skipped one.
    jsonl = tmp_path / "vectors.jsonl"
    done = cli(server, "embed", str(source), "--model", FP32, "--output", str(jsonl), "--skip-blank")
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [r["index"] for r in rows] == [0, 1, 3, 5]
    assert np.allclose(np.array([r["embedding"] for r in rows]), expected, atol=1e-6)


def test_errors_name_the_file_line_not_the_position_in_a_batch(server, gateway, tmp_path):
    source = tmp_path / "corpus.txt"
    lines = [f"short line {i}" for i in range(7)] + ["word " * 400] + ["after"]
    source.write_text("\n".join(lines) + "\n")
    for url in (server.address, f"grpc://{server.address}", gateway.base_url):
        # --no-truncate: the server would otherwise cut the long line to the model's limit (auto_truncate).
        output = ("--output", str(tmp_path / "x.npy"))
        done = cli_at(url, "embed", str(source), *output, "--batch-size", "3", "--no-truncate")
        assert done.returncode == 1, done.stderr
        # Line 8 was input 1 of the third request: the message names the line only.
        assert f"{source}:8: this input is too long" in done.stderr, (url, done.stderr)
        assert "Input 1" not in done.stderr and "input 7" not in done.stderr.lower()
        assert not list(tmp_path.glob("*x.npy*")), "a failed run leaves no output, not even a partial one"
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text('{"text": "fine"}\n\n{"text": "also fine"}\n')
    done = cli(server, "embed", str(jsonl), "--output", str(tmp_path / "x.npy"))
    assert done.returncode == 2 and f"{jsonl}:2: blank line" in done.stderr


def test_rest_url_gives_the_same_vectors_and_jobs(server, stub, gateway, tmp_path):
    source = tmp_path / "texts.txt"
    source.write_text("\n".join(TEXTS) + "\n")
    out = tmp_path / "rest.npy"
    done = cli_at(gateway.base_url, "embed", str(source), "--model", FP32, "--output", str(out), "--batch-size", "6")
    assert done.returncode == 0, done.stderr
    assert np.allclose(np.load(out), server_vectors(stub, TEXTS), atol=1e-6)
    jobbed = tmp_path / "job.npy"
    args = ("--model", FP32, "--output", str(jobbed), "--async-threshold", "5", "--poll-interval", "0.1")
    done = cli_at(gateway.base_url, "embed", str(source), *args)
    assert done.returncode == 0 and "submitted async job job_" in done.stderr, done.stderr
    assert np.allclose(np.load(jobbed), server_vectors(stub, TEXTS), atol=1e-5)
    done = cli_at(gateway.base_url, "models")
    assert done.returncode == 0 and FP32 in done.stdout and "2048" in done.stdout
    done = cli_at(gateway.base_url, "embed", str(source), "--model", "no-such-model", "--output", str(out))
    assert done.returncode == 1 and "NOT_FOUND (model_not_found)" in done.stderr


def test_every_option_has_help_text():
    from embeddings_client.cli import build_parser

    def parsers(parser):
        yield parser
        for action in parser._actions:
            for sub in getattr(action, "choices", None) or {}:
                if isinstance(action.choices, dict):
                    yield from parsers(action.choices[sub])

    seen = 0
    for parser in parsers(build_parser()):
        for action in parser._actions:
            if action.dest in ("help", "command", "jobs_command"):
                continue
            seen += 1
            assert action.help and len(action.help) > 10, (parser.prog, action.dest)
    assert seen > 25


def test_jsonl_in_jsonl_out(server, stub, tmp_path):
    source = tmp_path / "docs.jsonl"
    source.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(TEXTS[:5])))
    out = tmp_path / "vectors.jsonl"
    done = cli(server, "embed", str(source), "--model", FP32, "--output", str(out))
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["index"] for r in rows] == list(range(5))
    assert np.allclose(np.array([r["embedding"] for r in rows]), server_vectors(stub, TEXTS[:5]), atol=1e-6)


def test_bad_input_and_unknown_model_are_clear_errors(server, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"no_text": 1}\n')
    done = cli(server, "embed", str(bad), "--output", str(tmp_path / "x.npy"))
    assert done.returncode == 2 and "bad.jsonl:2" in done.stderr
    source = tmp_path / "ok.txt"
    source.write_text("hello\n")
    done = cli(server, "embed", str(source), "--model", "no-such-model", "--output", str(tmp_path / "x.npy"))
    assert done.returncode == 1 and "NOT_FOUND" in done.stderr
    done = cli(server, "embed", str(source), "--output", str(tmp_path / "x.csv"))
    assert done.returncode == 2 and ".npy or .jsonl" in done.stderr


def test_large_file_goes_through_an_async_job(server, stub, jobs_stub, tmp_path):
    source = tmp_path / "corpus.txt"
    source.write_text("\n".join(TEXTS) + "\n")
    out = tmp_path / "vectors.npy"
    args = ("--model", FP32, "--output", str(out), "--async-threshold", "10", "--page-size", "7")
    done = cli(server, "embed", str(source), *args, "--poll-interval", "0.1")
    assert done.returncode == 0, done.stderr
    assert "submitted async job job_" in done.stderr
    job_id = done.stderr.split("submitted async job ")[1].split()[0]
    assert jobs_stub.GetJob(jobs_pb2.GetJobRequest(id=job_id), timeout=10).status == "completed"
    # Jobs run in small background batches: equal to float tolerance, not bit for bit.
    assert np.allclose(np.load(out), server_vectors(stub, TEXTS), atol=1e-5)
    # The same results again, as JSONL, with `jobs results`.
    again = tmp_path / "again.jsonl"
    done = cli(server, "jobs", "results", job_id, "--output", str(again))
    assert done.returncode == 0, done.stderr
    rows = np.array([json.loads(line)["embedding"] for line in again.read_text().splitlines()], dtype=np.float32)
    assert np.array_equal(rows, np.load(out))


def test_results_of_a_compact_job_are_refused_not_misread(server, jobs_stub, tmp_path):
    """A job asked for int8 vectors (by another client) holds bytes: written as float32 they would be garbage."""
    job = jobs_stub.AsyncEmbed(
        rest_pb2.CreateEmbeddingRequest(model=FP32, input=_strings(TEXTS[:2]), embedding_type="int8"), timeout=60
    )
    assert cli(server, "jobs", "show", job.id).returncode == 0
    deadline = time.monotonic() + 120
    while (status := jobs_stub.GetJob(jobs_pb2.GetJobRequest(id=job.id), timeout=30).status) != "completed":
        assert status in ("queued", "in_progress") and time.monotonic() < deadline, status
        time.sleep(0.1)
    out = tmp_path / "vectors.npy"
    done = cli(server, "jobs", "results", job.id, "--output", str(out))
    assert done.returncode == 1 and f"job {job.id} holds int8 vectors" in done.stderr and not out.exists()


def test_models_and_jobs_commands(server, jobs_stub):
    done = cli(server, "models")
    assert done.returncode == 0 and FP32 in done.stdout and "384" in done.stdout
    inputs = [f"to be cancelled {i}" for i in range(3000)]
    job = jobs_stub.AsyncEmbed(rest_pb2.CreateEmbeddingRequest(model=FP32, input=_strings(inputs)), timeout=60)
    done = cli(server, "jobs", "cancel", job.id)
    assert done.returncode == 0 and f"job {job.id}:" in done.stdout
    assert jobs_stub.GetJob(jobs_pb2.GetJobRequest(id=job.id), timeout=10).status in ("cancelled", "completed")
    done = cli(server, "jobs", "list", "--limit", "100")
    assert done.returncode == 0 and job.id in done.stdout
    done = cli(server, "jobs", "show", job.id)
    assert done.returncode == 0 and json.loads(done.stdout)["id"] == job.id
    done = cli(server, "jobs", "show", "job_missing")
    assert done.returncode == 1 and "NOT_FOUND" in done.stderr


@pytest.fixture(scope="module")
def held_jobs(model_repo, tmp_path_factory):
    """A server whose tenant `cli` has a token budget of 1 a minute: its jobs are accepted and wait, deterministically
    in progress until the test lifts the limit (the server re-reads limits every second)."""
    from tests.test_access import admin_cli, create_key

    data_dir = tmp_path_factory.mktemp("cli-held")
    token = create_key(data_dir, "cli", "--tenant", "cli")
    admin_cli(data_dir, "tenants", "set", "cli", "--tpm", "1")
    with ServerProcess(model_repo, "--data-dir", str(data_dir), "--models", FP32) as held:
        yield held, token, data_dir


def exit_code_or_stacks(proc: subprocess.Popen, reader: threading.Thread, lines: list[str]) -> int:
    """The process's exit code within 30 s; else it is aborted (its faulthandler prints every thread's stack on
    SIGABRT) and the test fails with what it printed, which says where it was (a CLI that inherited an ignored
    SIGINT kept polling its job)."""
    try:
        return proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        proc.wait(30)
        reader.join(10)
        pytest.fail("the CLI did not exit within 30 s of Ctrl-C; its output and stacks:\n" + "".join(lines))


def test_ctrl_c_mid_job_leaves_the_job_running(held_jobs, tmp_path):
    from tests.test_access import admin_cli

    held, token, data_dir = held_jobs
    source = tmp_path / "big.txt"
    source.write_text("\n".join(f"line {i} of a corpus that takes a few seconds to embed" for i in range(4000)))
    out = tmp_path / "big.npy"
    command = [
        sys.executable,
        "-m",
        "embeddings_client",
        "--address",
        held.address,
        "embed",
        str(source),
        "--output",
        str(out),
    ]
    options = ["--model", FP32, "--async-threshold", "100", "--poll-interval", "0.1"]
    # A suite run in the background (`make test &` from a script) has SIGINT ignored, which a child inherits and
    # Python then leaves ignored: the CLI gets Ctrl-C as a terminal would deliver it only with a handler here.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen(  # -X faulthandler: a CLI that does not exit can be made to show where it is stuck
            [sys.executable, "-X", "faulthandler", *command[1:], *options],
            cwd=ROOT,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "EMBEDDINGS_API_KEY": token},
        )
    finally:
        signal.signal(signal.SIGINT, previous)
    submitted = threading.Event()
    lines: list[str] = []

    def read() -> None:
        for line in proc.stderr:
            lines.append(line)
            if "submitted async job" in line:
                submitted.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert submitted.wait(120), "".join(lines)
    job_id = "".join(lines).split("submitted async job ")[1].split()[0]
    proc.send_signal(signal.SIGINT)  # the job cannot finish meanwhile: it waits for its token budget
    assert exit_code_or_stacks(proc, reader, lines) == 130
    reader.join(30)  # the reader drains the last lines
    stderr = "".join(lines)
    assert f"embeddings jobs results {job_id} --output {out}" in stderr
    assert not out.exists()
    metadata = (("authorization", f"Bearer {token}"),)
    with grpc.insecure_channel(held.address) as channel:
        jobs = jobs_pb2_grpc.JobServiceStub(channel)
        job = jobs.GetJob(jobs_pb2.GetJobRequest(id=job_id), metadata=metadata, timeout=10)
        assert job.status in ("queued", "in_progress") and job.progress.completed < 4000
        admin_cli(data_dir, "tenants", "set", "cli", "--tpm", "0")  # unlimited: the job resumes
        end = time.monotonic() + 300
        while (job := jobs.GetJob(jobs_pb2.GetJobRequest(id=job_id), metadata=metadata, timeout=10)).status != (
            "completed"
        ):
            assert job.status in ("queued", "in_progress") and time.monotonic() < end, job.status
            time.sleep(0.2)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "embeddings_client",
            "--address",
            held.address,
            "jobs",
            "results",
            job_id,
            "-o",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "EMBEDDINGS_API_KEY": token},
    )
    assert done.returncode == 0, done.stderr
    assert np.load(out).shape == (4000, 384)
