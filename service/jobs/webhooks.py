"""Webhook delivery by the Standard Webhooks spec (https://www.standardwebhooks.com/), as OpenAI sends them.

Each delivery attempt is one POST of the event's JSON with three headers:

- `webhook-id`: the event id (`evt_...`), the same on every retry: the receiver's idempotency key;
- `webhook-timestamp`: unix seconds of this attempt, so each retry is signed afresh (receivers reject old ones);
- `webhook-signature`: `v1,<base64 HMAC-SHA256 of "{webhook-id}.{webhook-timestamp}.{body}">`, keyed with the
  base64-decoded part of the endpoint's secret after `whsec_`. Several space-separated signatures may be sent
  while a secret is rotated; a receiver accepts the request if any of them matches (see `verify`).

Only a 2xx answer is success. 410 Gone disables the endpoint. Redirects are not followed and, like timeouts,
connection errors and any other status, are retried on `RetryPolicy`'s bounded, jittered schedule.

Endpoint URLs are user-supplied, so they are checked twice: `validate_url` on registration (scheme, no
credentials, no private or loopback address literal), and, unless private addresses are allowed, the resolved
address at send time, which is then the one connected to (a DNS name cannot point at an internal host later).
Secrets, bodies and URL paths or queries (which often carry tokens) are never logged.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import logging
import random
import secrets
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx2 as httpx
import orjson

log = logging.getLogger(__name__)

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 24
SIGNATURE_VERSION = "v1"
USER_AGENT = "embeddings-service-webhooks/1.0"
MAX_URL_LENGTH = 2048
DEFAULT_TOLERANCE_S = 300

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Outcome = Literal["succeeded", "retry", "disable"]

# IPv6 ranges that carry an IPv4 address a packet really goes to (a host's stack, a tunnel or a gateway translates).
# Each is judged by that IPv4 address; ::ffff:0:0/96 (mapped), 2002::/16 (6to4) and 2001::/32 (Teredo) are found
# by the ipaddress module itself.
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")  # ::a.b.c.d (deprecated, still routed by some stacks)
_IPV4_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")  # ::ffff:0:a.b.c.d (SIIT)
_NAT64_WELL_KNOWN = ipaddress.ip_network("64:ff9b::/96")
# The local-use NAT64 prefix may embed the IPv4 address at any of several offsets: refused as a whole.
_NAT64_LOCAL_USE = ipaddress.ip_network("64:ff9b:1::/48")


# --- secrets and signatures -------------------------------------------------------------------------------------


def generate_secret(nbytes: int = SECRET_BYTES) -> str:
    """A new endpoint secret, `whsec_<base64 of nbytes random bytes>`; shown to the user once, at creation."""
    if not 24 <= nbytes <= 64:
        raise ValueError("a webhook secret must hold 24 to 64 random bytes")
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(nbytes)).decode("ascii")


def _secret_key(secret: str) -> bytes:
    """The HMAC key: the base64 after `whsec_` (the prefix is optional, as in the spec's reference libraries)."""
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(encoded, validate=True)
    except ValueError:
        # The message must not quote the secret: it may reach logs.
        raise ValueError("malformed webhook secret: expected whsec_ followed by base64") from None
    if not key:
        raise ValueError("malformed webhook secret: empty key")
    return key


def _signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode("ascii")


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header value, `v1,<base64 HMAC-SHA256 of "{msg_id}.{timestamp}.{body}">`."""
    return f"{SIGNATURE_VERSION},{_signature(_secret_key(secret), msg_id, timestamp, body)}"


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    now: int | None = None,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
) -> bool:
    """Receiver side: whether a delivery is authentic and fresh. Header names are matched case-insensitively.

    Pass the raw request body, byte for byte (not re-serialized JSON). A timestamp more than `tolerance_s` away
    from `now` (default: the clock) is rejected, which bounds replays; the receiver should also drop a
    `webhook-id` it has already processed. Any one of several space-separated `v1,` signatures may match.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    msg_id = lowered.get("webhook-id")
    timestamp_text = lowered.get("webhook-timestamp")
    signatures = lowered.get("webhook-signature")
    if not msg_id or not timestamp_text or not signatures:
        return False
    try:
        timestamp = int(timestamp_text)
    except ValueError:
        return False
    now = int(time.time()) if now is None else now
    if abs(now - timestamp) > tolerance_s:
        return False
    try:
        expected = _signature(_secret_key(secret), msg_id, timestamp, body).encode("ascii")
    except ValueError:
        return False
    for candidate in signatures.split():
        version, _, value = candidate.partition(",")
        if version == SIGNATURE_VERSION and hmac.compare_digest(value.encode("ascii", "replace"), expected):
            return True
    return False


# --- events -------------------------------------------------------------------------------------------------------


def new_event_id() -> str:
    """A fresh event id; it becomes `webhook-id`, so it is made once per event and kept across retries."""
    return "evt_" + secrets.token_hex(12)


def event_body(event_id: str, type: str, created_at: int, data: dict[str, Any]) -> bytes:
    """The event as compact JSON: `{"id","object":"event","type","created_at","data"}`, OpenAI's event shape."""
    if not event_id.startswith("evt_"):
        raise ValueError(f"event ids start with evt_, got {event_id!r}")
    event = {"id": event_id, "object": "event", "type": type, "created_at": created_at, "data": data}
    return orjson.dumps(event)


# --- endpoint URLs ------------------------------------------------------------------------------------------------


def _embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 one stands for (mapped, compatible, translated, 6to4, Teredo, NAT64): where packets
    to it really go. Empty for a plain IPv6 address."""
    if address.ipv4_mapped is not None:
        return [address.ipv4_mapped]
    if address.sixtofour is not None:
        return [address.sixtofour]
    if address.teredo is not None:
        return list(address.teredo)  # the relay server and the (de-obfuscated) client
    low32 = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _IPV4_COMPATIBLE and int(address) > 1:  # :: and ::1 are themselves (unspecified, loopback)
        return [low32]
    if address in _IPV4_TRANSLATED or address in _NAT64_WELL_KNOWN:
        return [low32]
    return []


def address_allowed(address: IpAddress, allow_private: bool) -> bool:
    """Whether a webhook may connect to this address: public unicast only, unless private ones are allowed. An IPv6
    address that embeds IPv4 ones is judged by them, every one of them."""
    if isinstance(address, ipaddress.IPv6Address):
        if address in _NAT64_LOCAL_USE and not allow_private:
            return False
        embedded = _embedded_ipv4(address)
        if embedded:
            return all(address_allowed(v4, allow_private) for v4 in embedded)
    if address.is_multicast or address.is_unspecified:
        return False
    # is_global excludes loopback, RFC 1918, link-local (cloud metadata at 169.254.169.254), CGNAT, ULA, reserved.
    return allow_private or address.is_global


def _literal_address(host: str) -> IpAddress | None:
    """The host as an IP address, or None for a DNS name; odd IPv4 spellings (`0x7f.1`, `2130706433`) are refused
    because resolvers accept them as addresses while they look like names."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:
        socket.inet_aton(host)
    except OSError:
        return None
    raise ValueError(f"webhook URL host {host!r} is a non-standard IPv4 address: write it as a.b.c.d")


def validate_url(url: str, allow_private: bool) -> str:
    """Check a webhook endpoint URL on registration; returns it normalized, raises ValueError saying what is wrong.

    Rules: http or https; a host; no user name or password (put credentials in the path or query, or rely on
    the signature); no fragment; a port between 1 and 65535. Unless `allow_private` (an operator setting, off by
    default; tests and single-host deployments turn it on), the host may not be `localhost` nor a loopback,
    private, link-local or otherwise non-public address literal. DNS names are checked again at send time,
    where they are resolved (see `send_once`).
    """
    url = url.strip()
    if not url:
        raise ValueError("webhook URL is empty")
    if len(url) > MAX_URL_LENGTH:
        raise ValueError(f"webhook URL is longer than {MAX_URL_LENGTH} characters")
    if any(ord(char) <= 0x20 or ord(char) == 0x7F for char in url):
        raise ValueError("webhook URL contains whitespace or control characters")
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https"):
        raise ValueError(f"webhook URL must start with http:// or https://, got scheme {parts.scheme!r}")
    if parts.username is not None or parts.password is not None:
        raise ValueError("webhook URL must not contain a user name or password")
    if parts.fragment:
        raise ValueError("webhook URL must not contain a #fragment")
    host = parts.hostname
    if not host:
        raise ValueError("webhook URL has no host")
    try:
        port = parts.port
    except ValueError:
        raise ValueError("webhook URL has an invalid port") from None
    if port == 0:
        raise ValueError("webhook URL has an invalid port")
    address = _literal_address(host)
    if address is not None and not address_allowed(address, allow_private=True):
        raise ValueError(f"webhook URL must not point at a multicast or unspecified address ({host})")
    if not allow_private:
        name = host.rstrip(".")
        if name == "localhost" or name.endswith(".localhost"):
            raise ValueError("webhook URL must not point at localhost")
        if address is not None and not address_allowed(address, allow_private=False):
            raise ValueError(f"webhook URL must not point at a private, loopback or reserved address ({host})")
    return parts.geturl()


def _origin(url: str) -> str:
    """What may be logged of an endpoint URL: scheme, host and port (paths and queries often carry tokens)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")


class BlockedAddress(Exception):
    """An endpoint's host resolved to an address webhooks may not reach."""


async def _pin_public_address(url: httpx.URL) -> tuple[httpx.URL, dict[str, str], dict[str, Any]]:
    """Resolve the host, refuse it if any address is non-public, and aim the request at the first address.

    Connecting to the address that was checked, rather than letting the client resolve the name again, closes the
    DNS-rebinding gap. The Host header and TLS server name (certificate check) stay the original host name, and
    `connection: close` keeps the connection, keyed by address, from being reused for another host name.
    """
    host = url.host
    literal = _literal_address(host)
    if literal is not None:
        addresses: list[IpAddress] = [literal]
    else:
        loop = asyncio.get_running_loop()
        port = url.port or (443 if url.scheme == "https" else 80)
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        # An IPv6 link-local sockaddr may carry a %zone; ip_address refuses it, and such addresses are refused anyway.
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    if not addresses:
        raise BlockedAddress(f"{host} did not resolve")
    if not all(address_allowed(a, allow_private=False) for a in addresses):
        # Which address is not said: the error is shown to the tenant, who must not learn the internal network.
        raise BlockedAddress(f"{host} resolves to a private, loopback or reserved address")
    if literal is not None:
        return url, {}, {}
    headers = {"host": url.netloc.decode("ascii"), "connection": "close"}
    extensions = {"sni_hostname": host} if url.scheme == "https" else {}
    return url.copy_with(host=str(addresses[0])), headers, extensions


# --- retries ------------------------------------------------------------------------------------------------------


# 5 s, 30 s, 2 min, 10 min, 30 min, 2 h, 5 h: 8 attempts over about 8 hours, then give up.
DEFAULT_DELAYS_S: tuple[float, ...] = (5, 30, 120, 600, 1800, 7200, 18000)


@dataclass(frozen=True)
class RetryPolicy:
    """When to try a failed delivery again. Attempt 1 is immediate; attempt n+1 waits delays_s[n-1], give or
    take `jitter` (a fraction), so endpoints that failed together are not all retried in the same second."""

    delays_s: tuple[float, ...] = DEFAULT_DELAYS_S
    jitter: float = 0.1
    # Whole-attempt limit (connect, send, response headers), in seconds.
    timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if any(delay < 0 for delay in self.delays_s):
            raise ValueError("retry delays must not be negative")
        if not 0 <= self.jitter < 1:
            raise ValueError("retry jitter is a fraction in [0, 1)")
        if self.timeout_s <= 0:
            raise ValueError("the webhook request timeout must be positive")

    @property
    def max_attempts(self) -> int:
        return len(self.delays_s) + 1

    def next_delay(self, attempt_number: int, rng: random.Random | None = None) -> float | None:
        """Seconds to wait after failed attempt `attempt_number` (1-based) before the next; None: give up."""
        if attempt_number < 1:
            raise ValueError("attempt numbers start at 1")
        if attempt_number > len(self.delays_s):
            return None
        delay = self.delays_s[attempt_number - 1]
        spread = (rng or random).uniform(-self.jitter, self.jitter)
        return delay * (1 + spread)


def parse_delays(text: str) -> tuple[float, ...]:
    """A retry schedule from configuration: comma-separated durations with unit s, m or h (`5s,30s,2m,1h`)."""
    units = {"s": 1, "m": 60, "h": 3600}
    delays = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        number, unit = (item[:-1], item[-1]) if item[-1] in units else (item, "s")
        try:
            delays.append(float(number) * units[unit])
        except ValueError:
            raise ValueError(f"bad retry delay {item!r}: expected a number with unit s, m or h") from None
    return tuple(delays)


# --- delivery -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    """One delivery attempt, as recorded on the job and shown to its owner."""

    # None when no response came (timeout, connection error, refused address).
    status_code: int | None
    error: str | None
    duration_ms: int
    outcome: Outcome


def _classify(status_code: int) -> tuple[Outcome, str | None]:
    if 200 <= status_code < 300:
        return "succeeded", None
    if status_code == 410:
        return "disable", "410 Gone: the endpoint asked to be disabled"
    if 300 <= status_code < 400:
        return "retry", f"HTTP {status_code}: redirects are not followed"
    return "retry", f"HTTP {status_code}"


async def send_once(
    client: httpx.AsyncClient,
    url: str,
    secret: str,
    event_id: str,
    body: bytes,
    now: int,
    timeout_s: float,
    *,
    allow_private: bool = False,
    user_agent: str = USER_AGENT,
) -> Attempt:
    """One signed POST, signed at `now`. Never raises for network trouble: it becomes an Attempt with its error.

    Redirects are not followed whatever the client's setting. The response body is not read. `timeout_s` bounds
    the whole attempt, not only each network step, so a receiver that trickles its answer cannot hold a sender.
    """
    started = time.monotonic()

    def attempt(status_code: int | None, error: str | None, outcome: Outcome) -> Attempt:
        duration_ms = round((time.monotonic() - started) * 1000)
        log.debug(
            "webhook %s to %s: %s (%s, %d ms)", event_id, _origin(url), outcome, status_code or error, duration_ms
        )
        return Attempt(status_code=status_code, error=error, duration_ms=duration_ms, outcome=outcome)

    headers = {
        "webhook-id": event_id,
        "webhook-timestamp": str(now),
        "webhook-signature": sign(secret, event_id, now, body),
        "content-type": "application/json",
        "user-agent": user_agent,
    }
    try:
        async with asyncio.timeout(timeout_s):
            target = httpx.URL(url)
            extensions: dict[str, Any] = {}
            if not allow_private:
                target, pin_headers, extensions = await _pin_public_address(target)
                headers.update(pin_headers)
            request = client.build_request(
                "POST", target, content=body, headers=headers, timeout=timeout_s, extensions=extensions
            )
            response = await client.send(request, stream=True, follow_redirects=False)
            await response.aclose()
    except TimeoutError:
        return attempt(None, f"timed out after {timeout_s:g} s", "retry")
    except httpx.TimeoutException as error:
        return attempt(None, f"timed out after {timeout_s:g} s ({type(error).__name__})", "retry")
    except BlockedAddress as error:
        return attempt(None, f"refused: {error}", "retry")
    except socket.gaierror as error:
        return attempt(None, f"name resolution failed: {error.strerror or error}", "retry")
    except (httpx.HTTPError, httpx.InvalidURL, OSError) as error:
        return attempt(None, f"{type(error).__name__}: {error}" if str(error) else type(error).__name__, "retry")
    outcome, error_text = _classify(response.status_code)
    return attempt(response.status_code, error_text, outcome)


class WebhookSender:
    """Delivers webhooks over one pooled HTTP client; close it with `aclose` (or use it as an async context)."""

    def __init__(
        self,
        policy: RetryPolicy | None = None,
        *,
        allow_private: bool = False,
        max_connections: int = 64,
        user_agent: str = USER_AGENT,
    ) -> None:
        self.policy = policy or RetryPolicy()
        self.allow_private = allow_private
        self._user_agent = user_agent
        # trust_env=False: no proxy or .netrc from the environment, so where a request goes is what was checked.
        self._client = httpx.AsyncClient(
            follow_redirects=False,
            timeout=self.policy.timeout_s,
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=16, keepalive_expiry=30),
            trust_env=False,
        )

    async def send(self, url: str, secret: str, event_id: str, body: bytes, now: int | None = None) -> Attempt:
        """One attempt, signed at `now` (default: the clock, so each retry carries a fresh timestamp)."""
        return await send_once(
            self._client,
            url,
            secret,
            event_id,
            body,
            int(time.time()) if now is None else now,
            self.policy.timeout_s,
            allow_private=self.allow_private,
            user_agent=self._user_agent,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> WebhookSender:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
