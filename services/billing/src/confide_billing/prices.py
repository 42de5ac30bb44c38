"""Prices as data: what each session type costs, in integer minor units per ISO 4217 currency,
and the currencies billing takes with the number of digits of their minor unit.

A price change is a change of this table (and a new deployment), never of code; a charge
records the amount it was made for, so earlier charges and invoices keep their amounts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

MINOR_UNIT_DIGITS: Final[Mapping[str, int]] = {
    "AUD": 2,
    "CAD": 2,
    "CHF": 2,
    "DKK": 2,
    "EUR": 2,
    "GBP": 2,
    "JPY": 0,
    "NOK": 2,
    "NZD": 2,
    "SEK": 2,
    "USD": 2,
}
"""ISO 4217 codes billing charges in, and the digits of each one's minor unit (JPY has none)."""

SESSION_PRICES: Final[Mapping[str, Mapping[str, int]]] = {
    "intake_60": {"USD": 18000, "EUR": 16500, "GBP": 14500, "JPY": 24000},
    "individual_50": {"USD": 15000, "EUR": 14000, "GBP": 12000, "JPY": 20000},
    "couples_80": {"USD": 22000, "EUR": 20000, "GBP": 17500, "JPY": 30000},
    "group_90": {"USD": 6000, "EUR": 5500, "GBP": 5000, "JPY": 8000},
}
"""Session type → currency → price in that currency's minor unit."""


def price_of(session_type: str, currency: str) -> int | None:
    """The price of a session type in a currency; None when either is not priced."""
    return SESSION_PRICES.get(session_type, {}).get(currency)


def format_amount(amount_minor: int, currency: str) -> str:
    """An amount for people to read: `12345, "EUR"` → `123.45 EUR`, `2000, "JPY"` → `2000 JPY`."""
    digits = MINOR_UNIT_DIGITS.get(currency, 2)
    sign = "-" if amount_minor < 0 else ""
    whole, fraction = divmod(abs(amount_minor), 10**digits)
    text = f"{whole}.{fraction:0{digits}d}" if digits else str(whole)
    return f"{sign}{text} {currency}"
