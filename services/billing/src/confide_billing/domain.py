"""The payment account: one aggregate per person, rebuilt from the stream of its events.

A person adds cards, removes them, is charged on one of their cards and refunded, partly or
wholly, never above what a charge took. Amounts are integer minor units with an ISO 4217 code.
Card data reaches the domain only sealed (`Keyring.encrypt` under the person's
`billing.payment_methods` key, bound to the card's id); a charge's description and the invoice's
addressee only sealed under their `billing.financial_records` key, so either category can be
shredded without the other. The events hold ciphertext, never a card number, address or CVC.
The invariants live here, with no I/O.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final, Literal
from uuid import UUID

from confide_events.billing import CardBrand, ChargeFailureCode, RefundReason
from confide_events.vocabulary import BillingCategory
from confide_toolkit.domain_events import DomainEvent

STREAM_TYPE: Final = "payment_account"

PAYMENT_METHODS: Final = "billing.payment_methods"
"""The category (and keyring key) of card numbers and billing addresses."""
FINANCIAL_RECORDS: Final = "billing.financial_records"
"""The category (and keyring key) of what the books keep about a person: charge descriptions
and invoice addressees, kept for years after the cards are gone."""
BILLING_CATEGORIES: Final[tuple[BillingCategory, ...]] = (PAYMENT_METHODS, FINANCIAL_RECORDS)

RemovalReason = Literal["removed", "account_closed"]


def billing_category(category: str) -> BillingCategory | None:
    """The billing category named, or None for another service's."""
    if category == PAYMENT_METHODS:
        return PAYMENT_METHODS
    if category == FINANCIAL_RECORDS:
        return FINANCIAL_RECORDS
    return None


# --- errors: each names the request field it is about, when there is one ---------------------


class BillingError(Exception):
    """A command the service refuses. Messages carry pseudonymous ids only, never card data."""

    field: str | None = None


class CardRejected(BillingError):
    """A card field failed its check. The message says why, never what was submitted."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field = field


class CardNotVerified(BillingError):
    """The gateway did not accept the card's security code."""

    field = "cvc"

    def __init__(self) -> None:
        super().__init__("The card's issuer did not accept this security code.")


class AccountNotOpen(BillingError):
    """The person closed their account: billing takes no new card and makes no charge."""

    def __init__(self, subject_id: UUID) -> None:
        super().__init__(f"The account of {subject_id} is closed.")


class PaymentMethodNotFound(BillingError):
    """No such payment method of the caller's (to anyone else, it does not exist)."""

    def __init__(self, payment_method_id: UUID) -> None:
        super().__init__(f"There is no payment method {payment_method_id}.")


class PaymentMethodNotUsable(BillingError):
    """The payment method was removed, its data erased, or its owner's account closed."""

    def __init__(self, payment_method_id: UUID) -> None:
        super().__init__(f"The payment method {payment_method_id} can no longer be charged.")


class IdempotencyKeyReused(BillingError):
    """The Idempotency-Key was already used for a different charge."""

    field = "Idempotency-Key"

    def __init__(self) -> None:
        super().__init__("This Idempotency-Key was already used for a different charge.")


class ChargeDeclined(BillingError):
    """The card's issuer declined the charge; it is recorded as failed."""

    def __init__(self, charge_id: UUID, failure_code: ChargeFailureCode) -> None:
        super().__init__(f"The charge {charge_id} was declined ({failure_code}).")
        self.charge_id = charge_id
        self.failure_code = failure_code


class GatewayTimedOut(BillingError):
    """The gateway did not answer in time. The attempt stays recorded: a retry with the same
    Idempotency-Key learns its outcome from the gateway and never charges twice."""

    retry_after = 1

    def __init__(self, charge_id: UUID) -> None:
        super().__init__(
            f"The payment gateway did not answer in time for charge {charge_id}; retry with "
            "the same Idempotency-Key to learn its outcome."
        )


class ProcessorFailed(BillingError):
    """The gateway failed to process the charge; nothing was charged and nothing recorded."""

    def __init__(self) -> None:
        super().__init__("The payment processor failed; nothing was charged.")


class ChargeNotFound(BillingError):
    """No such charge the caller may see or refund."""

    def __init__(self, charge_id: UUID) -> None:
        super().__init__(f"There is no charge {charge_id}.")


class ChargeNotRefundable(BillingError):
    """Only a charge that succeeded can be refunded."""

    def __init__(self, charge_id: UUID) -> None:
        super().__init__(f"The charge {charge_id} did not succeed; there is nothing to refund.")


class RefundExceedsCharge(BillingError):
    """A refund above what is left of the charge."""

    field = "amount_cents"

    def __init__(self, charge_id: UUID, refundable: int) -> None:
        super().__init__(f"At most {refundable} of charge {charge_id} can still be refunded.")


class UnknownSessionType(BillingError):
    field = "session_type"

    def __init__(self) -> None:
        super().__init__("There is no such session type.")


class CurrencyNotAccepted(BillingError):
    field = "currency"

    def __init__(self) -> None:
        super().__init__(
            "Billing does not charge in this currency (or this session type has no price in it)."
        )


class AmountNotThePrice(BillingError):
    field = "amount_cents"

    def __init__(self, price: int) -> None:
        super().__init__(f"This session type costs {price} in this currency.")


class InvoiceNotFound(BillingError):
    def __init__(self, invoice_id: UUID) -> None:
        super().__init__(f"There is no invoice {invoice_id}.")


# --- the account's events --------------------------------------------------------------------


def seal_text(ciphertext: bytes) -> str:
    """Ciphertext as a domain event carries it (events are JSON)."""
    return base64.b64encode(ciphertext).decode("ascii")


def sealed_bytes(text: str) -> bytes:
    """The ciphertext a domain event carries."""
    return base64.b64decode(text)


class CardAdded(DomainEvent):
    """A card was added; `sealed_card` holds its number, expiry, holder and billing address
    under the person's `billing.payment_methods` key. Only the brand is in the clear."""

    stream_type = STREAM_TYPE
    event_type = "CardAdded"
    schema_version = 1

    payment_method_id: UUID
    brand: CardBrand
    sealed_card: str
    added_at: datetime


class CardRemoved(DomainEvent):
    stream_type = STREAM_TYPE
    event_type = "CardRemoved"
    schema_version = 1

    payment_method_id: UUID
    reason: RemovalReason
    removed_at: datetime


class AccountClosedForBilling(DomainEvent):
    """The person's account closed: no new card, no new charge."""

    stream_type = STREAM_TYPE
    event_type = "AccountClosed"
    schema_version = 1

    closed_at: datetime


class ChargeRecorded(DomainEvent):
    """A charge succeeded. `sealed_description` is under `billing.financial_records`."""

    stream_type = STREAM_TYPE
    event_type = "ChargeRecorded"
    schema_version = 1

    charge_id: UUID
    payment_method_id: UUID
    amount_cents: int
    currency: str
    session_type: str | None
    therapist_id: UUID | None
    sealed_description: str
    gateway_reference: str
    invoice_id: UUID
    succeeded_at: datetime


class ChargeRefused(DomainEvent):
    """The issuer declined a charge."""

    stream_type = STREAM_TYPE
    event_type = "ChargeRefused"
    schema_version = 1

    charge_id: UUID
    payment_method_id: UUID
    amount_cents: int
    currency: str
    session_type: str | None
    therapist_id: UUID | None
    sealed_description: str
    failure_code: ChargeFailureCode
    failed_at: datetime


class RefundRecorded(DomainEvent):
    stream_type = STREAM_TYPE
    event_type = "RefundRecorded"
    schema_version = 1

    refund_id: UUID
    charge_id: UUID
    amount_cents: int
    reason: RefundReason
    issued_at: datetime


ACCOUNT_EVENTS: tuple[type[DomainEvent], ...] = (
    CardAdded,
    CardRemoved,
    AccountClosedForBilling,
    ChargeRecorded,
    ChargeRefused,
    RefundRecorded,
)


# --- the aggregate ---------------------------------------------------------------------------


@dataclass
class CardState:
    brand: CardBrand
    removed: bool = False


@dataclass
class ChargeState:
    amount_cents: int
    currency: str
    refunded_cents: int = 0

    @property
    def refundable(self) -> int:
        return self.amount_cents - self.refunded_cents


@dataclass
class PaymentAccount:
    """One person's payment account. Commands check the invariants, then record and apply new
    events; `pending` holds what is to be appended after `version`."""

    subject_id: UUID
    version: int = 0
    closed: bool = False
    cards: dict[UUID, CardState] = field(default_factory=dict)
    charges: dict[UUID, ChargeState] = field(default_factory=dict)
    pending: list[DomainEvent] = field(default_factory=list)

    @classmethod
    def replay(
        cls, subject_id: UUID, events: Iterable[DomainEvent], version: int
    ) -> PaymentAccount:
        account = cls(subject_id, version)
        for event in events:
            account._apply(event)
        return account

    # -- commands ------------------------------------------------------------------------------

    def add_card(
        self, payment_method_id: UUID, brand: CardBrand, sealed_card: bytes, now: datetime
    ) -> None:
        self.check_open()
        self._record(
            CardAdded(
                payment_method_id=payment_method_id,
                brand=brand,
                sealed_card=seal_text(sealed_card),
                added_at=now,
            )
        )

    def remove_card(self, payment_method_id: UUID, now: datetime) -> bool:
        """Remove a card of the person's; False when it was already removed (nothing recorded)."""
        card = self.cards.get(payment_method_id)
        if card is None:
            raise PaymentMethodNotFound(payment_method_id)
        if card.removed:
            return False
        self._record(
            CardRemoved(payment_method_id=payment_method_id, reason="removed", removed_at=now)
        )
        return True

    def close(self, now: datetime) -> list[UUID]:
        """The account closed: every card still usable is removed. The cards removed; nothing
        is recorded when it was closed already."""
        if self.closed:
            return []
        removed = [pid for pid, card in self.cards.items() if not card.removed]
        for payment_method_id in removed:
            self._record(
                CardRemoved(
                    payment_method_id=payment_method_id, reason="account_closed", removed_at=now
                )
            )
        self._record(AccountClosedForBilling(closed_at=now))
        return removed

    def check_open(self) -> None:
        if self.closed:
            raise AccountNotOpen(self.subject_id)

    def check_chargeable(self, payment_method_id: UUID) -> None:
        """The card exists, is the person's, and may be charged now."""
        card = self.cards.get(payment_method_id)
        if card is None:
            raise PaymentMethodNotFound(payment_method_id)
        if card.removed or self.closed:
            raise PaymentMethodNotUsable(payment_method_id)

    def record_charge(self, charge: ChargeRecorded) -> None:
        if charge.charge_id in self.charges:
            return  # settled already: a charge is recorded once
        self._record(charge)

    def record_refusal(self, refusal: ChargeRefused) -> None:
        self._record(refusal)

    def refund(
        self,
        refund_id: UUID,
        charge_id: UUID,
        amount_cents: int,
        reason: RefundReason,
        now: datetime,
    ) -> RefundRecorded:
        """Refund part or all of what is left of a charge; never above it."""
        charge = self.charges.get(charge_id)
        if charge is None:
            raise ChargeNotRefundable(charge_id)
        if amount_cents > charge.refundable:
            raise RefundExceedsCharge(charge_id, charge.refundable)
        refund = RefundRecorded(
            refund_id=refund_id,
            charge_id=charge_id,
            amount_cents=amount_cents,
            reason=reason,
            issued_at=now,
        )
        self._record(refund)
        return refund

    # -- events --------------------------------------------------------------------------------

    def _record(self, event: DomainEvent) -> None:
        self._apply(event)
        self.pending.append(event)

    def _apply(self, event: DomainEvent) -> None:
        if isinstance(event, CardAdded):
            self.cards[event.payment_method_id] = CardState(event.brand)
        elif isinstance(event, CardRemoved):
            self.cards[event.payment_method_id].removed = True
        elif isinstance(event, AccountClosedForBilling):
            self.closed = True
        elif isinstance(event, ChargeRecorded):
            self.charges[event.charge_id] = ChargeState(event.amount_cents, event.currency)
        elif isinstance(event, RefundRecorded):
            self.charges[event.charge_id].refunded_cents += event.amount_cents
