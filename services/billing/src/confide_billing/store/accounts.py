"""The payment-account repository over the event store, and the projection that keeps
`payment_methods`, `charges` and `refunds` in step with each appended event."""

from __future__ import annotations

import uuid
from typing import Any

from confide_toolkit.clock import Clock
from confide_toolkit.event_store import EventStore, RecordedEvent
from sqlalchemy import bindparam, insert, update
from sqlalchemy.ext.asyncio import AsyncConnection

from confide_billing.domain import (
    ACCOUNT_EVENTS,
    CardAdded,
    CardRemoved,
    ChargeRecorded,
    ChargeRefused,
    PaymentAccount,
    RefundRecorded,
    sealed_bytes,
)
from confide_billing.store.tables import charges, payment_methods, refunds

# --- payment accounts ------------------------------------------------------------------------


class Accounts:
    """Loads and saves payment accounts through the event store (projections included)."""

    def __init__(self, clock: Clock) -> None:
        self.events = EventStore(ACCOUNT_EVENTS, clock, projections=[project_account])

    async def load_for_change(self, conn: AsyncConnection, subject_id: uuid.UUID) -> PaymentAccount:
        """The person's account, locked until the transaction ends: charges, refunds and card
        changes of one person queue up instead of racing."""
        return await self.load(conn, subject_id, for_change=True)

    async def load(
        self, conn: AsyncConnection, subject_id: uuid.UUID, *, for_change: bool = False
    ) -> PaymentAccount:
        recorded = await self.events.load(conn, subject_id, for_change=for_change)
        version = recorded[-1].version if recorded else 0
        return PaymentAccount.replay(subject_id, (r.event for r in recorded), version)

    async def save(self, conn: AsyncConnection, account: PaymentAccount) -> None:
        """Append the pending events; raises `ConcurrencyConflict` if the stream moved on."""
        recorded = await self.events.append(
            conn, account.subject_id, account.version, account.pending
        )
        account.version += len(recorded)
        account.pending.clear()


# Built once, as consent's and messaging's projections: a statement built per event cost
# more CPU than running it. `of_*` parameters name the row a statement changes.
_INSERT_PAYMENT_METHOD = insert(payment_methods)
# The SET columns are the parameters' names (all but the WHERE's).
_REMOVE_PAYMENT_METHOD = update(payment_methods).where(
    payment_methods.c.payment_method_id == bindparam("of_payment_method")
)
_INSERT_CHARGE = insert(charges)
_REFUND_CHARGE = (
    update(charges)
    .where(charges.c.charge_id == bindparam("of_charge"))
    .values(refunded_cents=charges.c.refunded_cents + bindparam("refund_cents"))
    .returning(charges.c.currency)
)
_INSERT_REFUND = insert(refunds)


async def project_account(conn: AsyncConnection, record: RecordedEvent) -> None:
    """Keep `payment_methods`, `charges` and `refunds` in step with one event."""
    event = record.event
    subject_id = record.stream_id
    if isinstance(event, CardAdded):
        await conn.execute(
            _INSERT_PAYMENT_METHOD,
            {
                "payment_method_id": event.payment_method_id,
                "subject_id": subject_id,
                "brand": event.brand,
                "sealed_card": sealed_bytes(event.sealed_card),
                "added_at": event.added_at,
            },
        )
    elif isinstance(event, CardRemoved):
        await conn.execute(
            _REMOVE_PAYMENT_METHOD,
            {"of_payment_method": event.payment_method_id, "removed_at": event.removed_at},
        )
    elif isinstance(event, ChargeRecorded):
        await conn.execute(
            _INSERT_CHARGE,
            {
                **_charge_columns(subject_id, event),
                "status": "succeeded",
                "gateway_reference": event.gateway_reference,
                "invoice_id": event.invoice_id,
                "charged_at": event.succeeded_at,
            },
        )
    elif isinstance(event, ChargeRefused):
        await conn.execute(
            _INSERT_CHARGE,
            {
                **_charge_columns(subject_id, event),
                "status": "failed",
                "failure_code": event.failure_code,
                "charged_at": event.failed_at,
            },
        )
    elif isinstance(event, RefundRecorded):
        currency = await conn.scalar(
            _REFUND_CHARGE, {"of_charge": event.charge_id, "refund_cents": event.amount_cents}
        )
        await conn.execute(
            _INSERT_REFUND,
            {
                "refund_id": event.refund_id,
                "charge_id": event.charge_id,
                "subject_id": subject_id,
                "amount_cents": event.amount_cents,
                "currency": currency,
                "reason": event.reason,
                "issued_at": event.issued_at,
            },
        )


def _charge_columns(subject_id: uuid.UUID, event: ChargeRecorded | ChargeRefused) -> dict[str, Any]:
    """The columns a charge has whether it succeeded or failed."""
    return {
        "charge_id": event.charge_id,
        "subject_id": subject_id,
        "payment_method_id": event.payment_method_id,
        "amount_cents": event.amount_cents,
        "currency": event.currency,
        "refunded_cents": 0,
        "session_type": event.session_type,
        "therapist_id": event.therapist_id,
        "sealed_description": sealed_bytes(event.sealed_description),
    }
