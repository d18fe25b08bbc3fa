"""Browser tests: the real console and /docs in headless Chromium (Playwright), against a real server and Envoy with
API keys. Skipped, with the reason, where Chromium is not installed (`apt-get install -y chromium chromium-driver`).

Every page a test opens is watched: an uncaught script error or a Content-Security-Policy violation fails the test.
With EMBED_CONSOLE_SCREENSHOTS=DIR (`make screenshots`), tests save the README's screenshots there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.serving import ROOT, EnvoyProcess, ServerProcess

CHROMIUM_FLAGS = [
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",  # the machine's network is closed: no update or telemetry calls
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1100, "height": 760}
# tiny-bert's price per million tokens in the browser tests' server: a few tokens cost a few thousandths.
TINY_PRICE = 1000
# Reported to the test through the console by a listener added before any page script runs.
CSP_MARK = "csp-violation:"
WATCH_CSP = f"""document.addEventListener("securitypolicyviolation", (e) =>
  console.error("{CSP_MARK} " + e.violatedDirective + " " + e.blockedURI));"""


def chromium_path() -> str | None:
    return os.environ.get("EMBED_TEST_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass
class Stack:
    server: ServerProcess
    envoy: EnvoyProcess
    keys: dict[str, str]
    data_dir: Path

    @property
    def url(self) -> str:
        return self.envoy.base_url


def create_key(data_dir: Path, tenant: str, name: str, *flags: str) -> str:
    command = [sys.executable, "-m", "service.admin", "--data-dir", str(data_dir), "keys", "create"]
    done = subprocess.run(
        [*command, "--tenant", tenant, "--name", name, *flags], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture(scope="session")
def chromium() -> str:
    path = chromium_path()
    if path is None:
        pytest.skip("Chromium is not installed (apt-get install -y chromium chromium-driver): browser tests skipped")
    return path


@pytest.fixture(scope="session")
def stack(chromium, served_repo, tmp_path_factory) -> Iterator[Stack]:
    """A server with keys (an admin, users of other tenants, one whose usage is recorded per end user) and Envoy;
    small job chunks so progress shows; tiny-bert priced, so usage has a cost."""
    data_dir = tmp_path_factory.mktemp("browser-data")
    keys = {
        "admin": create_key(data_dir, "ops", "root", "--admin"),
        "user": create_key(data_dir, "acme", "ci"),
        "metered": create_key(data_dir, "metered", "charts"),
        "people": create_key(data_dir, "people", "app", "--user-rpm", "1000"),  # per-user limits: users recorded
    }
    args = ("--data-dir", str(data_dir), "--webhook-allow-private", "true", "--job-chunk-size", "16")
    args += ("--model-prices", f"tiny-bert={TINY_PRICE}")
    with (
        ServerProcess(served_repo, *args) as server,
        EnvoyProcess(server.port, tmp_path_factory.mktemp("browser-envoy")) as envoy,
    ):
        yield Stack(server, envoy, keys, data_dir)


@pytest.fixture(scope="module")
def browser(chromium):
    """Module scope: Playwright's sync API holds an event loop on this thread while it runs, which the asyncio tests
    of other modules must not find."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # A fresh profile per launch (Playwright's own temporary user-data-dir).
        instance = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        yield instance
        instance.close()


@pytest.fixture
def page(browser, stack):
    """A new tab in a new context (its own session storage), watched for script errors and CSP violations."""
    context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
    context.set_default_timeout(30_000)
    tab = context.new_page()
    problems: list[str] = []
    tab.add_init_script(WATCH_CSP)
    tab.on("pageerror", lambda error: problems.append(f"uncaught: {error}"))
    tab.on(
        "console",
        lambda message: (
            problems.append(message.text)
            if message.type == "error" and (CSP_MARK in message.text or "Content Security Policy" in message.text)
            else None
        ),
    )
    yield tab
    context.close()
    assert problems == []


@pytest.fixture(scope="session")
def screenshots() -> Path | None:
    folder = os.environ.get("EMBED_CONSOLE_SCREENSHOTS")
    if not folder:
        return None
    path = (ROOT / folder).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path
