"""What every part of the model tool shares: its error, its output, file helpers."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

TOOL_NAME = "tools.modelrepo"
TOOL_VERSION = "3"  # bump when the export changes so that cached model directories are rebuilt (3: solo graph)
# Where downloaded model sources are unpacked (`make clean` removes it; pip keeps its own download cache).
DEFAULT_CACHE = Path(__file__).resolve().parents[2] / "build" / "model-sources"


class BuildError(Exception):
    """A model cannot be built; the message says why."""


def say(message: str) -> None:
    print(message, flush=True)


def load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BuildError(f"{path}: missing") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise BuildError(f"{path}: unreadable: {exc}") from exc


def optional_json(path: Path) -> dict[str, Any]:
    return load_json(path) if path.is_file() else {}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def offline() -> None:
    """Hugging Face libraries must never try the network: every source is local."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
