"""Shared pytest fixtures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from service._gen.embeddings.v1 import embeddings_pb2_grpc as pb_grpc
from tests.serving import EnvoyProcess, ServerProcess
from tests.tiny_bert import build_tiny_sources

REPO_ROOT = Path(__file__).resolve().parent.parent


def _repo_path() -> Path:
    return Path(os.environ.get("EMBED_MODEL_REPO") or REPO_ROOT / "models").resolve()


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Tests marked `model(id, ...)` need models built only on request: skipped with the command that builds them
    when absent, or failed when EMBED_REQUIRE_MODELS=1 (CI builds them, so a skip there would hide a broken build)."""
    repo = _repo_path()
    for marker in item.iter_markers("model"):
        missing = [name for name in marker.args if not (repo / name / "manifest.json").is_file()]
        if not missing:
            continue
        families = sorted({name.removesuffix("-int8").removesuffix("-fp16") for name in missing})
        reason = (
            f"{', '.join(missing)} not built in {repo} "
            f"(make models MODELS=all-minilm-l6-v2,{','.join(families)} MODEL_REPO={repo})"
        )
        if os.environ.get("EMBED_REQUIRE_MODELS") == "1":
            pytest.fail(f"EMBED_REQUIRE_MODELS=1 and {reason}")
        pytest.skip(reason)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The files holding minutes-long proofs (marked `slow` or `model`) run first, each file's tests kept together.

    With `-n 2 --dist loadfile --no-loadscope-reorder` (make test) pytest-xdist hands files out in this order, so the
    long ones start at once on their own worker instead of being the tail that one worker runs while the other
    idles."""

    def long_running(item: pytest.Item) -> bool:
        return item.get_closest_marker("slow") is not None or item.get_closest_marker("model") is not None

    first = {item.path for item in items if long_running(item)}
    items.sort(key=lambda item: item.path not in first)  # stable: order within each group is kept


# The models every server in the suite loads: the default family. Models built on request (all-mpnet-base-v2) are
# served only by the tests marked for them: loading and warming a 110M-parameter model in each test's server would
# cost minutes over the suite.
DEFAULT_MODELS = ("all-minilm-l6-v2", "all-minilm-l6-v2-int8")


@pytest.fixture(scope="session")
def built_model_repo() -> Path:
    """The whole model repository: $EMBED_MODEL_REPO or <repo>/models, with whatever was built on request.

    Built with the real CLI; tools.modelrepo skips models that are already up to date, so this is cheap when built.
    """
    repo = _repo_path()
    command = [sys.executable, "-m", "tools.modelrepo", "build-defaults", "--repo", str(repo)]
    done = subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )
    if done.returncode != 0:
        pytest.fail(f"build-defaults failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return repo


@pytest.fixture(scope="session")
def model_repo(built_model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository of the default models alone (links into the built one), whatever else was built."""
    view = tmp_path_factory.mktemp("default-models")
    for name in DEFAULT_MODELS:
        (view / name).symlink_to(built_model_repo / name)
    return view


@pytest.fixture(scope="session")
def tiny_sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny random BERT saved the ways real models are published (tests/tiny_bert.py), made once per session:
    copy a source before changing it."""
    return build_tiny_sources(tmp_path_factory.mktemp("tiny-sources"))


@pytest.fixture(scope="session")
def served_repo(model_repo: Path, tiny_sources: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default models plus `tiny-bert`: a CLS-pooled, unnormalized model with prefixes and shortened sizes."""
    repo = tmp_path_factory.mktemp("served-models")
    for model_dir in model_repo.iterdir():
        if (model_dir / "manifest.json").is_file() and not model_dir.name.startswith("."):
            (repo / model_dir.name).symlink_to(model_dir)
    sources = tiny_sources
    command = [
        *(sys.executable, "-m", "tools.modelrepo", "import", str(sources["cls"]), "--repo", str(repo)),
        *("--id", "tiny-bert", "--shortened-dimensions", "8,16"),
        *("--query-prefix", "query: ", "--document-prefix", "passage: "),
    ]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"importing tiny-bert failed:\n{done.stdout}\n{done.stderr}")
    return repo


@pytest.fixture(scope="session")
def server(served_repo: Path):
    """One real gRPC server for the session, with an OpenAI-name alias configured."""
    process = ServerProcess(served_repo, "--aliases", "text-embedding-3-small=all-minilm-l6-v2").start()
    yield process
    process.stop()


@pytest.fixture(scope="session")
def stub(server: ServerProcess):
    with grpc.insecure_channel(server.address) as channel:
        yield pb_grpc.EmbeddingServiceStub(channel)


@pytest.fixture(scope="session")
def golden() -> dict:
    return json.loads((REPO_ROOT / "tests" / "golden" / "all-minilm-l6-v2.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def gateway(server: ServerProcess, tmp_path_factory: pytest.TempPathFactory):
    """The real Envoy, shipped configuration, in front of the session's server."""
    with EnvoyProcess(server.port, tmp_path_factory.mktemp("envoy")) as envoy:
        yield envoy


@pytest.fixture(scope="session")
def openai_client(gateway: EnvoyProcess):
    """The official openai SDK pointed at the gateway, as a user would configure it."""
    from openai import OpenAI

    return OpenAI(base_url=f"{gateway.base_url}/v1", api_key="unused", max_retries=0)
