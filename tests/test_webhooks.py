"""Webhook signing, verification, URL rules, retry schedule, and delivery to a real HTTP server on loopback.

Signatures are recomputed here independently (hmac, hashlib, base64) and checked against the Standard Webhooks
spec's published test vector, so a mistake shared by `sign` and `verify` cannot pass unnoticed.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import json
import logging
import random
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx2 as httpx
import pytest
import standardwebhooks
from standardwebhooks.webhooks import WebhookVerificationError

from service.jobs import webhooks
from service.jobs.webhooks import (
    RetryPolicy,
    WebhookSender,
    event_body,
    generate_secret,
    parse_delays,
    send_once,
    sign,
    validate_url,
    verify,
)

# The Standard Webhooks specification's test vector (also used by its reference libraries).
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TIMESTAMP = 1614265330
SPEC_BODY = b'{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
EVENT_ID = "evt_0123456789abcdef01234567"
NOW = 1_750_000_000


def reference_signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The documented algorithm, written out independently of the module."""
    key = base64.b64decode(secret[len("whsec_") :])
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


# --- a real receiver ----------------------------------------------------------------------------------------------


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class Receiver:
    """A threaded HTTP server on 127.0.0.1 whose path says how to answer: /status/<code>, /redirect, /slow."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                headers = {name.lower(): value for name, value in self.headers.items()}
                with receiver._lock:
                    receiver.requests.append(Received("POST", self.path, headers, body))
                route = self.path.split("?")[0]
                if route == "/slow":
                    time.sleep(3)
                    self._answer(200)
                elif route == "/redirect":
                    self._answer(302, location=receiver.url("/target"))
                else:
                    self._answer(int(route.rsplit("/", 1)[-1]) if route.startswith("/status/") else 200)

            def _answer(self, status: int, location: str | None = None) -> None:
                try:
                    self.send_response(status)
                    if location:
                        self.send_header("location", location)
                    self.send_header("content-length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the sender gave up (timeout): expected

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.block_on_close = False
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def received(self, path: str) -> list[Received]:
        with self._lock:
            return [request for request in self.requests if request.path == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


@pytest.fixture
def receiver_clear(receiver: Receiver) -> Receiver:
    with receiver._lock:
        receiver.requests.clear()
    return receiver


@pytest.fixture
async def sender() -> AsyncIterator[WebhookSender]:
    # Loopback is private: allowed here explicitly, as an operator would for a single-host deployment.
    async with WebhookSender(RetryPolicy(timeout_s=2.0), allow_private=True) as webhook_sender:
        yield webhook_sender


def body_for(event_id: str = EVENT_ID) -> bytes:
    return event_body(event_id, "embedding_job.completed", NOW, {"id": "job_1", "status": "completed"})


# --- signatures ---------------------------------------------------------------------------------------------------


def test_spec_test_vector() -> None:
    assert reference_signature(SPEC_SECRET, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY) == SPEC_SIGNATURE
    assert sign(SPEC_SECRET, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY) == SPEC_SIGNATURE
    headers = {"webhook-id": SPEC_ID, "webhook-timestamp": str(SPEC_TIMESTAMP), "webhook-signature": SPEC_SIGNATURE}
    assert verify(SPEC_SECRET, headers, SPEC_BODY, now=SPEC_TIMESTAMP)


def test_sign_matches_hand_computed_value() -> None:
    key = bytes(range(32))
    signed = b"evt_0123456789abcdef01234567.1750000000." + b'{"a":1}'
    expected = "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    assert sign(SECRET, EVENT_ID, NOW, b'{"a":1}') == expected


def test_generate_secret() -> None:
    secrets = {generate_secret() for _ in range(20)}
    assert len(secrets) == 20
    for secret in secrets:
        assert secret.startswith("whsec_")
        assert len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) == 24
    assert len(base64.b64decode(generate_secret(32)[6:])) == 32
    with pytest.raises(ValueError):
        generate_secret(8)


def test_sign_refuses_malformed_secret_without_quoting_it() -> None:
    with pytest.raises(ValueError, match="malformed webhook secret") as raised:
        sign("whsec_not*base64!", EVENT_ID, NOW, b"{}")
    assert "not*base64" not in str(raised.value)


def signed_headers(secret: str = SECRET, msg_id: str = EVENT_ID, timestamp: int = NOW, body: bytes = b"{}") -> dict:
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": reference_signature(secret, msg_id, timestamp, body),
    }


def test_verify_accepts_fresh_signature_any_header_case() -> None:
    headers = signed_headers()
    assert verify(SECRET, headers, b"{}", now=NOW)
    assert verify(SECRET, headers, b"{}", now=NOW + 300)
    assert verify(SECRET, {name.title(): value for name, value in headers.items()}, b"{}", now=NOW)
    assert verify(SECRET, httpx.Headers(headers), b"{}", now=NOW)


@pytest.mark.parametrize(
    "change",
    ["old timestamp", "future timestamp", "wrong secret", "tampered body", "tampered id", "no signature", "v2 only"],
)
def test_verify_rejects(change: str) -> None:
    headers, body, now, secret = signed_headers(), b"{}", NOW, SECRET
    if change == "old timestamp":
        now = NOW + 301
    elif change == "future timestamp":
        now = NOW - 301
    elif change == "wrong secret":
        secret = generate_secret()
    elif change == "tampered body":
        body = b"{ }"
    elif change == "tampered id":
        headers["webhook-id"] = "evt_other"
    elif change == "no signature":
        del headers["webhook-signature"]
    elif change == "v2 only":
        headers["webhook-signature"] = "v2," + headers["webhook-signature"][3:]
    assert not verify(secret, headers, body, now=now)


def test_verify_accepts_rotated_multi_signature_header() -> None:
    old_secret, new_secret = generate_secret(), generate_secret()
    old_sig = reference_signature(old_secret, EVENT_ID, NOW, b"{}")
    new_sig = reference_signature(new_secret, EVENT_ID, NOW, b"{}")
    headers = {"webhook-id": EVENT_ID, "webhook-timestamp": str(NOW), "webhook-signature": f"{old_sig} {new_sig}"}
    assert verify(old_secret, headers, b"{}", now=NOW)
    assert verify(new_secret, headers, b"{}", now=NOW)
    assert not verify(generate_secret(), headers, b"{}", now=NOW)


def test_event_body_is_compact_json() -> None:
    body = event_body("evt_abc", "embedding_job.failed", 1700000000, {"id": "job_1", "error": {"code": "x"}})
    assert body == (
        b'{"id":"evt_abc","object":"event","type":"embedding_job.failed","created_at":1700000000,'
        b'"data":{"id":"job_1","error":{"code":"x"}}}'
    )
    with pytest.raises(ValueError):
        event_body("job_1", "embedding_job.failed", 0, {})
    assert webhooks.new_event_id().startswith("evt_") and webhooks.new_event_id() != webhooks.new_event_id()


# --- URL rules ----------------------------------------------------------------------------------------------------

PUBLIC_URLS = [
    "https://example.com/hooks/embeddings",
    "http://example.com:8080/hook?token=abc",
    "https://93.184.216.34/hook",
    "https://[2606:4700::6810:85e5]/hook",
    "https://[2002:808:808::1]/hook",  # 6to4 of a public address
    "https://[64:ff9b::808:808]/hook",  # NAT64 of a public address
]
PRIVATE_URLS = [
    "http://localhost:8000/hook",
    "http://api.localhost/hook",
    "http://localhost./hook",
    "http://127.0.0.1:8000/hook",
    "http://[::1]/hook",
    "http://10.1.2.3/hook",
    "http://192.168.0.10/hook",
    "http://172.16.5.4/hook",
    "http://169.254.169.254/latest/meta-data",
    "http://100.64.0.1/hook",
    "http://[fd00::1]/hook",
    "http://[fe80::1]/hook",
    "http://[::ffff:127.0.0.1]/hook",
    "http://[64:ff9b::a00:1]/hook",
    "http://[2002:7f00:1::]/hook",
    # IPv6 forms that embed a private IPv4 address (compatible, translated, 6to4, Teredo, NAT64):
    "http://[::127.0.0.1]/hook",
    "http://[::169.254.169.254]/latest/meta-data",
    "http://[::ffff:0:7f00:1]/hook",
    "http://[::ffff:0:a9fe:a9fe]/hook",
    "http://[::a00:1]/hook",
    "http://[2002:a9fe:a9fe::1]/hook",
    "http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/hook",  # Teredo whose client is 127.0.0.1
    "http://[64:ff9b::a9fe:a9fe]/hook",
    "http://[64:ff9b:1::a9fe:a9fe]/hook",
    "http://[64:ff9b:1:7f00:1::]/hook",
]
ALWAYS_BAD_URLS = [
    ("", "empty"),
    ("ftp://example.com/hook", "http:// or https://"),
    ("file:///etc/passwd", "http:// or https://"),
    ("example.com/hook", "http:// or https://"),
    ("https://user:pass@example.com/hook", "user name or password"),
    ("https://user@example.com/hook", "user name or password"),
    ("https://example.com/hook#frag", "fragment"),
    ("https:///hook", "no host"),
    ("https://example.com:99999/hook", "invalid port"),
    ("https://example.com:0/hook", "invalid port"),
    ("https://exa mple.com/hook", "whitespace"),
    ("https://example.com/\nhook", "whitespace"),
    ("http://2130706433/hook", "non-standard IPv4"),
    ("http://0x7f.1/hook", "non-standard IPv4"),
    ("http://0.0.0.0/hook", "multicast or unspecified"),
    ("http://224.0.0.1/hook", "multicast or unspecified"),
    ("https://example.com/" + "a" * 2100, "longer than"),
]


@pytest.mark.parametrize("url", PUBLIC_URLS)
def test_validate_url_accepts_public(url: str) -> None:
    assert validate_url(url, allow_private=False) == url
    assert validate_url(url, allow_private=True) == url


@pytest.mark.parametrize("url", PRIVATE_URLS)
def test_validate_url_private_only_when_allowed(url: str) -> None:
    with pytest.raises(ValueError, match=r"localhost|private, loopback or reserved"):
        validate_url(url, allow_private=False)
    assert validate_url(url, allow_private=True) == url


@pytest.mark.parametrize(("url", "message"), ALWAYS_BAD_URLS)
def test_validate_url_rejects(url: str, message: str) -> None:
    for allow_private in (False, True):
        with pytest.raises(ValueError, match=message):
            validate_url(url, allow_private=allow_private)


def test_validate_url_normalizes_scheme_and_strips() -> None:
    assert validate_url("  HTTPS://example.com/a  ", allow_private=False) == "https://example.com/a"


# --- retry schedule -----------------------------------------------------------------------------------------------


def test_default_schedule_is_bounded_and_jittered() -> None:
    policy = RetryPolicy()
    assert policy.delays_s == (5, 30, 120, 600, 1800, 7200, 18000)
    assert policy.max_attempts == 8
    rng = random.Random(7)
    for attempt, base in enumerate(policy.delays_s, start=1):
        samples = [policy.next_delay(attempt, rng) for _ in range(200)]
        assert all(base * (1 - policy.jitter) <= delay <= base * (1 + policy.jitter) for delay in samples)
        assert len(set(samples)) > 150  # really jittered
        assert max(samples) - min(samples) > base * policy.jitter  # across most of the band
    assert policy.next_delay(len(policy.delays_s) + 1) is None
    assert policy.next_delay(100) is None
    worst_case = sum(base * (1 + policy.jitter) for base in policy.delays_s)
    assert worst_case < 10 * 3600
    with pytest.raises(ValueError):
        policy.next_delay(0)


def test_custom_schedule() -> None:
    policy = RetryPolicy(delays_s=parse_delays("1s, 2m,1h,3"), jitter=0, timeout_s=1)
    assert [policy.next_delay(n) for n in range(1, 6)] == [1, 120, 3600, 3, None]
    assert RetryPolicy(delays_s=()).next_delay(1) is None
    for bad in ({"delays_s": (-1,)}, {"jitter": 1.0}, {"jitter": -0.1}, {"timeout_s": 0}):
        with pytest.raises(ValueError):
            RetryPolicy(**bad)
    with pytest.raises(ValueError, match="bad retry delay"):
        parse_delays("5x")


# --- delivery to a real server ------------------------------------------------------------------------------------


async def test_success_is_signed_per_spec(receiver_clear: Receiver, sender: WebhookSender) -> None:
    body = body_for()
    attempt = await sender.send(receiver_clear.url("/status/200"), SECRET, EVENT_ID, body, now=NOW)
    assert (attempt.outcome, attempt.status_code, attempt.error) == ("succeeded", 200, None)
    assert attempt.duration_ms >= 0
    [request] = receiver_clear.received("/status/200")
    assert request.method == "POST"
    assert request.body == body
    assert json.loads(request.body)["object"] == "event"
    assert request.headers["content-type"] == "application/json"
    assert "embeddings-service" in request.headers["user-agent"]
    assert request.headers["webhook-id"] == EVENT_ID
    assert request.headers["webhook-timestamp"] == str(NOW)
    assert request.headers["webhook-signature"] == reference_signature(SECRET, EVENT_ID, NOW, body)
    assert verify(SECRET, request.headers, request.body, now=NOW)


async def test_a_real_delivery_verifies_with_the_standardwebhooks_library(
    receiver_clear: Receiver, sender: WebhookSender
) -> None:
    """The Standard Webhooks reference library (what the README's receiver uses) accepts a delivery as it arrived."""
    body = body_for()
    attempt = await sender.send(receiver_clear.url("/status/204"), SECRET, EVENT_ID, body)  # signed now
    assert attempt.outcome == "succeeded"
    [request] = receiver_clear.received("/status/204")
    event = standardwebhooks.Webhook(SECRET).verify(request.body, request.headers)
    assert event["object"] == "event" and event["data"]["id"] == "job_1"
    with pytest.raises(WebhookVerificationError):
        standardwebhooks.Webhook(SECRET).verify(request.body.replace(b"job_1", b"job_2"), request.headers)
    with pytest.raises(WebhookVerificationError):
        standardwebhooks.Webhook(generate_secret()).verify(request.body, request.headers)


@pytest.mark.parametrize(
    ("status", "outcome"),
    [(201, "succeeded"), (204, "succeeded"), (400, "retry"), (404, "retry"), (429, "retry"), (500, "retry"),
     (503, "retry"), (410, "disable")],
)  # fmt: skip
async def test_status_classification(receiver_clear: Receiver, sender: WebhookSender, status: int, outcome: str):
    attempt = await sender.send(receiver_clear.url(f"/status/{status}"), SECRET, EVENT_ID, body_for(), now=NOW)
    assert (attempt.status_code, attempt.outcome) == (status, outcome)
    assert (attempt.error is None) == (outcome == "succeeded")
    if status == 410:
        assert "410" in attempt.error
    assert len(receiver_clear.received(f"/status/{status}")) == 1


async def test_retries_keep_id_and_are_signed_afresh(receiver_clear: Receiver, sender: WebhookSender) -> None:
    body, url = body_for(), receiver_clear.url("/status/500")
    first = await sender.send(url, SECRET, EVENT_ID, body, now=NOW)
    second = await sender.send(url, SECRET, EVENT_ID, body, now=NOW + 35)
    third = await sender.send(url, SECRET, EVENT_ID, body)  # the clock
    assert [a.outcome for a in (first, second, third)] == ["retry"] * 3
    assert first.status_code == 500 and first.error == "HTTP 500"
    requests = receiver_clear.received("/status/500")
    assert [r.headers["webhook-id"] for r in requests] == [EVENT_ID] * 3
    timestamps = [int(r.headers["webhook-timestamp"]) for r in requests]
    assert timestamps[:2] == [NOW, NOW + 35] and abs(timestamps[2] - time.time()) < 5
    assert len({r.headers["webhook-signature"] for r in requests}) == 3
    for request, timestamp in zip(requests, timestamps, strict=True):
        assert request.body == body
        assert verify(SECRET, request.headers, request.body, now=timestamp)
    # A receiver five minutes on rejects the first attempt's headers: hence the fresh timestamp per retry.
    assert not verify(SECRET, requests[0].headers, body, now=NOW + 35 + 300)
    assert verify(SECRET, requests[1].headers, body, now=NOW + 35 + 300)


@pytest.mark.parametrize("client_follows", [False, True])
async def test_redirect_is_not_followed(receiver_clear: Receiver, client_follows: bool) -> None:
    async with httpx.AsyncClient(follow_redirects=client_follows, trust_env=False) as client:
        attempt = await send_once(
            client, receiver_clear.url("/redirect"), SECRET, EVENT_ID, body_for(), NOW, 2.0, allow_private=True
        )
    assert (attempt.status_code, attempt.outcome) == (302, "retry")
    assert "redirect" in attempt.error
    assert len(receiver_clear.received("/redirect")) == 1
    assert receiver_clear.received("/target") == []


async def test_timeout_is_a_retry_with_message(receiver_clear: Receiver) -> None:
    async with WebhookSender(RetryPolicy(timeout_s=0.3), allow_private=True) as sender:
        started = time.monotonic()
        attempt = await sender.send(receiver_clear.url("/slow"), SECRET, EVENT_ID, body_for(), now=NOW)
    assert time.monotonic() - started < 2
    assert (attempt.status_code, attempt.outcome) == (None, "retry")
    assert "timed out after 0.3 s" in attempt.error
    assert 250 <= attempt.duration_ms < 2000


async def test_connection_refused_is_a_retry(sender: WebhookSender) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    attempt = await sender.send(f"http://127.0.0.1:{port}/hook", SECRET, EVENT_ID, body_for(), now=NOW)
    assert (attempt.status_code, attempt.outcome) == (None, "retry")
    assert attempt.error and "Connect" in attempt.error


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_private_address_refused_at_send_time(receiver_clear: Receiver, host: str) -> None:
    """Without allow_private the resolved address is checked before connecting: nothing reaches the server."""
    async with WebhookSender(RetryPolicy(timeout_s=2.0)) as sender:
        attempt = await sender.send(receiver_clear.url("/status/200", host), SECRET, EVENT_ID, body_for(), now=NOW)
    assert (attempt.status_code, attempt.outcome) == (None, "retry")
    assert "refused" in attempt.error and "private, loopback or reserved" in attempt.error
    assert receiver_clear.requests == []


async def fake_resolver(monkeypatch: pytest.MonkeyPatch, addresses: list[str]) -> None:
    async def getaddrinfo(host, port, **kwargs):
        family = {4: socket.AF_INET, 6: socket.AF_INET6}
        return [(family[ipaddress.ip_address(a).version], socket.SOCK_STREAM, 6, "", (a, port)) for a in addresses]

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", getaddrinfo)


async def test_dns_name_is_pinned_to_the_checked_address(monkeypatch: pytest.MonkeyPatch) -> None:
    await fake_resolver(monkeypatch, ["93.184.216.34", "2606:2800:220:1::1"])
    url, headers, extensions = await webhooks._pin_public_address(httpx.URL("https://hooks.example.com:8443/a?b=1"))
    assert str(url) == "https://93.184.216.34:8443/a?b=1"
    assert headers == {"host": "hooks.example.com:8443", "connection": "close"}
    assert extensions == {"sni_hostname": "hooks.example.com"}  # the certificate is checked for the name


async def test_pinned_request_reaches_the_checked_address_with_the_original_host(
    receiver_clear: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """End to end through the pinning path: the name is resolved once, the connection goes to that address."""
    await fake_resolver(monkeypatch, ["127.0.0.1"])
    monkeypatch.setattr(webhooks, "address_allowed", lambda address, allow_private: True)  # loopback stands in
    body = body_for()
    async with WebhookSender(RetryPolicy(timeout_s=2.0)) as sender:
        attempt = await sender.send(receiver_clear.url("/status/200", "hooks.example.com"), SECRET, EVENT_ID, body)
    assert attempt.outcome == "succeeded"
    [request] = receiver_clear.received("/status/200")
    assert request.headers["host"] == f"hooks.example.com:{receiver_clear.port}"
    assert request.headers["connection"] == "close"
    assert verify(SECRET, request.headers, request.body)


async def test_dns_name_with_any_private_address_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    await fake_resolver(monkeypatch, ["93.184.216.34", "10.0.0.7"])
    async with WebhookSender() as sender:
        attempt = await sender.send("https://hooks.example.com/a", SECRET, EVENT_ID, body_for(), now=NOW)
    assert attempt.outcome == "retry" and "private, loopback or reserved" in attempt.error
    assert "10.0.0.7" not in attempt.error  # the tenant reads this: it must not map the internal network


@pytest.mark.parametrize("address", ["::127.0.0.1", "::ffff:0:a9fe:a9fe", "64:ff9b::a00:7", "2002:a9fe:a9fe::1"])
async def test_a_name_resolving_to_an_embedded_private_ipv4_is_refused(
    monkeypatch: pytest.MonkeyPatch, address: str
) -> None:
    await fake_resolver(monkeypatch, [address])
    async with WebhookSender() as sender:
        attempt = await sender.send("https://hooks.example.com/a", SECRET, EVENT_ID, body_for(), now=NOW)
    assert (
        attempt.outcome == "retry"
        and attempt.error == "refused: hooks.example.com resolves to a private, loopback or reserved address"
    )


async def test_logs_hold_no_secret_body_or_path(
    receiver_clear: Receiver, sender: WebhookSender, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="service.jobs.webhooks")
    body = event_body(EVENT_ID, "embedding_job.completed", NOW, {"marker": "body-marker-xyz"})
    await sender.send(receiver_clear.url("/status/500?token=query-marker"), SECRET, EVENT_ID, body, now=NOW)
    assert EVENT_ID in caplog.text
    for leaked in (SECRET, SECRET[6:], "body-marker-xyz", "query-marker", "/status"):
        assert leaked not in caplog.text


async def test_unresolvable_name_is_a_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    async def getaddrinfo(host, port, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", getaddrinfo)
    async with WebhookSender() as sender:
        attempt = await sender.send("https://hooks.example.com/a", SECRET, EVENT_ID, body_for(), now=NOW)
    assert (attempt.status_code, attempt.outcome) == (None, "retry")
    assert attempt.error == "name resolution failed: Name or service not known"
