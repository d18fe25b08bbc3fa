"""Records hold None where a proto3 `optional` field of their message is absent: `copy_present` sets the others."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def copy_present(record: Any, message: Any, names: Iterable[str]) -> None:
    """Set each of `names` on `message` from `record` where the record has a value (None leaves the field unset)."""
    for name in names:
        value = getattr(record, name)
        if value is not None:
            setattr(message, name, value)
