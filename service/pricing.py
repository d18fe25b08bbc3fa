"""What models cost, for internal charge-back: a price per million tokens per model, in one currency.

A model's price is the server's `model_prices` entry for its id, else its manifest's `price_per_million_tokens`,
else none (unpriced: its usage costs nothing in reports). Usage rows record the price each call was metered at (as
exact decimal text), so a report's cost is what the tokens cost when they were used, even after a price changes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING

from service.engine.prices import price_text

if TYPE_CHECKING:
    from service.engine.model import ServedModel

_CURRENCY = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,15}$")


@dataclass(frozen=True)
class Price:
    per_million_tokens: Decimal
    currency: str

    @property
    def text(self) -> str:
        """The price as usage rows record it."""
        return price_text(self.per_million_tokens)


@dataclass(frozen=True)
class PriceList:
    """The server's prices: overrides by model id (settings) over the manifests' own."""

    overrides: Mapping[str, Decimal] = field(default_factory=dict)
    currency: str = "USD"

    def __post_init__(self) -> None:
        if not _CURRENCY.match(self.currency):
            raise ValueError(f"currency must be a short code such as USD or EUR, got {self.currency!r}")

    def of(self, model: ServedModel) -> Price | None:
        price = self.overrides.get(model.id, model.manifest.price)
        return None if price is None else Price(price, self.currency)

    def text_of(self, model: ServedModel) -> str:
        """The price usage rows record for `model` ("" when unpriced)."""
        price = self.of(model)
        return "" if price is None else price.text

    def unknown(self, served: Iterable[str]) -> list[str]:
        """Overridden ids that name no served model (a typo would otherwise leave a model unpriced unnoticed)."""
        return sorted(set(self.overrides) - set(served))
