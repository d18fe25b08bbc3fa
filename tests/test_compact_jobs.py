"""Compact vector types (int8, uint8, binary, ubinary) in async jobs and OpenAI batches, end to end: the real server
and Envoy, REST and native gRPC. A job's results and a batch's output lines must be exactly what the interactive call
answers for the same inputs and options (fp32 model: its vectors do not depend on what they are batched with), and
the numpy reference of tests/test_compact_types.py; the vectors are stored as their compact bytes."""

from __future__ import annotations

import base64
import json
import sqlite3
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.api import httpbody_pb2
from openai import OpenAI

from service._gen.embeddings.v1 import embeddings_pb2 as pb
from service._gen.embeddings.v1 import embeddings_pb2_grpc as pb_grpc
from service._gen.embeddings.v1 import jobs_pb2, jobs_pb2_grpc, rest_pb2
from service.engine.manifest import ModelManifest
from tests.serving import EnvoyProcess, ServerProcess, http
from tests.stsb import load_pairs
from tests.test_async_jobs import FAST_JOBS, all_results, get, post, wait_job
from tests.test_batches import file_lines, line, run_batch
from tests.test_compact_types import GRPC_TYPES, ranges, reference

FP32, TINY, UNCALIBRATED = "all-minilm-l6-v2", "tiny-bert", "minilm-uncalibrated"
KINDS = ("int8", "uint8", "binary", "ubinary")
# 150 inputs in chunks of 64: three chunks, the last one partial.
TEXTS = load_pairs().sentences[:150]


def uncalibrated_copy(source: Path, target: Path) -> None:
    """all-MiniLM-L6-v2 under another id, as a model built before calibration existed: no quantization ranges."""
    target.mkdir()
    for path in source.iterdir():  # every file but the manifest (the solo graph too)
        if path.name != "manifest.json":
            (target / path.name).symlink_to(path)
    manifest = json.loads((source / "manifest.json").read_text(encoding="utf-8"))
    manifest.update(id=UNCALIBRATED, aliases=[])
    manifest.pop("quantization_ranges", None)
    (target / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    assert not ModelManifest.load(target).quantization_ranges


@pytest.fixture(scope="module")
def repo(served_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("compact-models")
    for name in (FP32, TINY):
        (repo / name).symlink_to((served_repo / name).resolve())
    uncalibrated_copy(served_repo / FP32, repo / UNCALIBRATED)
    return repo


@pytest.fixture(scope="module")
def stack(repo, tmp_path_factory):
    with (
        ServerProcess(repo, *FAST_JOBS) as server,
        EnvoyProcess(server.port, tmp_path_factory.mktemp("envoy-compact")) as envoy,
    ):
        yield server, envoy


@pytest.fixture(scope="module")
def envoy(stack) -> EnvoyProcess:
    return stack[1]


@pytest.fixture(scope="module")
def channel(stack):
    with grpc.insecure_channel(stack[0].address) as opened:
        yield opened


@pytest.fixture(scope="module")
def client(envoy) -> OpenAI:
    return OpenAI(base_url=f"{envoy.base_url}/v1", api_key="unused", max_retries=0)


def live(envoy, body: dict) -> dict:
    """The live route's answer, less `usage.prompt_tokens_details` (how many tokens the embedding cache served: a
    batch's output lines leave it out)."""
    status, _, raw = http(envoy, "POST", "/v1/embeddings", body)
    assert status == 200, raw
    answer = json.loads(raw)
    answer["usage"].pop("prompt_tokens_details")
    return answer


def decoded(items: list[dict], dtype: str) -> np.ndarray:
    """Items as JSON integers or base64 of bytes, as a [n, width] array of `dtype`."""
    rows = [
        np.frombuffer(base64.b64decode(e), dtype=dtype) if isinstance(e, str) else np.asarray(e, dtype=np.int64)
        for e in (item["embedding"] for item in items)
    ]
    return np.stack(rows)


def expected_bytes(envoy, repo: Path, kind: str, model: str = FP32, key: str = "384", **options) -> np.ndarray:
    """The numpy reference: the live call's float vectors quantized by sentence-transformers' definitions."""
    data = live(envoy, {"model": model, "input": TEXTS, "encoding_format": "float", **options})["data"]
    floats = np.array([d["embedding"] for d in data], dtype=np.float32)
    return reference(floats, kind, ranges(repo, model, key) if kind.endswith("int8") else None)


# --- async jobs ---------------------------------------------------------------------------------------------------


def body_forms(kind: str) -> dict[str, dict]:
    """The two ways a REST call asks for a compact type: JSON integers, and base64 of the bytes."""
    return {
        f"{kind}-integers": {"encoding_format": kind},
        f"{kind}-base64": {"encoding_format": "base64", "embedding_type": kind},
    }


def test_jobs_answer_exactly_what_the_live_call_does(envoy, repo, stack):
    forms = {name: form for kind in KINDS for name, form in body_forms(kind).items()}
    jobs = {}
    for name, form in forms.items():  # all submitted first: they run side by side, interleaving their chunks
        status, job = post(envoy, "/v1/async/embeddings", {"model": FP32, "input": TEXTS, **form})
        assert status == 200, job
        kind = name.split("-")[0]
        assert (job["encoding_format"], job["embedding_type"]) == (form["encoding_format"], kind)
        jobs[name] = job["id"]
    for name, form in forms.items():
        kind = name.split("-")[0]
        done = wait_job(envoy, jobs[name])
        assert done["progress"] == {"completed": len(TEXTS), "total": len(TEXTS)} and done["embedding_type"] == kind
        got = all_results(envoy, jobs[name], page=50)
        expected = live(envoy, {"model": FP32, "input": TEXTS, **form})
        assert got == expected["data"], name  # the same JSON items, integers or base64, as the live call's
        reference_bytes = expected_bytes(envoy, repo, kind)
        assert np.array_equal(decoded(got, reference_bytes.dtype.name), reference_bytes.astype(np.int64)
                              if "integers" in name else reference_bytes), name  # fmt: skip
    # Stored as their bytes: 384 per int8 vector, 48 per binary one (float32: 1,536).
    stored = sqlite_rows(stack[0], "SELECT c.job_id, c.dtype, length(c.vectors) / c.count FROM chunks c")
    widths = {(job_id, dtype, width) for job_id, dtype, width in stored if job_id in jobs.values()}
    assert widths == {
        (jobs[name], "uint8" if name.startswith("u") else "int8", 48 if "binary" in name else 384) for name in forms
    }


def sqlite_rows(server: ServerProcess, sql: str) -> list[tuple]:
    with sqlite3.connect(server.data_dir / "jobs.sqlite3") as raw:
        return raw.execute(sql).fetchall()


def test_dimensions_and_normalization_apply_before_quantizing_in_jobs(envoy, repo):
    """tiny-bert shortened to 16, unnormalized: quantized with that size's own ranges, as the live call does."""
    options = {"dimensions": 16, "normalize": False}
    status, job = post(envoy, "/v1/async/embeddings", {"model": TINY, "input": TEXTS, "encoding_format": "uint8",
                                                       **options})  # fmt: skip
    assert status == 200 and job["dimensions"] == 16, job
    wait_job(envoy, job["id"])
    got = all_results(envoy, job["id"], page=1000)
    assert got == live(envoy, {"model": TINY, "input": TEXTS, "encoding_format": "uint8", **options})["data"]
    expected = expected_bytes(envoy, repo, "uint8", TINY, "16-unnormalized", **options)
    assert np.array_equal(decoded(got, "uint8"), expected.astype(np.int64))


def test_grpc_jobs_take_the_same_fields_and_give_the_embed_calls_bytes(channel):
    jobs = jobs_pb2_grpc.JobServiceStub(channel)
    embed = pb_grpc.EmbeddingServiceStub(channel)
    for kind, enum in GRPC_TYPES.items():
        job = jobs.AsyncEmbed(
            rest_pb2.CreateEmbeddingRequest(model=FP32, input=text_list(TEXTS), encoding_format="base64",
                                            embedding_type=kind),
            timeout=60,
        )  # fmt: skip
        assert (job.status, job.encoding_format, job.embedding_type) == ("queued", "base64", kind)
        done = wait_grpc_job(jobs, job.id)
        page = jobs.GetJobResults(jobs_pb2.GetJobResultsRequest(id=done.id, limit=len(TEXTS)), timeout=60)
        assert isinstance(page, httpbody_pb2.HttpBody)
        got = [base64.b64decode(item["embedding"]) for item in json.loads(page.data)["data"]]
        direct = embed.Embed(pb.EmbedRequest(model=FP32, inputs=TEXTS, embedding_type=enum), timeout=60)
        assert got == [e.data for e in direct.embeddings], kind


def text_list(texts: list[str]):
    from google.protobuf import struct_pb2

    value = struct_pb2.Value()
    value.list_value.extend(texts)
    return value


def wait_grpc_job(stub, job_id: str) -> jobs_pb2.Job:
    from tests.test_async_jobs import wait_for

    return wait_for(
        lambda: (job := stub.GetJob(jobs_pb2.GetJobRequest(id=job_id), timeout=30)).status == "completed" and job,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("body", "param", "says"),
    [
        ({"encoding_format": "int4"}, "encoding_format", "'encoding_format' must be one of"),
        ({"embedding_type": "int4"}, "embedding_type", "'embedding_type' must be one of"),
        ({"encoding_format": "base64", "embedding_type": "float16"}, "embedding_type", "'embedding_type' must be"),
        ({"encoding_format": "int8", "embedding_type": "binary"}, "embedding_type", "asks for int8 vectors"),
        ({"model": UNCALIBRATED, "encoding_format": "int8"}, "embedding_type", "has no calibrated ranges for int8"),
        ({"model": UNCALIBRATED, "encoding_format": "base64", "embedding_type": "uint8"}, "embedding_type",
         "has no calibrated ranges for uint8"),
    ],
)  # fmt: skip
def test_bad_types_are_refused_before_a_job_exists(envoy, body, param, says):
    before = get(envoy, "/v1/async/jobs?limit=100")[1]["data"]
    for path in ("/v1/async/embeddings", "/v1/embeddings"):  # refused as the live call refuses it
        status, answer = post(envoy, path, {"model": FP32, "input": ["x"], **body})
        assert status == 400, (path, answer)
        error = answer["error"]
        assert sorted(error) == ["code", "message", "param", "type"]
        assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", "invalid_input", param)
        assert says in error["message"], error
    assert get(envoy, "/v1/async/jobs?limit=100")[1]["data"] == before


def test_a_model_without_ranges_still_gives_the_sign_bit_types(envoy):
    """binary/ubinary need no calibration: accepted for a model without ranges, and equal to the live call."""
    status, job = post(envoy, "/v1/async/embeddings", {"model": UNCALIBRATED, "input": TEXTS[:5],
                                                       "encoding_format": "ubinary"})  # fmt: skip
    assert status == 200, job
    wait_job(envoy, job["id"])
    expected = live(envoy, {"model": UNCALIBRATED, "input": TEXTS[:5], "encoding_format": "ubinary"})
    assert all_results(envoy, job["id"], page=1000) == expected["data"]


def test_grpc_bad_types_are_invalid_argument(channel):
    jobs = jobs_pb2_grpc.JobServiceStub(channel)
    for model, kind, says in ((FP32, "int4", "'embedding_type' must be one of"),
                              (UNCALIBRATED, "int8", "has no calibrated ranges")):  # fmt: skip
        with pytest.raises(grpc.RpcError) as caught:
            jobs.AsyncEmbed(rest_pb2.CreateEmbeddingRequest(model=model, input=text_list(["x"]), embedding_type=kind),
                            timeout=60)  # fmt: skip
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and says in caught.value.details()


# --- OpenAI batches -----------------------------------------------------------------------------------------------


def test_batch_lines_answer_what_the_live_route_answers(envoy, client):
    bodies = {
        f"{name}-{i}": {"model": FP32, "input": TEXTS[i * 7 : i * 7 + 1 + i % 3], **form}
        for kind in KINDS
        for name, form in body_forms(kind).items()
        for i in range(3)
    }
    bodies["floats"] = {"model": FP32, "input": TEXTS[:4]}
    bodies["base64-floats"] = {"model": FP32, "input": TEXTS[:4], "encoding_format": "base64"}
    bad = {
        "unknown-type": {"model": FP32, "input": "x", "embedding_type": "int4"},
        "unknown-format": {"model": FP32, "input": "x", "encoding_format": "int4"},
        "conflicting": {"model": FP32, "input": "x", "encoding_format": "uint8", "embedding_type": "int8"},
    }
    lines = [line(custom_id, body) for custom_id, body in {**bodies, **bad}.items()]
    batch = run_batch(client, lines)
    assert batch.status == "completed" and batch.request_counts.completed == len(bodies), batch
    output = file_lines(client, batch.output_file_id)
    assert set(output) == set(bodies)
    for custom_id, body in bodies.items():
        response = output[custom_id]["response"]
        assert response["status_code"] == 200
        assert response["body"] == live(envoy, body), custom_id  # vectors, usage and model: the live call's
    assert_refused_like_live(envoy, file_lines(client, batch.error_file_id), bad)


def assert_refused_like_live(envoy, errors: dict[str, dict], bad: dict[str, dict]) -> None:
    assert set(errors) == set(bad)
    for custom_id, body in bad.items():
        status, _, raw = http(envoy, "POST", "/v1/embeddings", body)
        response = errors[custom_id]["response"]
        assert (response["status_code"], response["body"]) == (status, json.loads(raw)), custom_id
        assert status == 400 and response["body"]["error"]["code"] == "invalid_input"


def test_batch_lines_for_a_model_without_ranges(envoy, client):
    """int8 of a model without calibrated ranges: that line's error is the live call's 400, the others run."""
    good = {"bits": {"model": UNCALIBRATED, "input": TEXTS[:3], "encoding_format": "binary"}}
    bad = {"scalar": {"model": UNCALIBRATED, "input": TEXTS[:3], "encoding_format": "int8"}}
    batch = run_batch(client, [line(custom_id, body) for custom_id, body in {**good, **bad}.items()])
    assert batch.status == "completed" and (batch.request_counts.completed, batch.request_counts.failed) == (1, 1)
    assert file_lines(client, batch.output_file_id)["bits"]["response"]["body"] == live(envoy, good["bits"])
    errors = file_lines(client, batch.error_file_id)
    assert_refused_like_live(envoy, errors, bad)
    assert errors["scalar"]["response"]["body"]["error"]["param"] == "embedding_type"


def test_compact_jobs_in_postgresql_outlive_their_server(repo, tmp_path_factory):
    """Shared mode: compact jobs stored in PostgreSQL (as bytes, chunks.dtype) by one server are read back, across
    chunk boundaries, by another started after it stopped, exactly as the live call answers."""
    import psycopg

    from tests.shared_stores import temp_redis_prefix, temp_schema

    forms = {"int8": {"encoding_format": "int8"}, "binary": {"encoding_format": "base64", "embedding_type": "binary"}}
    with temp_schema() as store_url, temp_redis_prefix() as prefix:
        args = ("--store-url", store_url, "--redis-key-prefix", prefix, "--models", FP32, *FAST_JOBS)
        with (
            ServerProcess(repo, *args) as first,
            EnvoyProcess(first.port, tmp_path_factory.mktemp("envoy-pg-a")) as envoy,
        ):
            jobs, expected = {}, {}
            for kind, form in forms.items():
                status, job = post(envoy, "/v1/async/embeddings", {"model": FP32, "input": TEXTS, **form})
                assert status == 200, job
                jobs[kind] = job["id"]
            for kind, form in forms.items():
                wait_job(envoy, jobs[kind])
                expected[kind] = live(envoy, {"model": FP32, "input": TEXTS, **form})["data"]
        with (
            ServerProcess(repo, *args) as second,
            EnvoyProcess(second.port, tmp_path_factory.mktemp("envoy-pg-b")) as envoy,
        ):
            for kind in forms:
                assert all_results(envoy, jobs[kind], page=50) == expected[kind], kind
        with psycopg.connect(store_url) as conn:
            stored = conn.execute(
                "SELECT job_id, dtype, length(vectors) / count FROM chunks WHERE job_id = ANY(%s)",
                (list(jobs.values()),),
            ).fetchall()
    assert {(job_id, dtype, width) for job_id, dtype, width in stored} == {
        (jobs["int8"], "int8", 384),
        (jobs["binary"], "int8", 48),
    }
