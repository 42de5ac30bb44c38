"""How billing's refusals answer over HTTP, without a server: every refusal is declared, and
each answers with the status, type and field name its clients rely on."""

from __future__ import annotations

import uuid

import pytest
from confide_billing.domain import (
    AccountNotOpen,
    BillingError,
    CardRejected,
    ChargeDeclined,
    GatewayTimedOut,
    IdempotencyKeyReused,
    PaymentMethodNotFound,
    PaymentMethodNotUsable,
    ProcessorFailed,
    RefundExceedsCharge,
)
from confide_billing.problems import PROBLEM_TYPES
from confide_toolkit.problem import problem_type


def every_subclass(cls: type[Exception]) -> set[type[Exception]]:
    found = set()
    for sub in cls.__subclasses__():
        found |= {sub} | every_subclass(sub)
    return found


def answer(error: BillingError) -> dict[str, object]:
    return PROBLEM_TYPES[type(error)].problem(error).to_dict()


def test_every_refusal_is_declared() -> None:
    # An undeclared refusal would answer a bare 500.
    assert every_subclass(BillingError) <= PROBLEM_TYPES.keys()


@pytest.mark.parametrize(
    ("error", "status", "slug"),
    [
        (PaymentMethodNotFound(uuid.uuid4()), 404, "payment-method-not-found"),
        (PaymentMethodNotUsable(uuid.uuid4()), 409, "payment-method-not-usable"),
        (AccountNotOpen(uuid.uuid4()), 409, "account-not-open"),
        (ChargeDeclined(uuid.uuid4(), "insufficient_funds"), 402, "charge-declined"),
        (GatewayTimedOut(uuid.uuid4()), 503, "payment-gateway-timeout"),
        (ProcessorFailed(), 502, "payment-processor-error"),
    ],
)
def test_refusals_without_a_field(error: BillingError, status: int, slug: str) -> None:
    problem = answer(error)
    assert (problem["status"], problem["type"]) == (status, problem_type(slug))
    assert "errors" not in problem


def test_a_decline_says_which_charge_and_why() -> None:
    charge_id = uuid.uuid4()
    problem = answer(ChargeDeclined(charge_id, "expired_card"))
    assert problem["charge_id"] == str(charge_id)
    assert problem["failure_code"] == "expired_card"


def test_a_time_out_asks_for_a_retry() -> None:
    problem = PROBLEM_TYPES[GatewayTimedOut].problem(GatewayTimedOut(uuid.uuid4()))
    assert problem.headers["Retry-After"] == "1"


@pytest.mark.parametrize(
    ("error", "field"),
    [
        (CardRejected("card_number", "The card number fails its check digit."), "body.card_number"),
        (CardRejected("cvc", "..."), "body.cvc"),
        (RefundExceedsCharge(uuid.uuid4(), 10), "body.amount_cents"),
        (IdempotencyKeyReused(), "header.Idempotency-Key"),
    ],
)
def test_refused_fields_are_named_as_request_validation_names_them(
    error: BillingError, field: str
) -> None:
    problem = answer(error)
    assert problem["status"] == 422
    assert [e["field"] for e in problem["errors"]] == [field]  # type: ignore[attr-defined]
