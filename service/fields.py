"""One record or message built from another that shares field names with it. The names shared are declared once, by
the two types themselves (a dataclass's fields, a protobuf message's descriptor), not listed again wherever one is
copied into the other: a field added to both is carried over without another line.

A record holds None where a proto3 `optional` field of its message is absent: a message is built without the None
values (an optional field left unset, any other at its default), and reads as None where such a field is unset.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, TypeVar

T = TypeVar("T")


@functools.cache
def field_names(kind: type) -> frozenset[str]:
    """The fields of a protobuf message class, or those a dataclass's constructor takes."""
    descriptor = getattr(kind, "DESCRIPTOR", None)
    if descriptor is not None:
        return frozenset(field.name for field in descriptor.fields)
    return frozenset(field.name for field in dataclasses.fields(kind) if field.init)


def _read(source: object, names: frozenset[str]) -> dict[str, Any]:
    """`names` as `source` holds them: a message's fields (None where one with presence is unset), a dataclass's, or
    a namespace's attributes; a name it lacks is left out."""
    kind = type(source)
    descriptor = getattr(kind, "DESCRIPTOR", None)
    if descriptor is None:
        held = field_names(kind) if dataclasses.is_dataclass(kind) else frozenset(vars(source))
        return {name: getattr(source, name) for name in names & held}
    present = source.HasField  # type: ignore[attr-defined]
    return {
        field.name: getattr(source, field.name) if not field.has_presence or present(field.name) else None
        for field in descriptor.fields
        if field.name in names
    }


def derive(kind: type[T], source: object, /, **given: Any) -> T:
    """`kind(...)` (a message or a dataclass) with each field it shares with `source` (a message, a dataclass or a
    namespace) taken from `source`, and `given` for the others or instead."""
    values = _read(source, field_names(kind) - given.keys()) | given
    if hasattr(kind, "DESCRIPTOR"):
        values = {name: value for name, value in values.items() if value is not None}
    return kind(**values)
