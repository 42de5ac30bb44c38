"""The billing service's tables, the payment-account repository and its projections.

- The payment accounts live in the toolkit's event store (`stored_events`), one stream per
  person (the stream id is the person's id); their events hold ciphertext, never card data.
- `payment_methods`, `charges` and `refunds` are the projection of those streams, written in
  the transaction of each append and rebuildable from them. A card (number, expiry, holder,
  billing address) is kept exactly as the keyring sealed it under the person's
  `billing.payment_methods` key; a charge's description under their
  `billing.financial_records` key. Only brands, amounts, currencies, times and ids are in the
  clear: what the books need after the person's data is gone.
- `charge_attempts` records each charge before the gateway is called, under the person's
  `Idempotency-Key`: a retry finds it and reconciles with the gateway instead of charging again.
- `invoices` (one per person, month and currency) and `invoice_counters` (the last number
  given each year, taken under the row's lock in the transaction that creates the invoice, so
  numbers have no gaps: a rolled-back invoice gives its number back).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from confide_toolkit.clock import Clock
from confide_toolkit.database import NAMING_CONVENTION
from confide_toolkit.event_store import EventStore, RecordedEvent
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    Uuid,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
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

metadata = MetaData(naming_convention=NAMING_CONVENTION)

payment_methods = Table(
    "payment_methods",
    metadata,
    Column("payment_method_id", Uuid, primary_key=True),
    Column("subject_id", Uuid, nullable=False, index=True),
    Column("brand", String(16), nullable=False),
    Column("sealed_card", LargeBinary, nullable=False),
    Column("added_at", DateTime(timezone=True), nullable=False),
    Column("removed_at", DateTime(timezone=True), nullable=True),
)
"""Projection of the cards: brand in the clear, the rest sealed (`billing.payment_methods`)."""

charges = Table(
    "charges",
    metadata,
    Column("charge_id", Uuid, primary_key=True),
    Column("subject_id", Uuid, nullable=False),
    Column("payment_method_id", Uuid, nullable=False),
    Column("status", String(16), nullable=False),
    Column("failure_code", String(32), nullable=True),
    Column("amount_cents", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("refunded_cents", BigInteger, nullable=False),
    Column("session_type", String(64), nullable=True),
    Column("therapist_id", Uuid, nullable=True),
    Column("sealed_description", LargeBinary, nullable=False),
    Column("gateway_reference", String(128), nullable=True),
    Column("invoice_id", Uuid, nullable=True, index=True),
    Column("charged_at", DateTime(timezone=True), nullable=False),
    # A person's page of charges, newest first.
    Index("ix_charges_subject_charge", "subject_id", "charge_id"),
)
"""Projection of the charges, succeeded and failed; the description sealed
(`billing.financial_records`)."""

refunds = Table(
    "refunds",
    metadata,
    Column("refund_id", Uuid, primary_key=True),
    Column("charge_id", Uuid, nullable=False, index=True),
    Column("subject_id", Uuid, nullable=False),
    Column("amount_cents", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("reason", String(32), nullable=False),
    Column("issued_at", DateTime(timezone=True), nullable=False),
)
"""Projection of the refunds."""

charge_attempts = Table(
    "charge_attempts",
    metadata,
    Column("charge_id", Uuid, primary_key=True),
    Column("subject_id", Uuid, nullable=False),
    Column("idempotency_key", String(255), nullable=False),
    Column("request_digest", String(64), nullable=False),
    Column("payment_method_id", Uuid, nullable=False),
    Column("amount_cents", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("session_type", String(64), nullable=True),
    Column("therapist_id", Uuid, nullable=True),
    Column("sealed_description", LargeBinary, nullable=False),
    # pending until the gateway's outcome is recorded; then succeeded or failed.
    Column("status", String(16), nullable=False),
    Column("failure_code", String(32), nullable=True),
    Column("attempted_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("subject_id", "idempotency_key"),
)
"""Every charge attempt, recorded before the gateway is called, under its Idempotency-Key."""

invoices = Table(
    "invoices",
    metadata,
    Column("invoice_id", Uuid, primary_key=True),
    Column("subject_id", Uuid, nullable=False),
    Column("year", Integer, nullable=False),
    Column("number", Integer, nullable=False),
    Column("period", String(7), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("issued_at", DateTime(timezone=True), nullable=False),
    # The addressee (holder's name and billing address), under billing.financial_records.
    Column("sealed_bill_to", LargeBinary, nullable=False),
    UniqueConstraint("year", "number"),
    UniqueConstraint("subject_id", "period", "currency"),
)
"""One invoice per person, month (`2026-11`) and currency, numbered per year without gaps."""

invoice_counters = Table(
    "invoice_counters",
    metadata,
    Column("year", Integer, primary_key=True),
    Column("last_number", Integer, nullable=False),
)
"""The last invoice number given in each year."""

_ACCOUNT_LOCK: Final = "confide.billing.account"


# --- payment accounts ------------------------------------------------------------------------


class Accounts:
    """Loads and saves payment accounts through the event store (projections included)."""

    def __init__(self, clock: Clock) -> None:
        self.events = EventStore(ACCOUNT_EVENTS, clock, projections=[project_account])

    async def load_for_change(self, conn: AsyncConnection, subject_id: uuid.UUID) -> PaymentAccount:
        """The person's account, locked until the transaction ends: charges, refunds and card
        changes of one person queue up instead of racing."""
        await conn.execute(
            select(
                func.pg_advisory_xact_lock(
                    func.hashtextextended(f"{_ACCOUNT_LOCK}:{subject_id}", 0)
                )
            )
        )
        return await self.load(conn, subject_id)

    async def load(self, conn: AsyncConnection, subject_id: uuid.UUID) -> PaymentAccount:
        recorded = await self.events.load(conn, subject_id)
        version = recorded[-1].version if recorded else 0
        return PaymentAccount.replay(subject_id, (r.event for r in recorded), version)

    async def save(self, conn: AsyncConnection, account: PaymentAccount) -> None:
        """Append the pending events; raises `ConcurrencyConflict` if the stream moved on."""
        recorded = await self.events.append(
            conn, account.subject_id, account.version, account.pending
        )
        account.version += len(recorded)
        account.pending.clear()


async def project_account(conn: AsyncConnection, record: RecordedEvent) -> None:
    """Keep `payment_methods`, `charges` and `refunds` in step with one event."""
    event = record.event
    subject_id = record.stream_id
    if isinstance(event, CardAdded):
        await conn.execute(
            insert(payment_methods).values(
                payment_method_id=event.payment_method_id,
                subject_id=subject_id,
                brand=event.brand,
                sealed_card=sealed_bytes(event.sealed_card),
                added_at=event.added_at,
            )
        )
    elif isinstance(event, CardRemoved):
        await conn.execute(
            update(payment_methods)
            .where(payment_methods.c.payment_method_id == event.payment_method_id)
            .values(removed_at=event.removed_at)
        )
    elif isinstance(event, ChargeRecorded | ChargeRefused):
        succeeded = isinstance(event, ChargeRecorded)
        await conn.execute(
            insert(charges).values(
                charge_id=event.charge_id,
                subject_id=subject_id,
                payment_method_id=event.payment_method_id,
                status="succeeded" if succeeded else "failed",
                failure_code=None if isinstance(event, ChargeRecorded) else event.failure_code,
                amount_cents=event.amount_cents,
                currency=event.currency,
                refunded_cents=0,
                session_type=event.session_type,
                therapist_id=event.therapist_id,
                sealed_description=sealed_bytes(event.sealed_description),
                gateway_reference=event.gateway_reference if succeeded else None,  # type: ignore[union-attr]
                invoice_id=event.invoice_id if succeeded else None,  # type: ignore[union-attr]
                charged_at=(
                    event.succeeded_at  # type: ignore[union-attr]
                    if succeeded
                    else event.failed_at  # type: ignore[union-attr]
                ),
            )
        )
    elif isinstance(event, RefundRecorded):
        currency = await conn.scalar(
            update(charges)
            .where(charges.c.charge_id == event.charge_id)
            .values(refunded_cents=charges.c.refunded_cents + event.amount_cents)
            .returning(charges.c.currency)
        )
        await conn.execute(
            insert(refunds).values(
                refund_id=event.refund_id,
                charge_id=event.charge_id,
                subject_id=subject_id,
                amount_cents=event.amount_cents,
                currency=currency,
                reason=event.reason,
                issued_at=event.issued_at,
            )
        )


# --- cards -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredCard:
    payment_method_id: uuid.UUID
    subject_id: uuid.UUID
    brand: str
    sealed_card: bytes
    added_at: datetime
    removed_at: datetime | None


def _card(row: Any) -> StoredCard:
    return StoredCard(
        row.payment_method_id,
        row.subject_id,
        row.brand,
        bytes(row.sealed_card),
        row.added_at,
        row.removed_at,
    )


async def find_card(conn: AsyncConnection, payment_method_id: uuid.UUID) -> StoredCard | None:
    row = (
        await conn.execute(
            select(payment_methods).where(payment_methods.c.payment_method_id == payment_method_id)
        )
    ).first()
    return None if row is None else _card(row)


async def cards_of(conn: AsyncConnection, subject_id: uuid.UUID) -> list[StoredCard]:
    """The person's cards still in use, newest first."""
    rows = await conn.execute(
        select(payment_methods)
        .where(payment_methods.c.subject_id == subject_id, payment_methods.c.removed_at.is_(None))
        .order_by(payment_methods.c.payment_method_id.desc())
    )
    return [_card(row) for row in rows]


# --- charge attempts -------------------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    charge_id: uuid.UUID
    subject_id: uuid.UUID
    request_digest: str
    payment_method_id: uuid.UUID
    amount_cents: int
    currency: str
    session_type: str | None
    therapist_id: uuid.UUID | None
    sealed_description: bytes
    status: str
    failure_code: str | None


def _attempt(row: Any) -> Attempt:
    return Attempt(
        row.charge_id,
        row.subject_id,
        row.request_digest,
        row.payment_method_id,
        row.amount_cents,
        row.currency,
        row.session_type,
        row.therapist_id,
        bytes(row.sealed_description),
        row.status,
        row.failure_code,
    )


async def find_attempt(
    conn: AsyncConnection, subject_id: uuid.UUID, idempotency_key: str, *, lock: bool = False
) -> Attempt | None:
    statement = select(charge_attempts).where(
        charge_attempts.c.subject_id == subject_id,
        charge_attempts.c.idempotency_key == idempotency_key,
    )
    row = (await conn.execute(statement.with_for_update() if lock else statement)).first()
    return None if row is None else _attempt(row)


async def record_attempt(
    conn: AsyncConnection, attempt: Attempt, idempotency_key: str, now: datetime
) -> bool:
    """Record a pending attempt; False when another request took the key first."""
    taken = await conn.scalar(
        pg_insert(charge_attempts)
        .values(
            charge_id=attempt.charge_id,
            subject_id=attempt.subject_id,
            idempotency_key=idempotency_key,
            request_digest=attempt.request_digest,
            payment_method_id=attempt.payment_method_id,
            amount_cents=attempt.amount_cents,
            currency=attempt.currency,
            session_type=attempt.session_type,
            therapist_id=attempt.therapist_id,
            sealed_description=attempt.sealed_description,
            status="pending",
            attempted_at=now,
        )
        .on_conflict_do_nothing()
        .returning(charge_attempts.c.charge_id)
    )
    return taken is not None


async def settle_attempt(
    conn: AsyncConnection, charge_id: uuid.UUID, status: str, failure_code: str | None
) -> None:
    await conn.execute(
        update(charge_attempts)
        .where(charge_attempts.c.charge_id == charge_id)
        .values(status=status, failure_code=failure_code)
    )


async def forget_attempt(conn: AsyncConnection, charge_id: uuid.UUID) -> None:
    """Remove a pending attempt that charged nothing (a processor error): no half-recorded
    charge stays, and the same key may be tried again."""
    await conn.execute(
        delete(charge_attempts).where(
            charge_attempts.c.charge_id == charge_id, charge_attempts.c.status == "pending"
        )
    )


# --- charges ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredCharge:
    charge_id: uuid.UUID
    subject_id: uuid.UUID
    payment_method_id: uuid.UUID
    status: str
    failure_code: str | None
    amount_cents: int
    currency: str
    refunded_cents: int
    session_type: str | None
    therapist_id: uuid.UUID | None
    gateway_reference: str | None
    invoice_id: uuid.UUID | None
    charged_at: datetime
    sealed_description: bytes


def _charge(row: Any) -> StoredCharge:
    return StoredCharge(
        row.charge_id,
        row.subject_id,
        row.payment_method_id,
        row.status,
        row.failure_code,
        row.amount_cents,
        row.currency,
        row.refunded_cents,
        row.session_type,
        row.therapist_id,
        row.gateway_reference,
        row.invoice_id,
        row.charged_at,
        bytes(row.sealed_description),
    )


async def find_charge(conn: AsyncConnection, charge_id: uuid.UUID) -> StoredCharge | None:
    row = (await conn.execute(select(charges).where(charges.c.charge_id == charge_id))).first()
    return None if row is None else _charge(row)


async def list_charges(
    conn: AsyncConnection, subject_id: uuid.UUID, *, limit: int, before: uuid.UUID | None
) -> list[StoredCharge]:
    """The person's charges newest first (ids are UUIDv7), older than the cursor `before`."""
    statement = select(charges).where(charges.c.subject_id == subject_id)
    if before is not None:
        statement = statement.where(charges.c.charge_id < before)
    rows = await conn.execute(statement.order_by(charges.c.charge_id.desc()).limit(limit))
    return [_charge(row) for row in rows]


async def charges_of_invoice(conn: AsyncConnection, invoice_id: uuid.UUID) -> list[StoredCharge]:
    rows = await conn.execute(
        select(charges).where(charges.c.invoice_id == invoice_id).order_by(charges.c.charge_id)
    )
    return [_charge(row) for row in rows]


@dataclass(frozen=True)
class StoredRefund:
    refund_id: uuid.UUID
    charge_id: uuid.UUID
    amount_cents: int
    currency: str
    reason: str
    issued_at: datetime


async def refunds_of_invoice(conn: AsyncConnection, invoice_id: uuid.UUID) -> list[StoredRefund]:
    rows = await conn.execute(
        select(refunds)
        .join(charges, charges.c.charge_id == refunds.c.charge_id)
        .where(charges.c.invoice_id == invoice_id)
        .order_by(refunds.c.refund_id)
    )
    return [
        StoredRefund(r.refund_id, r.charge_id, r.amount_cents, r.currency, r.reason, r.issued_at)
        for r in rows
    ]


# --- invoices --------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredInvoice:
    invoice_id: uuid.UUID
    subject_id: uuid.UUID
    year: int
    number: int
    period: str
    currency: str
    issued_at: datetime
    sealed_bill_to: bytes

    @property
    def invoice_number(self) -> str:
        return f"{self.year}-{self.number:06d}"


def _invoice(row: Any) -> StoredInvoice:
    return StoredInvoice(
        row.invoice_id,
        row.subject_id,
        row.year,
        row.number,
        row.period,
        row.currency,
        row.issued_at,
        bytes(row.sealed_bill_to),
    )


async def find_invoice(conn: AsyncConnection, invoice_id: uuid.UUID) -> StoredInvoice | None:
    row = (await conn.execute(select(invoices).where(invoices.c.invoice_id == invoice_id))).first()
    return None if row is None else _invoice(row)


async def invoice_of_period(
    conn: AsyncConnection, subject_id: uuid.UUID, period: str, currency: str
) -> StoredInvoice | None:
    row = (
        await conn.execute(
            select(invoices).where(
                invoices.c.subject_id == subject_id,
                invoices.c.period == period,
                invoices.c.currency == currency,
            )
        )
    ).first()
    return None if row is None else _invoice(row)


async def next_invoice_number(conn: AsyncConnection, year: int) -> int:
    """The year's next number. The counter row stays locked until the caller's transaction
    ends, so concurrent invoices take numbers one after the other, and a rollback gives the
    number back: the numbers that exist have no gaps."""
    number: int = await conn.scalar(
        pg_insert(invoice_counters)
        .values(year=year, last_number=1)
        .on_conflict_do_update(
            index_elements=[invoice_counters.c.year],
            set_={"last_number": invoice_counters.c.last_number + 1},
        )
        .returning(invoice_counters.c.last_number)
    )
    return number


async def add_invoice(conn: AsyncConnection, invoice: StoredInvoice) -> None:
    await conn.execute(
        insert(invoices).values(
            invoice_id=invoice.invoice_id,
            subject_id=invoice.subject_id,
            year=invoice.year,
            number=invoice.number,
            period=invoice.period,
            currency=invoice.currency,
            issued_at=invoice.issued_at,
            sealed_bill_to=invoice.sealed_bill_to,
        )
    )


async def list_invoices(
    conn: AsyncConnection, subject_id: uuid.UUID, *, limit: int, before: uuid.UUID | None
) -> list[StoredInvoice]:
    statement = select(invoices).where(invoices.c.subject_id == subject_id)
    if before is not None:
        statement = statement.where(invoices.c.invoice_id < before)
    rows = await conn.execute(statement.order_by(invoices.c.invoice_id.desc()).limit(limit))
    return [_invoice(row) for row in rows]
