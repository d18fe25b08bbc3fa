"""OpenAI's Batch API end to end: the real server and Envoy, the official openai SDKs (Python and Node), real
webhook receivers, native gRPC. Vectors are checked against the live /v1/embeddings answers."""

from __future__ import annotations

import base64
import http.client
import io
import json
import shutil
import subprocess
import time

import grpc
import httpx2
import numpy as np
import openai
import pytest
from google.api import httpbody_pb2
from openai import OpenAI

from service._gen.embeddings.v1 import batches_pb2, batches_pb2_grpc
from service.jobs import webhooks
from tests.serving import ROOT, EnvoyProcess, ServerProcess
from tests.stsb import load_pairs
from tests.test_access import create_key
from tests.test_async_jobs import Receiver
from tests.test_grpcurl import grpcurl

FP32, INT8 = "all-minilm-l6-v2", "all-minilm-l6-v2-int8"
FAST = ("--webhook-allow-private", "true", "--webhook-retry-schedule", "1s,1s", "--job-chunk-size", "64")
FINAL = ("completed", "failed", "cancelled", "expired")


@pytest.fixture(scope="module")
def stack(model_repo, tmp_path_factory):
    with (
        ServerProcess(model_repo, *FAST) as server,
        EnvoyProcess(server.port, tmp_path_factory.mktemp("envoy-batches")) as envoy,
    ):
        yield server, envoy


@pytest.fixture(scope="module")
def client(stack) -> OpenAI:
    return OpenAI(base_url=f"{stack[1].base_url}/v1", api_key="unused", max_retries=0)


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def line(custom_id: str, body: dict, url: str = "/v1/embeddings", method: str = "POST") -> str:
    return json.dumps({"custom_id": custom_id, "method": method, "url": url, "body": body})


def upload(client: OpenAI, lines: list[str], name: str = "requests.jsonl"):
    return client.files.create(file=(name, io.BytesIO(("\n".join(lines) + "\n").encode())), purpose="batch")


def run_batch(client: OpenAI, lines: list[str], metadata: dict | None = None, timeout: float = 300.0):
    uploaded = upload(client, lines)
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h", metadata=metadata
    )
    assert batch.status == "validating" and batch.input_file_id == uploaded.id
    return wait_batch(client, batch.id, timeout=timeout)


def wait_batch(client: OpenAI, batch_id: str, statuses=FINAL, timeout: float = 300.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        batch = client.batches.retrieve(batch_id)
        if batch.status in statuses:
            return batch
        time.sleep(0.2)
    raise AssertionError(f"batch {batch_id} is still {batch.status}")


def file_lines(client: OpenAI, file_id: str | None) -> dict[str, dict]:
    if file_id is None:
        return {}
    lines = [json.loads(raw) for raw in client.files.content(file_id).text.splitlines()]
    by_id = {entry["custom_id"]: entry for entry in lines}
    assert len(by_id) == len(lines), "a custom_id answered twice"
    return by_id


def vectors_of(body: dict) -> np.ndarray:
    rows = []
    for item in body["data"]:
        embedding = item["embedding"]
        if isinstance(embedding, str):
            rows.append(np.frombuffer(base64.b64decode(embedding), dtype="<f4"))
        else:
            rows.append(np.asarray(embedding, dtype=np.float32))
    return np.stack(rows)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def live(stack, body: dict) -> dict:
    response = httpx2.post(f"{stack[1].base_url}/v1/embeddings", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def mixed_requests(n: int) -> tuple[list[str], dict[str, dict]]:
    """n requests of STS-B sentences: strings and arrays, float and base64, two option groups (normalize)."""
    sentences = load_pairs().sentences
    bodies = {}
    for i in range(n):
        texts = sentences[3 * i : 3 * i + 1 + i % 3]
        body: dict = {"model": FP32, "input": texts[0] if i % 4 == 0 else texts}
        if i % 2:
            body["encoding_format"] = "base64"
        if i % 5 == 0:
            body["normalize"] = False
        bodies[f"request-{i}"] = body
    return [line(custom_id, body) for custom_id, body in bodies.items()], bodies


def test_sdk_runs_the_whole_flow_and_vectors_equal_live_calls(stack, client, receiver):
    hook = httpx2.post(f"{stack[1].base_url}/v1/webhooks", json={"url": receiver.url("/batches")}).json()
    lines, bodies = mixed_requests(40)
    bad = {
        "empty": {"model": FP32, "input": ""},
        "unknown-model": {"model": "no-such-model", "input": "x"},
        "too-long": {"model": FP32, "input": "word " * 600, "truncate": False},
    }
    lines[5:5] = [line(custom_id, body) for custom_id, body in bad.items()]
    batch = run_batch(client, lines, metadata={"webhook_id": hook["id"], "corpus": "stsb"})

    assert batch.status == "completed" and batch.model == FP32 and batch.errors is None
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (43, 40, 3)
    assert batch.in_progress_at and batch.finalizing_at and batch.completed_at and batch.expires_at
    assert batch.usage.input_tokens > 0 and batch.metadata == {"webhook_id": hook["id"], "corpus": "stsb"}
    output = file_lines(client, batch.output_file_id)
    assert set(output) == set(bodies)
    for custom_id, body in bodies.items():
        entry = output[custom_id]
        assert entry["error"] is None and entry["id"].startswith("batch_req_")
        response = entry["response"]
        assert response["status_code"] == 200 and response["request_id"]
        expected = live(stack, body)
        got = response["body"]
        assert got["model"] == expected["model"]
        # The live call finds the batch's vectors in the embedding cache: the same tokens, counted as cached; the
        # batch's line (OpenAI's shape) leaves the cache details out.
        assert got["usage"] == {
            "prompt_tokens": expected["usage"]["prompt_tokens"],
            "total_tokens": expected["usage"]["total_tokens"],
        }
        assert expected["usage"]["prompt_tokens_details"]["cached_tokens"] == expected["usage"]["prompt_tokens"]
        assert [d["index"] for d in got["data"]] == [d["index"] for d in expected["data"]]
        assert isinstance(got["data"][0]["embedding"], str) == (body.get("encoding_format") == "base64")
        assert cosines(vectors_of(got), vectors_of(expected)).min() >= 0.9999, custom_id

    errors = file_lines(client, batch.error_file_id)
    assert set(errors) == set(bad)
    codes = {cid: (e["response"]["status_code"], e["response"]["body"]["error"]["code"]) for cid, e in errors.items()}
    assert codes == {
        "empty": (400, "invalid_input"),
        "unknown-model": (404, "model_not_found"),
        "too-long": (400, "context_length_exceeded"),
    }
    assert all(set(e["response"]["body"]["error"]) == {"message", "type", "param", "code"} for e in errors.values())

    output_file = client.files.retrieve(batch.output_file_id)
    assert output_file.purpose == "batch_output" and output_file.bytes > 0
    [event] = wait_for(lambda: receiver.events("/batches"))
    request = receiver.requests[0]
    assert webhooks.verify(hook["secret"], request["headers"], request["body"])
    assert event["type"] == "batch.completed" and event["data"]["id"] == batch.id
    assert event["data"]["output_file_id"] == batch.output_file_id and event["data"]["status"] == "completed"


def wait_for(predicate, timeout: float = 60.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def test_bad_lines_alone_complete_into_the_error_file(client):
    batch = run_batch(client, [line("a", {"model": FP32, "input": []}), line("b", {"model": FP32, "dimensions": 7})])
    assert batch.status == "completed" and batch.output_file_id is None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (0, 2)
    assert set(file_lines(client, batch.error_file_id)) == {"a", "b"}


def test_line_bodies_ignore_metadata_as_any_field_they_do_not_use(client):
    """A line's body may carry fields /v1/embeddings does not use: ignored, as they always were, `metadata` too
    (the async jobs' field of CreateEmbeddingRequest, which the live route refuses), whatever its type: a batch
    line's request keeps nothing of its own but its custom_id."""
    plain = {"model": FP32, "input": ["batch lines", "with metadata"]}
    extra = {"object": {"metadata": {"k": "v"}}, "string": {"metadata": "x"}, "unknown": {"colour": 1}}
    batch = run_batch(client, [line("plain", plain), *(line(cid, {**plain, **more}) for cid, more in extra.items())])
    assert (batch.request_counts.completed, batch.request_counts.failed) == (4, 0)
    output = file_lines(client, batch.output_file_id)
    assert set(output) == {"plain", *extra}
    assert all(
        entry["response"]["body"]["data"] == output["plain"]["response"]["body"]["data"] for entry in output.values()
    )


@pytest.mark.parametrize(
    ("lines", "code", "line_number"),
    [
        ([line("a", {"model": FP32, "input": "x"}), "not json"], "invalid_json_line", 2),
        ([line("a", {"model": FP32, "input": "x"}), line("b", {"input": "y"}), line("a", {"input": "z"})],
         "duplicate_custom_id", 3),
        ([line("a", {"model": FP32, "input": "x"}, url="/v1/chat/completions")], "url_mismatch", 1),
        ([line("a", {"model": FP32, "input": "x"}, method="GET")], "invalid_method", 1),
        ([line("a", {"model": FP32, "input": "x"}), line("b", {"model": INT8, "input": "y"})], "model_mismatch", 2),
        (['{"custom_id": "a", "method": "POST", "url": "/v1/embeddings"}'], "missing_required_parameter", 1),
        ([], "empty_file", 1),
    ],
)  # fmt: skip
def test_malformed_files_fail_the_batch_as_openai_does(client, lines, code, line_number):
    batch = run_batch(client, lines)
    assert batch.status == "failed" and batch.failed_at and batch.output_file_id is None
    first = batch.errors.data[0]
    assert (first.code, first.line) == (code, line_number), batch.errors
    assert first.message


def post_file(stack, files: dict, data: dict, headers: dict | None = None) -> httpx2.Response:
    return httpx2.post(f"{stack[1].base_url}/v1/files", files=files, data=data, headers=headers or {}, timeout=120)


def test_bad_uploads_get_openai_errors(stack):
    jsonl = ("requests.jsonl", b'{"custom_id": "a"}\n')
    cases = [
        ({"file": jsonl}, {"purpose": "fine-tune"}, 400, "purpose"),
        ({"file": jsonl}, {"purpose": "nonsense"}, 400, "purpose"),
        ({"file": ("requests.csv", b"a,b\n")}, {"purpose": "batch"}, 400, "file"),
        ({"file": jsonl}, {}, 400, "purpose"),
        ({"purpose": (None, "batch")}, {}, 400, "file"),  # multipart without a file
        ({"file": jsonl}, {"purpose": "batch", "extra": "x"}, 400, "extra"),
        ({"file": jsonl}, {"purpose": "batch", "expires_after[anchor]": "created_at", "expires_after[seconds]": "5"},
         400, "expires_after.seconds"),
        ({"file": ("long.jsonl", b"x" * (16 * 1024 * 1024 + 10))}, {"purpose": "batch"}, 400, "file"),
    ]  # fmt: skip
    for files, data, status, param in cases:
        response = post_file(stack, files, data)
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert error["param"] == param and error["type"] == "invalid_request_error", error
    not_jsonl = post_file(stack, {"file": ("requests.csv", b"a,b\n")}, {"purpose": "batch"}).json()["error"]
    assert not_jsonl["message"] == "Invalid file format for Batch API. Must be .jsonl"
    not_multipart = httpx2.post(f"{stack[1].base_url}/v1/files", json={"purpose": "batch"})
    assert not_multipart.status_code == 400 and not_multipart.json()["error"]["message"].startswith("Upload the file")


def test_a_declared_body_over_200_mib_is_refused_before_it_is_read(stack):
    connection = http.client.HTTPConnection("127.0.0.1", stack[1].port, timeout=30)
    connection.putrequest("POST", "/v1/files")
    connection.putheader("content-type", "multipart/form-data; boundary=x")
    connection.putheader("content-length", str(300 * 1024 * 1024))
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 413
    assert json.loads(response.read())["error"]["code"] == "request_too_large"
    connection.close()


def test_create_batch_errors(stack, client):
    uploaded = upload(client, [line("a", {"model": FP32, "input": "x"})])
    base = {"input_file_id": uploaded.id, "endpoint": "/v1/embeddings", "completion_window": "24h"}
    cases = [
        ({**base, "endpoint": "/v1/chat/completions"}, 400, "endpoint"),
        ({**base, "completion_window": "1h"}, 400, "completion_window"),
        ({"endpoint": "/v1/embeddings", "completion_window": "24h"}, 400, "input_file_id"),
        ({**base, "input_file_id": "file-nope"}, 404, "input_file_id"),
        ({**base, "metadata": {f"k{i}": "v" for i in range(17)}}, 400, "metadata"),
        ({**base, "metadata": {"webhook_id": "wh_nope"}}, 400, "metadata.webhook_id"),
    ]
    for body, status, param in cases:
        response = httpx2.post(f"{stack[1].base_url}/v1/batches", json=body)
        assert response.status_code == status, response.text
        assert response.json()["error"]["param"] == param
    for path in ("/v1/batches/batch_nope", "/v1/files/file-nope", "/v1/files/file-nope/content"):
        response = httpx2.get(f"{stack[1].base_url}{path}")
        assert response.status_code == 404 and set(response.json()["error"]) == {"message", "type", "param", "code"}
    with pytest.raises(openai.NotFoundError):
        client.batches.cancel("batch_nope")


def test_output_files_are_not_batch_inputs_and_files_can_be_deleted(client):
    batch = run_batch(client, [line("a", {"model": FP32, "input": "x"})])
    with pytest.raises(openai.BadRequestError):
        client.batches.create(input_file_id=batch.output_file_id, endpoint="/v1/embeddings", completion_window="24h")
    deleted = client.files.delete(batch.output_file_id)
    assert deleted.deleted and deleted.id == batch.output_file_id
    with pytest.raises(openai.NotFoundError):
        client.files.content(batch.output_file_id)
    with pytest.raises(openai.NotFoundError):
        client.files.delete(batch.output_file_id)


def test_cancel_keeps_what_was_done(stack, client, receiver):
    hook = httpx2.post(f"{stack[1].base_url}/v1/webhooks", json={"url": receiver.url("/cancel")}).json()
    sentences = load_pairs().sentences
    lines = [line(f"c{i}", {"model": FP32, "input": sentences[i % len(sentences)]}) for i in range(4000)]
    uploaded = upload(client, lines)
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h",
        metadata={"webhook_id": hook["id"]},
    )  # fmt: skip
    wait_batch(client, batch.id, statuses=("in_progress", *FINAL))
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled", "completed") and cancelling.cancelling_at
    done = wait_batch(client, batch.id)
    assert done.status == "cancelled" and done.cancelled_at
    counts = done.request_counts
    assert counts.total == 4000 and counts.completed + counts.failed == 4000 and counts.failed > 0
    output, errors = file_lines(client, done.output_file_id), file_lines(client, done.error_file_id)
    assert len(output) == counts.completed and set(output) | set(errors) == {f"c{i}" for i in range(4000)}
    assert {e["error"]["code"] for e in errors.values()} == {"batch_cancelled"}
    [event] = wait_for(lambda: receiver.events("/cancel"))
    assert event["type"] == "batch.cancelled" and event["data"]["id"] == batch.id


def test_lists_page_with_cursors(client):
    ids = [upload(client, [line("a", {"model": FP32, "input": "x"})], name=f"p{i}.jsonl").id for i in range(3)]
    first = client.files.list(limit=2, purpose="batch")
    assert [f.id for f in first.data] == ids[::-1][:2] and first.has_more
    rest = client.files.list(limit=2, after=first.data[-1].id, purpose="batch")
    assert rest.data[0].id == ids[0]
    oldest = client.files.list(limit=1, order="asc")
    assert oldest.data[0].created_at <= min(f.created_at for f in first.data)
    batches = [client.batches.create(input_file_id=i, endpoint="/v1/embeddings", completion_window="24h") for i in ids]
    page = client.batches.list(limit=2)
    assert [b.id for b in page.data] == [b.id for b in batches[::-1][:2]] and page.has_more
    after = client.batches.list(limit=2, after=page.data[-1].id)
    assert after.data[0].id == batches[0].id
    for batch in batches:
        wait_batch(client, batch.id)


def test_native_grpc_upload_and_reads(stack, client):
    server, _ = stack
    boundary = "grpc-boundary"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="g.jsonl"\r\n\r\n'
        + line("g", {"model": FP32, "input": "over grpc"})
        + f"\n\r\n--{boundary}--\r\n"
    ).encode()
    pieces = [body[i : i + 7] for i in range(0, len(body), 7)]  # many small messages, split anywhere
    messages = [httpbody_pb2.HttpBody(content_type=f"multipart/form-data; boundary={boundary}", data=pieces[0])]
    messages += [httpbody_pb2.HttpBody(data=piece) for piece in pieces[1:]]
    with grpc.insecure_channel(server.address) as channel:
        files = batches_pb2_grpc.FileServiceStub(channel)
        created = json.loads(files.CreateFile(iter(messages), timeout=30).data)
        assert created["object"] == "file" and created["filename"] == "g.jsonl"
        content = b"".join(
            m.data for m in files.GetFileContent(batches_pb2.GetFileContentRequest(file_id=created["id"]))
        )
        assert json.loads(content)["custom_id"] == "g"
        batches = batches_pb2_grpc.BatchServiceStub(channel)
        request = batches_pb2.CreateBatchRequest(
            input_file_id=created["id"], endpoint="/v1/embeddings", completion_window="24h"
        )
        batch = json.loads(batches.CreateBatch(request, timeout=30).data)
        listed = json.loads(batches.ListBatches(batches_pb2.ListBatchesRequest(limit=100), timeout=30).data)
        assert batch["id"] in [b["id"] for b in listed["data"]]
        with pytest.raises(grpc.RpcError) as missing:
            batches.RetrieveBatch(batches_pb2.RetrieveBatchRequest(batch_id="batch_nope"), timeout=30)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert wait_batch(client, batch["id"]).status == "completed"


def test_grpcurl_sees_and_calls_the_batch_services(stack, client):
    server, _ = stack
    services = grpcurl(server, "list").stdout.split()
    assert {"embeddings.v1.FileService", "embeddings.v1.BatchService"} <= set(services)
    batch = run_batch(client, [line("grpcurl", {"model": FP32, "input": "x"})])
    answer = grpcurl(server, "embeddings.v1.BatchService/RetrieveBatch", data={"batch_id": batch.id})
    assert answer.returncode == 0, answer.stderr
    body = json.loads(base64.b64decode(json.loads(answer.stdout)["data"]))
    assert body["id"] == batch.id and body["status"] == "completed"


def test_node_sdk_runs_the_flow(stack, tmp_path):
    node = shutil.which("node")
    modules = ROOT / "build" / "npm" / "node_modules"
    if node is None:
        pytest.skip("node is not installed")
    lines, bodies = mixed_requests(8)
    bad = {
        "empty": {"model": FP32, "input": ""},
        "unknown-model": {"model": "no-such-model", "input": "x"},
        "too-long": {"model": FP32, "input": "word " * 600, "truncate": False},
    }
    lines[3:3] = [line(custom_id, body) for custom_id, body in bad.items()]
    path = tmp_path / "node.jsonl"
    path.write_text("\n".join(lines) + "\n")
    done = subprocess.run(
        [node, str(ROOT / "tests" / "node" / "batches.mjs"), f"{stack[1].base_url}/v1", str(path)],
        env={"OPENAI_NODE_MODULES": str(modules), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["status"] == "completed" and result["counts"] == {"total": 11, "completed": 8, "failed": 3}
    output = {e["custom_id"]: e for e in map(json.loads, result["output"].splitlines())}
    assert set(output) == set(bodies)
    for custom_id, body in bodies.items():
        got = vectors_of(output[custom_id]["response"]["body"])
        assert cosines(got, vectors_of(live(stack, body))).min() >= 0.9999
    errors = {e["custom_id"]: e for e in map(json.loads, result["errors"].splitlines())}
    assert {cid: e["response"]["body"]["error"]["code"] for cid, e in errors.items()} == {
        "empty": "invalid_input",
        "unknown-model": "model_not_found",
        "too-long": "context_length_exceeded",
    }


# --- tenants and keys ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keyed(model_repo, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("batch-keys")
    keys = {
        "acme": create_key(data_dir, "acme", "--tenant", "acme"),
        "globex": create_key(data_dir, "globex", "--tenant", "globex"),
        "int8-only": create_key(data_dir, "int8-only", "--tenant", "acme", "--models", INT8),
    }
    with (
        # A small upload cap, to see the server enforce it on a streamed (chunked) upload.
        ServerProcess(
            model_repo, "--data-dir", str(data_dir), "--job-chunk-size", "64", "--batch-max-file-bytes", "1000000"
        ) as server,
        EnvoyProcess(server.port, tmp_path_factory.mktemp("envoy-batch-keys")) as envoy,
    ):
        yield envoy, keys


def keyed_client(keyed, name: str | None) -> OpenAI:
    envoy, keys = keyed
    return OpenAI(base_url=f"{envoy.base_url}/v1", api_key=keys.get(name, "sk-nope"), max_retries=0)


def test_files_and_batches_belong_to_their_tenant(keyed):
    acme, globex = keyed_client(keyed, "acme"), keyed_client(keyed, "globex")
    batch = run_batch(acme, [line("a", {"model": FP32, "input": "tenant text"})])
    assert batch.status == "completed"
    for call in (
        lambda: globex.files.retrieve(batch.input_file_id),
        lambda: globex.files.content(batch.output_file_id),
        lambda: globex.files.delete(batch.input_file_id),
        lambda: globex.batches.retrieve(batch.id),
        lambda: globex.batches.cancel(batch.id),
        lambda: globex.batches.create(input_file_id=batch.input_file_id, endpoint="/v1/embeddings",
                                      completion_window="24h"),
    ):  # fmt: skip
        with pytest.raises(openai.NotFoundError):
            call()
    assert globex.files.list().data == [] and globex.batches.list().data == []
    assert acme.batches.retrieve(batch.id).id == batch.id


def test_uploads_need_a_key_and_batches_see_only_the_keys_models(keyed):
    anonymous = keyed_client(keyed, None)
    with pytest.raises(openai.AuthenticationError):
        upload(anonymous, [line("a", {"model": FP32, "input": "x"})])
    restricted = keyed_client(keyed, "int8-only")
    batch = run_batch(restricted, [line("a", {"model": FP32, "input": "x"}), line("b", {"model": INT8, "input": "y"})])
    assert batch.status == "completed" and batch.model == INT8
    errors = file_lines(restricted, batch.error_file_id)
    assert errors["a"]["response"]["status_code"] == 404
    assert errors["a"]["response"]["body"]["error"]["code"] == "model_not_found"
    assert set(file_lines(restricted, batch.output_file_id)) == {"b"}


def test_a_streamed_upload_over_the_cap_is_cut_off_with_413(keyed):
    envoy, keys = keyed
    boundary = "cap"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.jsonl"\r\n\r\n'
    ).encode()

    def body():  # no Content-Length: chunked, so only the server can see the size
        yield head
        for _ in range(40):
            yield (line("x", {"model": FP32, "input": "y" * 1000}) + "\n").encode() * 50

    response = httpx2.post(
        f"{envoy.base_url}/v1/files",
        content=body(),
        headers={
            "content-type": f"multipart/form-data; boundary={boundary}",
            "authorization": f"Bearer {keys['acme']}",
        },
        timeout=60,
    )
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "request_too_large"
    assert all(f.filename != "big.jsonl" for f in keyed_client(keyed, "acme").files.list().data)  # discarded
