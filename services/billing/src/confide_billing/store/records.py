"""Reads and writes of the read models: cards, charge attempts, charges, refunds, invoices
and the yearly invoice counters."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    delete,
    insert,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from confide_billing.store.tables import (
    charge_attempts,
    charges,
    invoice_counters,
    invoices,
    payment_methods,
    refunds,
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


async def pending_attempts(
    conn: AsyncConnection, attempted_before: datetime
) -> list[tuple[Attempt, str]]:
    """The attempts still pending that began before `attempted_before`, with their keys."""
    rows = await conn.execute(
        select(charge_attempts)
        .where(
            charge_attempts.c.status == "pending",
            charge_attempts.c.attempted_at < attempted_before,
        )
        .order_by(charge_attempts.c.attempted_at)
    )
    return [(_attempt(row), row.idempotency_key) for row in rows]


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
