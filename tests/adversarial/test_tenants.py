"""Tenant isolation on every resource: another tenant's job, results, webhook and deliveries do not exist for you.

Tenant acme creates a job (with a webhook) and a webhook; tenant globex probes each by id, over REST and gRPC: get,
cancel, results, deliveries and delete answer 404 exactly as for an id that never existed, lists hold none of
acme's, and acme's webhook cannot be named as globex's job's webhook_id. Afterwards acme's resources are intact.
"""

from __future__ import annotations

import grpc
import pytest

from service._gen.embeddings.v1 import jobs_pb2 as pb
from tests.adversarial.probes import (
    MODEL,
    Stack,
    assert_openai_error,
    assert_still_serving,
    raw_call,
    refused,
    wait_for,
)


@pytest.fixture(scope="module")
def acme(stack: Stack) -> dict:
    key = stack.keys["acme"]
    status, _, hook = stack.rest("POST", "/v1/webhooks", key, {"url": "https://hooks.example.com/acme"})
    assert status == 200, hook
    body = {"model": MODEL, "input": ["one", "two"], "metadata": {"webhook_id": hook["id"], "owner": "acme"}}
    status, _, job = stack.rest("POST", "/v1/async/embeddings", key, body)
    assert status == 200, job
    wait_for(lambda: stack.rest("GET", f"/v1/async/jobs/{job['id']}", key)[2]["status"] == "completed")
    return {"job": job["id"], "webhook": hook["id"]}


def by_id_routes(acme: dict) -> list[tuple[str, str, str]]:
    job, hook = acme["job"], acme["webhook"]
    return [
        ("GET", f"/v1/async/jobs/{job}", "job_not_found"),
        ("POST", f"/v1/async/jobs/{job}/cancel", "job_not_found"),
        ("GET", f"/v1/async/jobs/{job}/results", "job_not_found"),
        ("GET", f"/v1/webhooks/{hook}/deliveries", "webhook_not_found"),
        ("DELETE", f"/v1/webhooks/{hook}", "webhook_not_found"),
    ]


def test_another_tenants_resources_are_404_over_rest(stack: Stack, acme: dict):
    for verb, path, code in by_id_routes(acme):
        probe = stack.rest(verb, path, stack.keys["globex"], {} if verb == "POST" else None)
        never = stack.rest(
            verb,
            path.replace(acme["job"], "job_nope").replace(acme["webhook"], "wh_nope"),
            stack.keys["globex"],
            {} if verb == "POST" else None,
        )
        assert_openai_error(probe[0], probe[2], 404, code, "invalid_request_error")
        assert probe[2]["error"]["message"].replace(acme["job"], "X").replace(acme["webhook"], "X") == never[2][
            "error"
        ]["message"].replace("job_nope", "X").replace("wh_nope", "X")  # the same answer as for no such id


def test_another_tenants_resources_are_not_found_over_grpc(stack: Stack, acme: dict):
    service = "/embeddings.v1.JobService/"
    probes = [
        ("GetJob", pb.GetJobRequest(id=acme["job"]), "job_not_found"),
        ("CancelJob", pb.CancelJobRequest(id=acme["job"]), "job_not_found"),
        ("GetJobResults", pb.GetJobResultsRequest(id=acme["job"]), "job_not_found"),
        ("ListWebhookDeliveries", pb.ListWebhookDeliveriesRequest(id=acme["webhook"]), "webhook_not_found"),
        ("DeleteWebhook", pb.DeleteWebhookRequest(id=acme["webhook"]), "webhook_not_found"),
    ]
    for channel in (stack.channel, stack.gateway):
        for method, request, reason in probes:
            error = refused(channel, service + method, request.SerializeToString(), key=stack.keys["globex"])
            assert (error.code, error.reason) == (grpc.StatusCode.NOT_FOUND, reason), method


def test_lists_hold_only_your_own(stack: Stack, acme: dict):
    _, _, jobs = stack.rest("GET", "/v1/async/jobs", stack.keys["globex"])
    _, _, hooks = stack.rest("GET", "/v1/webhooks", stack.keys["globex"])
    assert acme["job"] not in {j["id"] for j in jobs["data"]} and acme["webhook"] not in {
        h["id"] for h in hooks["data"]
    }
    status, _, answer = stack.rest("GET", "/v1/async/jobs", stack.keys["globex"], None, None)
    assert status == 200
    status, _, answer = stack.rest("GET", f"/v1/async/jobs?after={acme['job']}", stack.keys["globex"])
    assert_openai_error(status, answer, 400, "invalid_input", "invalid_request_error")  # a cursor is no oracle either
    reply = raw_call(stack.channel, "/embeddings.v1.JobService/ListJobs", b"", key=stack.keys["globex"])
    listed = pb.ListJobsResponse.FromString(reply)
    assert acme["job"] not in {j.id for j in listed.data}


def test_another_tenants_webhook_cannot_be_named_by_a_job(stack: Stack, acme: dict):
    body = {"model": MODEL, "input": ["x"], "metadata": {"webhook_id": acme["webhook"]}}
    status, _, answer = stack.rest("POST", "/v1/async/embeddings", stack.keys["globex"], body)
    assert_openai_error(status, answer, 400, "invalid_input", "invalid_request_error")
    assert answer["error"]["param"] == "metadata.webhook_id"


def test_the_owner_still_has_everything(stack: Stack, acme: dict):
    key = stack.keys["acme"]
    assert stack.rest("GET", f"/v1/async/jobs/{acme['job']}", key)[2]["status"] == "completed"
    assert stack.rest("GET", f"/v1/async/jobs/{acme['job']}/results", key)[0] == 200
    assert acme["webhook"] in {h["id"] for h in stack.rest("GET", "/v1/webhooks", key)[2]["data"]}
    assert stack.rest("GET", f"/v1/webhooks/{acme['webhook']}/deliveries", key)[0] == 200
    assert_still_serving(stack)
