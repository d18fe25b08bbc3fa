"""The browser pages the gateway serves: the operator console (GET /console) and the API reference (GET /docs).

Their sources live in this package (`web/` for the console, `docs/` for the reference's own glue) so a wheel ships
them; Swagger UI's files are a build output (`make setup` installs the npm package `swagger-ui-dist` and copies the
files below into `swagger-ui/` here, tools/swagger_ui.py). Each page is served with its files under
`{mount}/static/{version}/`, where the version is a hash of every file: files are cached for good (`immutable`), the
page itself is revalidated on every load, so a new build is picked up at once and never mixes old and new files.
Everything is read once into memory: a request names a file, it is looked up, never opened, so no path can reach the
disk.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path, PurePosixPath

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
# No inline script or style, no eval, nothing from another origin, never framed. Images may be data: URLs (Swagger
# UI's style sheet draws its icons so).
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "font-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
SECURITY_HEADERS = (
    ("content-security-policy", CONTENT_SECURITY_POLICY),
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
    ("cross-origin-opener-policy", "same-origin"),
)
# The page is small and names its files by version: revalidated on every load (no ETag: an HttpBody answer cannot
# be a 304, so a conditional request would save nothing).
PAGE_CACHE_CONTROL = "no-cache"
ASSET_CACHE_CONTROL = "public, max-age=31536000, immutable"
STATIC_PLACEHOLDER = b"{{static}}"
PAGE = "index.html"
# What /docs needs of swagger-ui-dist (the bundle includes its dependencies).
SWAGGER_UI_FILES = ("swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png")


@dataclass(frozen=True)
class WebFile:
    content_type: str
    data: bytes


@dataclass(frozen=True)
class Site:
    """One page and the files it links, served under `{mount}/static/{version}/`."""

    page: WebFile
    files: Mapping[str, WebFile]
    version: str

    def asset(self, version: str, name: str) -> WebFile | None:
        """The file, if `version` is this build's (an old page's URL must not cache this build's file for good)."""
        return self.files.get(name) if version == self.version else None


def content_type(name: str) -> str:
    suffix = PurePosixPath(name).suffix
    if suffix not in CONTENT_TYPES:
        raise ValueError(f"no content type known for {name}")
    return CONTENT_TYPES[suffix]


def build_site(mount: str, page_template: bytes, files: Mapping[str, bytes]) -> Site:
    """The site: `{{static}}` in the page becomes `{mount}/static/{version}`."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    version = digest.hexdigest()[:16]
    page = page_template.replace(STATIC_PLACEHOLDER, f"{mount}/static/{version}".encode())
    return Site(
        page=WebFile(CONTENT_TYPES[".html"], page),
        files={name: WebFile(content_type(name), data) for name, data in files.items()},
        version=version,
    )


def _package_files(folder: str) -> dict[str, bytes]:
    """Every file under this package's `folder`, by its path relative to it ('pages/models.js')."""
    found: dict[str, bytes] = {}

    def walk(node, prefix: str) -> None:
        for child in node.iterdir():
            name = f"{prefix}{child.name}"
            if child.is_dir():
                walk(child, f"{name}/")
            elif not child.name.startswith("."):
                found[name] = child.read_bytes()

    walk(resources.files(__package__).joinpath(folder), "")
    return found


def console_site() -> Site:
    files = _package_files("web")
    return build_site("/console", files.pop(PAGE), files)


def docs_site(swagger_ui_dir: Path) -> Site:
    """/docs: this package's `docs/` and Swagger UI's files. FileNotFoundError until `make setup` installed them."""
    files = _package_files("docs")
    for name in SWAGGER_UI_FILES:
        files[name] = (swagger_ui_dir / name).read_bytes()
    return build_site("/docs", files.pop(PAGE), files)
