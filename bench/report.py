"""Where the benchmarks' reports go (bench/results) and how each is written. Imports nothing heavy, so the
benchmarks that need no in-process baseline can use it without loading ONNX Runtime."""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def write_report(name: str, text: str, data: object = None, out: Path = RESULTS) -> None:
    """`<out>/<name>.md` (and `<name>.json` holding `data`, if any), and the Markdown printed."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.md").write_text(text)
    if data is not None:
        (out / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    print(text)
