"""Webhook URLs cannot be aimed at the service's own network: every form of a private, loopback, link-local or
metadata address is refused at registration (REST and gRPC), a name resolving to one is refused at delivery, and
what the tenant reads of a refused delivery never says which internal address the name resolved to."""

from __future__ import annotations

import ipaddress
import socket

import grpc
import pytest

from service._gen.embeddings.v1 import jobs_pb2 as pb
from tests.adversarial.probes import MODEL, Stack, assert_openai_error, refused, wait_for

PRIVATE = [
    "http://127.0.0.1/hook",
    "http://localhost/hook",
    "http://127.1/hook",
    "http://2130706433/hook",
    "http://0x7f000001/hook",
    "http://10.0.0.1/hook",
    "http://169.254.169.254/latest/meta-data/",
    "http://[::1]/hook",
    "http://[::ffff:127.0.0.1]/hook",
    "http://[::127.0.0.1]/hook",
    "http://[::169.254.169.254]/hook",
    "http://[::ffff:0:7f00:1]/hook",
    "http://[::ffff:0:a9fe:a9fe]/hook",
    "http://[2002:7f00:1::1]/hook",
    "http://[2002:a9fe:a9fe::]/hook",
    "http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/hook",
    "http://[64:ff9b::7f00:1]/hook",
    "http://[64:ff9b::a9fe:a9fe]/hook",
    "http://[64:ff9b:1::a9fe:a9fe]/hook",
    "http://[fe80::1]/hook",
    "http://[fd00::1]/hook",
    "http://0.0.0.0/hook",
    "file:///etc/passwd",
    "gopher://example.com/",
    "http://user:pass@example.com/hook",
]


@pytest.mark.parametrize("url", PRIVATE)
def test_private_forms_are_refused_at_registration(stack: Stack, url: str):
    status, _, answer = stack.rest("POST", "/v1/webhooks", stack.keys["globex"], {"url": url})
    assert_openai_error(status, answer, 400, "invalid_input", "invalid_request_error")
    assert answer["error"]["param"] == "url"
    request = pb.CreateWebhookRequest(url=url).SerializeToString()
    error = refused(stack.channel, "/embeddings.v1.JobService/CreateWebhook", request, key=stack.keys["globex"])
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "invalid_input")


def loopback_name() -> str:
    """This machine's host name, when it resolves to a non-public address only (as /etc/hosts usually makes it)."""
    name = socket.gethostname()
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(name, 80, type=socket.SOCK_STREAM)}
    except socket.gaierror:
        pytest.skip(f"the host name {name!r} does not resolve")
    if not addresses or any(ipaddress.ip_address(a.split("%")[0]).is_global for a in addresses):
        pytest.skip(f"the host name {name!r} resolves to a public address")
    return name


def test_a_name_resolving_to_a_private_address_is_refused_at_delivery_without_saying_which(stack: Stack):
    name, key = loopback_name(), stack.keys["globex"]
    status, _, hook = stack.rest("POST", "/v1/webhooks", key, {"url": f"http://{name}:9/hook"})
    assert status == 200, hook  # a name: judged where it resolves, at delivery
    body = {"model": MODEL, "input": ["x"], "metadata": {"webhook_id": hook["id"]}}
    status, _, job = stack.rest("POST", "/v1/async/embeddings", key, body)
    assert status == 200, job
    deliveries = wait_for(lambda: stack.rest("GET", f"/v1/webhooks/{hook['id']}/deliveries", key)[2]["data"])
    [attempt] = deliveries
    assert attempt["outcome"] == "failed" and "status_code" not in attempt
    assert attempt["error"] == f"refused: {name} resolves to a private, loopback or reserved address"
    resolved = {info[4][0] for info in socket.getaddrinfo(name, 80)}
    assert not any(address in attempt["error"] for address in resolved)
    assert stack.rest("DELETE", f"/v1/webhooks/{hook['id']}", key)[0] == 200
