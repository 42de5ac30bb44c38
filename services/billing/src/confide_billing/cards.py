"""What a card must be before billing keeps it: a number that passes the Luhn check, of a
length its brand issues, the brand read from the issuer identification number (IIN) ranges,
an expiry not yet past, and a security code (CVC) of the brand's length.

Pure functions, no I/O. A refusal (`CardRejected`) names the request field and why, never the
value: not the number, not part of it, not the CVC.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

from confide_events.billing import CardBrand

from confide_billing.domain import CardRejected


@dataclass(frozen=True)
class BrandRule:
    brand: CardBrand
    prefixes: tuple[tuple[int, int], ...]
    """Inclusive IIN ranges, each as (low, high) of the same number of digits."""
    lengths: tuple[int, ...]
    cvc_length: int


# Ordered: the first range that matches wins, so Discover's co-branded 622126-622925 is
# checked before UnionPay's wider 62.
BRAND_RULES: Final[tuple[BrandRule, ...]] = (
    BrandRule("amex", ((34, 34), (37, 37)), (15,), 4),
    BrandRule("visa", ((4, 4),), (13, 16, 19), 3),
    BrandRule("mastercard", ((51, 55), (2221, 2720)), (16,), 3),
    BrandRule(
        "discover", ((6011, 6011), (644, 649), (65, 65), (622126, 622925)), (16, 17, 18, 19), 3
    ),
    BrandRule("jcb", ((3528, 3589),), (16, 17, 18, 19), 3),
    BrandRule("diners", ((300, 305), (36, 36), (38, 39)), (14, 15, 16, 17, 18, 19), 3),
    BrandRule("unionpay", ((62, 62),), (16, 17, 18, 19), 3),
)

MIN_DIGITS: Final = 12
MAX_DIGITS: Final = 19


@dataclass(frozen=True)
class CheckedCard:
    """A card that passed every check: its digits, brand and expiry (the CVC is not kept)."""

    number: str = field(repr=False)  # never in a log line or a traceback's repr
    brand: CardBrand
    exp_month: int
    exp_year: int

    @property
    def last4(self) -> str:
        return self.number[-4:]


def luhn_valid(digits: str) -> bool:
    """Whether the digits pass the Luhn (mod 10) check."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        digit = int(char)
        if position % 2 == 1:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return total % 10 == 0


def brand_rule(digits: str) -> BrandRule | None:
    """The brand whose IIN ranges hold these digits, if any."""
    for rule in BRAND_RULES:
        for low, high in rule.prefixes:
            width = len(str(low))
            if len(digits) >= width and low <= int(digits[:width]) <= high:
                return rule
    return None


def normalised_number(card_number: str) -> str:
    """The digits of a card number as people type it (spaces and dashes between groups)."""
    digits = card_number.replace(" ", "").replace("-", "")
    if not digits.isascii() or not digits.isdigit():
        raise CardRejected("card_number", "A card number is made of digits only.")
    return digits


def check_card(
    card_number: str, exp_month: int, exp_year: int, cvc: str, now: datetime
) -> CheckedCard:
    """The card, if it passes every check; else `CardRejected` naming the first field at fault."""
    digits = normalised_number(card_number)
    if not MIN_DIGITS <= len(digits) <= MAX_DIGITS:
        raise CardRejected("card_number", f"A card number has {MIN_DIGITS} to {MAX_DIGITS} digits.")
    if not luhn_valid(digits):
        raise CardRejected("card_number", "The card number fails its check digit.")
    rule = brand_rule(digits)
    if rule is None:
        raise CardRejected("card_number", "Cards of this issuer are not accepted.")
    if len(digits) not in rule.lengths:
        raise CardRejected(
            "card_number", f"A {rule.brand} card number does not have this many digits."
        )
    if not 1 <= exp_month <= 12:
        raise CardRejected("exp_month", "The expiry month is 1 to 12.")
    # A card is good through the last day of its expiry month.
    if (exp_year, exp_month) < (now.year, now.month):
        raise CardRejected("exp_year", "The card has expired.")
    if not (cvc.isascii() and cvc.isdigit() and len(cvc) == rule.cvc_length):
        raise CardRejected(
            "cvc", f"A {rule.brand} card's security code has {rule.cvc_length} digits."
        )
    return CheckedCard(digits, rule.brand, exp_month, exp_year)
