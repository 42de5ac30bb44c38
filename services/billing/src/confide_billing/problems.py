"""How the billing service's refusals answer over HTTP: one `ProblemType` per domain
exception, passed by app.py to `Service.create_app`.

Each answer's type URI ends in the kebab-cased class name unless a slug is given, and its detail
is the exception's message (pseudonymous ids only, never card data). A 422 names the refused
request field as request validation does (`body.card_number`), from the exception's `field`,
and never echoes the value. A payment method, charge or invoice that is not the caller's
answers 404, exactly as one that does not exist. A declined charge answers 402 with its
`charge_id` and `failure_code`.
"""

from __future__ import annotations

from typing import Any

from confide_toolkit.problem import ProblemType, ProblemTypes

from confide_billing.domain import (
    AccountNotOpen,
    AmountNotThePrice,
    CardNotVerified,
    CardRejected,
    ChargeDeclined,
    ChargeNotFound,
    ChargeNotRefundable,
    CurrencyNotAccepted,
    GatewayTimedOut,
    IdempotencyKeyReused,
    InvoiceNotFound,
    PaymentMethodNotFound,
    PaymentMethodNotUsable,
    ProcessorFailed,
    RefundExceedsCharge,
    UnknownSessionType,
)

_NOT_FOUND = ProblemType(404, "Not Found")
_REFUSED_FIELD = ProblemType(422, "Unprocessable Content")


def _declined(error: Any) -> dict[str, Any]:
    assert isinstance(error, ChargeDeclined)
    return {"charge_id": str(error.charge_id), "failure_code": error.failure_code}


PROBLEM_TYPES: ProblemTypes = {
    CardRejected: ProblemType(422, "Unprocessable Content", slug="card-rejected"),
    CardNotVerified: ProblemType(422, "Unprocessable Content", slug="card-not-verified"),
    UnknownSessionType: _REFUSED_FIELD,
    CurrencyNotAccepted: _REFUSED_FIELD,
    AmountNotThePrice: _REFUSED_FIELD,
    RefundExceedsCharge: _REFUSED_FIELD,
    IdempotencyKeyReused: ProblemType(422, "Unprocessable Content", location="header"),
    PaymentMethodNotFound: _NOT_FOUND,
    ChargeNotFound: _NOT_FOUND,
    InvoiceNotFound: _NOT_FOUND,
    AccountNotOpen: ProblemType(409, "Conflict", slug="account-not-open"),
    PaymentMethodNotUsable: ProblemType(409, "Conflict", slug="payment-method-not-usable"),
    ChargeNotRefundable: ProblemType(409, "Conflict", slug="charge-not-refundable"),
    ChargeDeclined: ProblemType(
        402, "Payment Required", slug="charge-declined", extensions=_declined
    ),
    GatewayTimedOut: ProblemType(503, "Service Unavailable", slug="payment-gateway-timeout"),
    ProcessorFailed: ProblemType(502, "Bad Gateway", slug="payment-processor-error"),
}
"""Every `BillingError` the service raises, and how it answers."""
