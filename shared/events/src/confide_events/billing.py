"""Events published by the billing service on `billing.events`.

Card data never leaves billing: a payment method is known elsewhere only by its
id and its brand.
"""

from typing import Annotated, ClassVar, Literal
from uuid import UUID

from pydantic import Field

from confide_events.base import IntegrationEvent
from confide_events.shredding import SubjectDataShredded as _SubjectDataShredded
from confide_events.shredding import SubjectDataShreddedV1 as _SubjectDataShreddedV1
from confide_events.vocabulary import BillingCategory, CurrencyCode, UtcDateTime

PRODUCER = "billing"

CardBrand = Literal[
    "visa", "mastercard", "amex", "discover", "jcb", "diners", "unionpay", "unknown"
]

ChargeFailureCode = Literal[
    "card_declined",
    "insufficient_funds",
    "expired_card",
    "authentication_required",
    "fraud_suspected",
    "processing_error",
]

RefundReason = Literal["requested_by_client", "session_cancelled", "duplicate_charge", "goodwill"]

AmountCents = Annotated[int, Field(gt=0)]
"""An amount in the currency's minor unit (cents), always positive."""


class PaymentMethodAdded(IntegrationEvent):
    """A person added a payment method (only its id and brand; no card data)."""

    event_type: ClassVar[str] = "confide.billing.PaymentMethodAdded"
    schema_version: ClassVar[int] = 1
    producer: ClassVar[str] = PRODUCER

    payment_method_id: UUID
    subject_id: UUID
    brand: CardBrand
    added_at: UtcDateTime


class PaymentMethodRemoved(IntegrationEvent):
    """A payment method was removed; its retention clock starts."""

    event_type: ClassVar[str] = "confide.billing.PaymentMethodRemoved"
    schema_version: ClassVar[int] = 1
    producer: ClassVar[str] = PRODUCER

    payment_method_id: UUID
    subject_id: UUID
    removed_at: UtcDateTime


class ChargeSucceeded(IntegrationEvent):
    """A person was charged."""

    event_type: ClassVar[str] = "confide.billing.ChargeSucceeded"
    schema_version: ClassVar[int] = 1
    producer: ClassVar[str] = PRODUCER

    charge_id: UUID
    subject_id: UUID
    payment_method_id: UUID
    amount_cents: AmountCents
    currency: CurrencyCode
    succeeded_at: UtcDateTime


class ChargeFailed(IntegrationEvent):
    """A charge was refused or could not be processed."""

    event_type: ClassVar[str] = "confide.billing.ChargeFailed"
    schema_version: ClassVar[int] = 1
    producer: ClassVar[str] = PRODUCER

    charge_id: UUID
    subject_id: UUID
    payment_method_id: UUID
    amount_cents: AmountCents
    currency: CurrencyCode
    failure_code: ChargeFailureCode
    failed_at: UtcDateTime


class RefundIssued(IntegrationEvent):
    """Part or all of a charge was refunded."""

    event_type: ClassVar[str] = "confide.billing.RefundIssued"
    schema_version: ClassVar[int] = 1
    producer: ClassVar[str] = PRODUCER

    refund_id: UUID
    charge_id: UUID
    subject_id: UUID
    amount_cents: AmountCents
    currency: CurrencyCode
    reason: RefundReason
    issued_at: UtcDateTime


class SubjectDataShredded(_SubjectDataShredded):
    """Billing's answer to a `RetentionExpired` for one of its categories: the person's
    key destroyed (`shredded`), or no data held for them (`nothing_held`)."""

    event_type: ClassVar[str] = "confide.billing.SubjectDataShredded"
    schema_version: ClassVar[int] = 2
    producer: ClassVar[str] = PRODUCER

    category: BillingCategory


# Version 1 of `SubjectDataShredded`, frozen: do not edit; read as version 2 through
# `shredding.upcast_subject_data_shredded_v1`. (Its docstring is its committed schema's.)
class SubjectDataShreddedV1(_SubjectDataShreddedV1):
    """Billing destroyed a person's key for their payment methods or financial records."""

    event_type: ClassVar[str] = "confide.billing.SubjectDataShredded"
    schema_version: ClassVar[int] = 1
    producer: ClassVar[str] = PRODUCER

    category: BillingCategory
