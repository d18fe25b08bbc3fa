"""Reading texts from a file and writing vectors to `.npy` or `.jsonl`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO

import numpy as np
import orjson

OUTPUT_SUFFIXES = (".npy", ".jsonl")


def read_texts(path: Path) -> list[str]:
    """Plain text (one input per non-empty line) or JSONL (one object per line with a `text` field).

    JSONL is recognised by a `.jsonl` suffix or a first line that is a JSON object.
    """
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"{path} holds no text")
    if path.suffix != ".jsonl" and not lines[0].lstrip().startswith("{"):
        return lines
    texts = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number}: not JSON ({exc.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise ValueError(f"{path}:{number}: expected an object with a string 'text' field")
        texts.append(record["text"])
    return texts


def check_output(path: Path) -> None:
    if path.suffix not in OUTPUT_SUFFIXES:
        raise ValueError(f"--output must end in {' or '.join(OUTPUT_SUFFIXES)}, got {path.name}")


class VectorWriter:
    """Writes rows in input order as they arrive: a `.npy` array (memory-mapped, sized on the first rows) or JSONL
    lines `{"index": i, "embedding": [...]}`."""

    def __init__(self, path: Path, total: int) -> None:
        check_output(path)
        self.path = path
        self.total = total
        self.written = 0
        self._array: np.ndarray | None = None
        self._jsonl: IO[bytes] | None = None

    def write(self, rows: np.ndarray) -> None:
        if self.path.suffix == ".npy":
            if self._array is None:
                self._array = np.lib.format.open_memmap(
                    self.path, mode="w+", dtype=np.float32, shape=(self.total, rows.shape[1])
                )
            self._array[self.written : self.written + len(rows)] = rows
        else:
            if self._jsonl is None:
                self._jsonl = self.path.open("wb")
            for offset, row in enumerate(rows.astype(np.float32, copy=False)):
                # float32 in shortest form, as the REST API writes it.
                item = {"index": self.written + offset, "embedding": row}
                self._jsonl.write(orjson.dumps(item, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n")
        self.written += len(rows)

    def close(self) -> None:
        if self._array is not None:
            self._array.flush()
            self._array = None
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
