"""Prices per million tokens: exact decimals, parsed in one place (standard library only: the server's settings
parse them too, without loading the engine)."""

from __future__ import annotations

from decimal import Decimal

MILLION = Decimal(1_000_000)


def parse_price(text: str | float) -> Decimal:
    """A price per million tokens: a finite, non-negative decimal (as a string, to be exact: "0.02", not 0.02's
    binary approximation; a JSON number is read through its shortest decimal form)."""
    try:
        price = Decimal(str(text).strip())
    except ArithmeticError:
        raise ValueError(f"{text!r} is not a decimal number") from None
    if not price.is_finite() or price < 0:
        raise ValueError(f"{text!r} must be a finite number, 0 or more")
    return Decimal(0) if price.is_zero() else price  # "-0" is 0


def price_text(price: Decimal) -> str:
    """A price in its shortest plain form ("0.02", "100"): how usage rows record the price a call was charged at."""
    return format(price.normalize(), "f")


def cost(tokens: int, price: str) -> Decimal:
    """What `tokens` cost at `price` (per million tokens, as a usage row records it; "" is unpriced: nothing)."""
    if not price:
        return Decimal(0)
    return Decimal(tokens) * parse_price(price) / MILLION
