"""Reading inputs from a file (one per line) and writing vectors to `.npy` or `.jsonl`, row i for line i + 1."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import orjson

OUTPUT_SUFFIXES = (".npy", ".jsonl")


@dataclass(frozen=True)
class Inputs:
    """The texts of a file, the file line (1-based) each came from, and the blank lines left out."""

    path: Path
    texts: list[str]
    lines: list[int]
    skipped: list[int]

    @property
    def line_count(self) -> int:
        return len(self.texts) + len(self.skipped)

    @property
    def rows(self) -> list[int]:
        """Output row of each text: its line's position in the file (row i is line i + 1)."""
        return [line - 1 for line in self.lines]

    def where(self, index: int | None) -> str:
        """`file:line` of input `index` (the file alone when unknown)."""
        if index is None or not 0 <= index < len(self.lines):
            return str(self.path)
        return f"{self.path}:{self.lines[index]}"


def read_inputs(path: Path, skip_blank: bool = False) -> Inputs:
    """Plain text (one input per line) or JSONL (one object per line with a string `text` field).

    JSONL is recognised by a `.jsonl` suffix or a first non-blank line that is a JSON object. A blank line (or a
    blank `text`) is an error naming the line, unless `skip_blank`: then it is left out and listed in `skipped`.
    """
    lines = path.read_text(encoding="utf-8").splitlines()
    first = next((line for line in lines if line.strip()), None)
    if first is None:
        raise ValueError(f"{path} holds no text")
    jsonl = path.suffix == ".jsonl" or first.lstrip().startswith("{")
    texts, numbers, skipped = [], [], []
    for number, line in enumerate(lines, 1):
        text = _jsonl_text(path, number, line) if jsonl and line.strip() else line
        if not text.strip():
            if not skip_blank:
                what = "blank line" if not line.strip() else "blank 'text'"
                raise ValueError(f"{path}:{number}: {what}: every line is one input (--skip-blank leaves them out)")
            skipped.append(number)
            continue
        texts.append(text)
        numbers.append(number)
    return Inputs(path, texts, numbers, skipped)


def _jsonl_text(path: Path, number: int, line: str) -> str:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}:{number}: not JSON ({exc.msg})") from None
    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
        raise ValueError(f"{path}:{number}: expected an object with a string 'text' field")
    return record["text"]


def check_output(path: Path) -> None:
    if path.suffix not in OUTPUT_SUFFIXES:
        raise ValueError(f"--output must end in {' or '.join(OUTPUT_SUFFIXES)}, got {path.name}")


class VectorWriter:
    """Writes the vectors of inputs, in input order as they arrive, at their rows: a `.npy` array [rows, d]
    (memory-mapped, created with the first vectors; rows no input fills are NaN) or JSONL lines
    `{"index": row, "embedding": [...]}` (rows no input fills have no line).

    Writes go to a hidden `.NAME.partial` beside the output, which `finish` renames into place once every input is
    written; `discard` (an error, Ctrl-C) removes it, so a failed run never leaves a half-filled output behind."""

    def __init__(self, path: Path, rows: Sequence[int], total_rows: int) -> None:
        check_output(path)
        self.path = path
        self.partial = path.with_name(f".{path.name}.partial")
        self.rows = rows
        self.total_rows = total_rows
        self.written = 0
        self._array: np.ndarray | None = None
        self._jsonl: IO[bytes] | None = None

    def write(self, vectors: np.ndarray) -> None:
        rows = self.rows[self.written : self.written + len(vectors)]
        if len(rows) != len(vectors):
            raise ValueError(f"{len(vectors)} vectors for {len(rows)} remaining inputs")
        if self.path.suffix == ".npy":
            self._write_npy(rows, vectors)
        else:
            self._write_jsonl(rows, vectors)
        self.written += len(vectors)

    def _write_npy(self, rows: Sequence[int], vectors: np.ndarray) -> None:
        if self._array is None:
            shape = (self.total_rows, vectors.shape[1])
            self._array = np.lib.format.open_memmap(self.partial, mode="w+", dtype=np.float32, shape=shape)
            if len(self.rows) < self.total_rows:
                self._array[:] = np.nan  # rows of skipped lines
        self._array[list(rows)] = vectors

    def _write_jsonl(self, rows: Sequence[int], vectors: np.ndarray) -> None:
        if self._jsonl is None:
            self._jsonl = self.partial.open("wb")
        for row, vector in zip(rows, vectors.astype(np.float32, copy=False), strict=True):
            # float32 in shortest form, as the REST API writes it.
            item = {"index": row, "embedding": vector}
            self._jsonl.write(orjson.dumps(item, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n")

    def finish(self) -> None:
        """Every input is written: put the output in place."""
        if self.written != len(self.rows):
            raise ValueError(f"{self.written} of {len(self.rows)} vectors written")
        self._close()
        self.partial.replace(self.path)

    def discard(self) -> None:
        self._close()
        self.partial.unlink(missing_ok=True)

    def _close(self) -> None:
        if self._array is not None:
            self._array.flush()
            self._array = None
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
