"""What the list calls share: the `limit` of a page, checked the same way everywhere."""

from __future__ import annotations

from service import errors


def page_limit(value: int, default: int, maximum: int) -> int:
    """A list call's `limit` (0, unset: `default`), else 400 naming the allowed range."""
    limit = value or default
    if not 1 <= limit <= maximum:
        raise errors.invalid_input(f"'limit' must be between 1 and {maximum}.", field="limit")
    return limit
