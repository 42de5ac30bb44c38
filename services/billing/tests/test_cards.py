"""The checks a card passes before billing keeps it, without I/O: the Luhn check digit, the
brand from the IIN ranges and its lengths, the expiry, the CVC of the brand's length; and each
refusal names its field without quoting what was submitted."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from confide_billing import gateway
from confide_billing.cards import brand_rule, check_card, luhn_valid
from confide_billing.domain import CardRejected

NOW = datetime(2026, 11, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("number", "brand"),
    [
        ("4242424242424242", "visa"),
        ("5555555555554444", "mastercard"),
        ("2223003122003222", "mastercard"),
        ("378282246310005", "amex"),
        ("6011111111111117", "discover"),
        ("6221260000000000", "discover"),
        ("3566002020360505", "jcb"),
        ("36227206271667", "diners"),
        ("6200000000000005", "unionpay"),
    ],
)
def test_the_brand_is_read_from_the_iin_ranges(number: str, brand: str) -> None:
    rule = brand_rule(number)
    assert rule is not None and rule.brand == brand


def test_every_sandbox_test_number_passes_the_luhn_check() -> None:
    numbers = [v for k, v in vars(gateway).items() if k.isupper() and isinstance(v, str)]
    assert len(numbers) == 10
    assert all(luhn_valid(n) for n in numbers)


def test_a_good_card_passes_with_spaces_between_groups() -> None:
    card = check_card("4242 4242 4242 4242", 12, 2027, "123", NOW)
    assert (card.brand, card.last4, card.number) == ("visa", "4242", "4242424242424242")


def test_a_card_is_good_through_its_expiry_month() -> None:
    assert check_card("4242424242424242", 11, 2026, "123", NOW).exp_month == 11


@pytest.mark.parametrize(
    ("number", "month", "year", "cvc", "field"),
    [
        ("4242424242424241", 12, 2027, "123", "card_number"),  # check digit
        ("4242-abcd-4242-4242", 12, 2027, "123", "card_number"),  # not digits
        ("42424242424", 12, 2027, "123", "card_number"),  # too short
        ("9999999999999995", 12, 2027, "123", "card_number"),  # no known issuer
        ("5555555555555555556", 12, 2027, "123", "card_number"),  # mastercard has 16
        ("4242424242424242", 13, 2027, "123", "exp_month"),
        ("4242424242424242", 10, 2026, "123", "exp_year"),  # last month
        ("4242424242424242", 12, 2027, "1234", "cvc"),  # visa has 3
        ("378282246310005", 12, 2027, "123", "cvc"),  # amex has 4
        ("4242424242424242", 12, 2027, "12a", "cvc"),
    ],
)
def test_each_refusal_names_its_field_and_never_the_value(
    number: str, month: int, year: int, cvc: str, field: str
) -> None:
    with pytest.raises(CardRejected) as refused:
        check_card(number, month, year, cvc, NOW)
    assert refused.value.field == field
    message = str(refused.value)
    digits = number.replace("-", "")
    assert digits[:6] not in message and digits[-4:] not in message and cvc not in message


def test_no_object_carrying_card_data_shows_it_in_its_repr() -> None:
    # A repr is what a log line or a traceback would show.
    from confide_billing.api import AddCardRequest
    from confide_billing.gateway import CardDetails
    from confide_billing.handlers.payment_methods import AddCard
    from confide_billing.handlers.sealing import CardData

    address = {
        "line1": "9 Zephyrine Mews",
        "city": "Oxbridge",
        "postal_code": "OX1",
        "country": "GB",
    }
    number, cvc = "4242424242424242", "913"
    shown = [
        AddCardRequest(
            card_number=number,
            exp_month=1,
            exp_year=2030,
            cvc=cvc,
            cardholder_name="A",
            billing_address=address,  # type: ignore[arg-type]
        ),
        CardDetails(number, 1, 2030),
        check_card(number, 1, 2030, "123", NOW),
        AddCard(uuid.UUID(int=1), number, 1, 2030, cvc, "A", address),
        CardData(number, 1, 2030, "A", address),
    ]
    for carrier in shown:
        text = repr(carrier)
        assert number[:12] not in text and "Zephyrine" not in text and cvc not in text, text
