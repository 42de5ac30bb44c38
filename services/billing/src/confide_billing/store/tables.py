"""The billing service's tables (see the package's docstring for what each holds)."""

from __future__ import annotations

from confide_toolkit.database import NAMING_CONVENTION
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
