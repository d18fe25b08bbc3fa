"""GET /console and GET /docs through the real Envoy and server: open pages, their files under a content-hash version
(cached for good), the right content types, a strict Content-Security-Policy, and sources that keep to it.
The pages themselves are driven in a real browser by tests/browser/."""

from __future__ import annotations

import json
import posixpath
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from service import console
from tests.serving import EnvoyProcess, ServerProcess, http

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ROOT / "service" / "console"
PAGES = ("/console", "/docs")


class _Links(HTMLParser):
    """Every script, style sheet and icon a page links, and anything inline that the policy would block."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.inline: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        self.inline += [f"{tag} {name}" for name in attributes if name.startswith("on") or name == "style"]
        if tag == "script":
            self._in_script = True
            if attributes.get("src"):
                self.links.append(attributes["src"])
        elif tag == "link" and attributes.get("href"):
            self.links.append(attributes["href"])
        elif tag == "style":
            self.inline.append("style element")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline.append("inline script")


def _links(html: bytes) -> _Links:
    parser = _Links()
    parser.feed(html.decode())
    return parser


@pytest.mark.parametrize("page", PAGES)
def test_page_is_open_strict_and_revalidated(gateway, page):
    status, headers, body = http(gateway, "GET", page)  # no key
    assert status == 200, body
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert headers["cache-control"] == "no-cache"
    policy = dict(part.strip().split(" ", 1) for part in headers["content-security-policy"].split(";"))
    assert policy["default-src"] == "'self'" and policy["script-src"] == "'self'" and policy["style-src"] == "'self'"
    assert policy["frame-ancestors"] == "'none'" and policy["object-src"] == "'none'"
    assert "unsafe-inline" not in headers["content-security-policy"]
    assert "unsafe-eval" not in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff"
    assert not any(name.startswith("grpc-") for name in headers)
    links = _links(body)
    assert links.inline == []
    assert links.links and all(link.startswith(f"{page}/static/") for link in links.links)


@pytest.mark.parametrize("page", PAGES)
def test_page_files_are_versioned_typed_and_immutable(gateway, page):
    _, _, body = http(gateway, "GET", page)
    for link in _links(body).links:
        status, headers, data = http(gateway, "GET", link)
        assert status == 200, (link, data)
        assert headers["content-type"] == console.content_type(link)
        assert headers["cache-control"] == "public, max-age=31536000, immutable"
        assert headers["x-content-type-options"] == "nosniff"
        assert data


def test_console_modules_are_served_under_the_same_version(gateway):
    """ES modules import each other by relative URL: every module the page reaches is served."""
    _, _, body = http(gateway, "GET", "/console")
    app = next(link for link in _links(body).links if link.endswith("/app.js"))
    base = app.rsplit("/", 1)[0]
    seen, queue = set(), ["app.js"]
    while queue:
        name = queue.pop()
        if name in seen:
            continue
        seen.add(name)
        status, headers, data = http(gateway, "GET", f"{base}/{name}")
        assert status == 200 and headers["content-type"] == "text/javascript; charset=utf-8", name
        for target in re.findall(r'from "(\.{1,2}/[^"]+)"', data.decode()):
            queue.append(posixpath.normpath(posixpath.join(posixpath.dirname(name), target)))
    assert {"app.js", "api.js", "ui.js", "pages/playground.js", "pages/jobs.js", "worklist.js"} <= seen


@pytest.mark.parametrize("path", ["/console/static/0000000000000000/app.js", "/docs/static/0000000000000000/docs.js"])
def test_a_file_of_another_build_is_not_found(gateway, path):
    status, headers, body = http(gateway, "GET", path)
    assert status == 404
    error = json.loads(body)["error"]
    assert error["code"] == "asset_not_found" and "reload the page" in error["message"]
    assert "immutable" not in headers.get("cache-control", "")


def test_a_name_outside_the_site_is_not_found(gateway):
    _, _, body = http(gateway, "GET", "/console")
    version = re.search(rb"/console/static/([0-9a-f]+)/", body).group(1).decode()
    for name in ("../__init__.py", "index.html", "web/app.js", "%2e%2e/__init__.py", "nope.js"):
        status, _, raw = http(gateway, "GET", f"/console/static/{version}/{name}")
        assert status in (400, 404), (name, raw)


def test_site_version_follows_the_files():
    files = {"app.js": b"export const a = 1;\n", "style.css": b"body {}\n"}
    site = console.build_site("/console", b'<script src="{{static}}/app.js"></script>', files)
    assert site.page.data == f'<script src="/console/static/{site.version}/app.js"></script>'.encode()
    assert site.asset(site.version, "app.js").content_type == "text/javascript; charset=utf-8"
    assert site.asset("0" * 16, "app.js") is None and site.asset(site.version, "index.html") is None
    changed = console.build_site("/console", b"", {**files, "app.js": b"export const a = 2;\n"})
    assert changed.version != site.version
    with pytest.raises(ValueError, match="no content type"):
        console.build_site("/console", b"", {"notes.txt": b""})


def test_console_sources_keep_to_the_policy():
    """No eval, no inline handlers, and text never parsed as HTML (API data is shown as text, so it cannot inject)."""
    sources = sorted((SOURCES / "web").rglob("*.js")) + sorted((SOURCES / "docs").rglob("*.js"))
    assert sources
    forbidden = re.compile(
        r"\beval\(|new Function|innerHTML|outerHTML|insertAdjacentHTML|document\.write|setAttribute\(\"style"
    )
    for path in sources:
        assert not forbidden.search(path.read_text()), path
    assert console.console_site().files  # every file has a known content type


def test_data_calls_still_need_a_key(gateway, served_repo, tmp_path_factory):
    """The pages are open; what they read is not (a server with a key: the session's runs open)."""
    data_dir = tmp_path_factory.mktemp("console-keys")
    admin = [sys.executable, "-m", "service.admin", "--data-dir", str(data_dir)]
    subprocess.run(
        [*admin, "keys", "create", "--tenant", "t", "--name", "n"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    with (
        ServerProcess(served_repo, "--data-dir", str(data_dir)) as server,
        EnvoyProcess(server.port, tmp_path_factory.mktemp("console-envoy")) as envoy,
    ):
        assert http(envoy, "GET", "/console")[0] == 200
        assert http(envoy, "GET", "/docs")[0] == 200
        assert http(envoy, "GET", "/openapi.json")[0] == 200
        status, _, body = http(envoy, "GET", "/v1/models")
        assert status == 401 and json.loads(body)["error"]["code"] == "invalid_api_key"
