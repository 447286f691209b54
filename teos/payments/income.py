"""The income validator: how many registrations a payment buys."""

from __future__ import annotations

from typing import Protocol


class IncomeValidator(Protocol):
    @property
    def price(self) -> int:
        """Satoshis per registration."""
        ...

    def registrations_for(self, previous_amount: int, amount: int) -> int:
        """Registrations bought by raising the channel's amount from ``previous_amount`` to ``amount``
        (0 when the rise does not reach the price)."""
        ...


class FixedPrice:
    """``(amount - previous_amount) // price`` registrations; the remainder below the price buys nothing
    (a client raises by a multiple of the price; see docs/PAYMENTS.md)."""

    def __init__(self, price: int) -> None:
        if price <= 0:
            raise ValueError("a paid tower's price is positive")
        self._price = price

    @property
    def price(self) -> int:
        return self._price

    def registrations_for(self, previous_amount: int, amount: int) -> int:
        if amount <= previous_amount:
            return 0
        return (amount - previous_amount) // self._price
