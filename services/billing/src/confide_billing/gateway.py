"""The payment-gateway port, and the sandbox gateway built in.

Billing talks to a payment processor only through `PaymentGateway`. Every charge carries the
id of billing's attempt (the charge id): the gateway charges an attempt at most once, however
often it is asked, and answers `find_charge(attempt_id)` with the outcome it recorded. That is
what lets billing recover from a time-out: it records the attempt before calling, and a retry
asks the gateway what became of it before charging anything.

The sandbox gateway (`SandboxGateway`) keeps its ledger in memory and decides by card number.
Its test numbers (each passes the Luhn check; use any future expiry and a CVC of the brand's
length):

| number               | what the sandbox does                                         |
|----------------------|---------------------------------------------------------------|
| 4242 4242 4242 4242  | approves (Visa); so does any other valid number not below     |
| 5555 5555 5555 4444  | approves (Mastercard)                                         |
| 3782 822463 10005    | approves (American Express, 4-digit CVC)                      |
| 6011 1111 1111 1117  | approves (Discover)                                           |
| 4000 0000 0000 9995  | declines: `insufficient_funds`                                |
| 4000 0000 0000 0002  | declines: `card_declined`                                     |
| 4000 0000 0000 0069  | declines: `expired_card`                                      |
| 4000 0000 0000 0119  | fails: processor error (nothing charged)                      |
| 4000 0000 0000 0259  | charges, then answers too late: billing's call times out      |
| 4000 0000 0000 0101  | refuses the card's CVC when the card is added                 |

The CVC is handed to `verify_card` only, checked, and forgotten: no gateway keeps it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Final, Literal, Protocol
from uuid import UUID

from confide_events.billing import ChargeFailureCode
from confide_toolkit.ids import uuid7

APPROVE_VISA: Final = "4242424242424242"
APPROVE_MASTERCARD: Final = "5555555555554444"
APPROVE_AMEX: Final = "378282246310005"
APPROVE_DISCOVER: Final = "6011111111111117"
INSUFFICIENT_FUNDS: Final = "4000000000009995"
CARD_DECLINED: Final = "4000000000000002"
EXPIRED_CARD: Final = "4000000000000069"
PROCESSOR_ERROR: Final = "4000000000000119"
TIME_OUT: Final = "4000000000000259"
CVC_REFUSED: Final = "4000000000000101"

_DECLINES: Final[dict[str, ChargeFailureCode]] = {
    INSUFFICIENT_FUNDS: "insufficient_funds",
    CARD_DECLINED: "card_declined",
    EXPIRED_CARD: "expired_card",
}


@dataclass(frozen=True)
class CardDetails:
    """What a gateway needs to charge a card (opened from the keyring for the call only)."""

    number: str = field(repr=False)  # never in a log line or a traceback's repr
    exp_month: int
    exp_year: int


@dataclass(frozen=True)
class GatewayCharge:
    """The gateway's record of one attempt: approved (with its reference) or declined."""

    attempt_id: UUID
    outcome: Literal["approved", "declined"]
    reference: str
    amount_cents: int
    currency: str
    failure_code: ChargeFailureCode | None = None


class ProcessorError(Exception):
    """The processor failed the call; it charged nothing."""


class PaymentGateway(Protocol):
    """The port: how billing verifies, charges and refunds cards."""

    async def verify_card(self, card: CardDetails, cvc: str) -> bool:
        """Whether the issuer accepts the card and its security code."""
        ...

    async def charge(
        self, attempt_id: UUID, card: CardDetails, amount_cents: int, currency: str
    ) -> GatewayCharge:
        """Charge the attempt once; asked again for the same attempt, answer its first outcome.
        Raises `ProcessorError` when nothing was charged."""
        ...

    async def find_charge(self, attempt_id: UUID) -> GatewayCharge | None:
        """What the gateway recorded for the attempt; None when it never reached it."""
        ...

    async def refund(self, refund_id: UUID, charge_reference: str, amount_cents: int) -> str:
        """Refund part of a charge once per `refund_id`; the refund's reference."""
        ...


class SandboxGateway:
    """A gateway in memory that decides by test card number (see the module's table)."""

    def __init__(self, answer_delay: float = 3600.0) -> None:
        # How long the time-out card keeps billing waiting: longer than any timeout billing
        # sets, so the call is always abandoned after the charge was made.
        self.answer_delay = answer_delay
        self.charges: dict[UUID, GatewayCharge] = {}
        self.refunds: dict[UUID, tuple[str, int]] = {}
        self.calls = 0

    async def verify_card(self, card: CardDetails, cvc: str) -> bool:
        return card.number != CVC_REFUSED

    async def charge(
        self, attempt_id: UUID, card: CardDetails, amount_cents: int, currency: str
    ) -> GatewayCharge:
        self.calls += 1
        earlier = self.charges.get(attempt_id)
        if earlier is not None:
            return earlier
        if card.number == PROCESSOR_ERROR:
            raise ProcessorError()
        declined = _DECLINES.get(card.number)
        charge = GatewayCharge(
            attempt_id=attempt_id,
            outcome="declined" if declined else "approved",
            reference=f"sandbox_{uuid7().hex}",
            amount_cents=amount_cents,
            currency=currency,
            failure_code=declined,
        )
        self.charges[attempt_id] = charge
        if card.number == TIME_OUT:
            await asyncio.sleep(self.answer_delay)
        return charge

    async def find_charge(self, attempt_id: UUID) -> GatewayCharge | None:
        return self.charges.get(attempt_id)

    async def refund(self, refund_id: UUID, charge_reference: str, amount_cents: int) -> str:
        self.refunds.setdefault(refund_id, (charge_reference, amount_cents))
        return f"sandbox_refund_{refund_id.hex}"

    def approved_charges(self) -> list[GatewayCharge]:
        """Every charge the sandbox approved (what a card statement would show)."""
        return [c for c in self.charges.values() if c.outcome == "approved"]
