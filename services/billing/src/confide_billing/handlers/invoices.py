"""Invoices and superbills, as their owner downloads them.

An invoice lists a month's charges in one currency and the refunds of those charges, with
totals. Its addressee and the charges' descriptions are financial records: once retention
shredded the person's `billing.financial_records` key they read as erased, while the invoice's
number, dates and amounts stay for the books. A superbill (what a client files with their
insurer) gives per session its date, type, amount and therapist's id, and nothing else: no
description, nothing from session notes (billing never holds them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy.ext.asyncio import AsyncConnection

from confide_billing import store
from confide_billing.domain import InvoiceNotFound
from confide_billing.handlers import Dependencies
from confide_billing.handlers.sealing import open_record
from confide_billing.store import StoredInvoice


@dataclass(frozen=True)
class InvoiceLine:
    charge_id: UUID
    charged_at: datetime
    session_type: str | None
    therapist_id: UUID | None
    description: str | None
    amount_cents: int


@dataclass(frozen=True)
class RefundLine:
    refund_id: UUID
    charge_id: UUID
    issued_at: datetime
    reason: str
    amount_cents: int


@dataclass(frozen=True)
class Invoice:
    invoice_id: UUID
    invoice_number: str
    subject_id: UUID
    period: str
    currency: str
    issued_at: datetime
    bill_to: dict[str, Any] | None
    """The holder's name and billing address; None once the financial records were erased."""
    lines: list[InvoiceLine] = field(default_factory=list)
    refunds: list[RefundLine] = field(default_factory=list)

    @property
    def person_erased(self) -> bool:
        return self.bill_to is None

    @property
    def total_charged_cents(self) -> int:
        return sum(line.amount_cents for line in self.lines)

    @property
    def total_refunded_cents(self) -> int:
        return sum(refund.amount_cents for refund in self.refunds)

    @property
    def total_cents(self) -> int:
        return self.total_charged_cents - self.total_refunded_cents


async def list_invoices(
    deps: Dependencies, subject_id: UUID, *, limit: int, before: UUID | None
) -> list[Invoice]:
    """The person's invoices, newest first."""
    async with deps.engine.connect() as conn:
        found = await store.list_invoices(conn, subject_id, limit=limit, before=before)
        return [await _invoice(deps, conn, invoice) for invoice in found]


async def read_invoice(deps: Dependencies, subject_id: UUID, invoice_id: UUID) -> Invoice:
    """One invoice of the person's; anyone else's does not exist."""
    async with deps.engine.connect() as conn:
        stored = await store.find_invoice(conn, invoice_id)
        if stored is None or stored.subject_id != subject_id:
            raise InvoiceNotFound(invoice_id)
        return await _invoice(deps, conn, stored)


async def _invoice(deps: Dependencies, conn: AsyncConnection, stored: StoredInvoice) -> Invoice:
    bill_to = await open_record(
        deps.keyring, conn, stored.subject_id, stored.invoice_id, stored.sealed_bill_to
    )
    lines = []
    for charge in await store.charges_of_invoice(conn, stored.invoice_id):
        record = await open_record(
            deps.keyring, conn, stored.subject_id, charge.charge_id, charge.sealed_description
        )
        lines.append(
            InvoiceLine(
                charge.charge_id,
                charge.charged_at,
                charge.session_type,
                charge.therapist_id,
                None if record is None else record["description"],
                charge.amount_cents,
            )
        )
    refunds = [
        RefundLine(r.refund_id, r.charge_id, r.issued_at, r.reason, r.amount_cents)
        for r in await store.refunds_of_invoice(conn, stored.invoice_id)
    ]
    return Invoice(
        invoice_id=stored.invoice_id,
        invoice_number=stored.invoice_number,
        subject_id=stored.subject_id,
        period=stored.period,
        currency=stored.currency,
        issued_at=stored.issued_at,
        bill_to=bill_to,
        lines=lines,
        refunds=refunds,
    )
