"""The retention service's tables (the docstring of `store` says what each holds)."""

from __future__ import annotations

from confide_toolkit.database import NAMING_CONVENTION
from confide_toolkit.signed_documents import signing_key_table
from sqlalchemy import (
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    Uuid,
)

metadata = MetaData(naming_convention=NAMING_CONVENTION)

erasure_cases = Table(
    "erasure_cases",
    metadata,
    Column("case_id", Uuid, primary_key=True),
    Column("subject_id", Uuid, nullable=False, index=True),
    Column("origin", String(32), nullable=False),
    Column("status", String(16), nullable=False),
    Column("requested_at", DateTime(timezone=True), nullable=False),
    Column("completed_at", DateTime(timezone=True), nullable=True),
    Column("certificate_id", Uuid, nullable=True, unique=True),
)
"""Projection of the erasure case streams."""

subject_clocks = Table(
    "subject_clocks",
    metadata,
    Column("subject_id", Uuid, primary_key=True),
    Column("trigger", String(32), primary_key=True),
    Column("happened_at", DateTime(timezone=True), nullable=False),
)
"""Per person, the latest time each clock-starting fact happened."""

payment_methods = Table(
    "payment_methods",
    metadata,
    Column("payment_method_id", Uuid, primary_key=True),
    Column("subject_id", Uuid, nullable=False, index=True),
    Column("removed_at", DateTime(timezone=True), nullable=True),
)
"""A person's payment methods (ids only): the clock of their card data starts when the last
one is removed."""

expiries = Table(
    "expiries",
    metadata,
    Column("subject_id", Uuid, primary_key=True),
    Column("category", String(64), primary_key=True),
    Column("policy", String(64), nullable=False),
    Column("due_at", DateTime(timezone=True), nullable=False),
    Column("erasure_case_id", Uuid, nullable=True),
    Column("emitted_at", DateTime(timezone=True), nullable=True),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", DateTime(timezone=True), nullable=True),
    Column("answered_at", DateTime(timezone=True), nullable=True),
    Column("outcome", String(16), nullable=True),
    Column("key_id", Uuid, nullable=True),
    Column("answered_by", String(32), nullable=True),
    # What the scheduler scans: the rows not yet answered, by when they are next due.
    Index(
        "ix_expiries_unanswered",
        "due_at",
        postgresql_where=Column("answered_at").is_(None),
    ),
)
"""The schedule: each (person, category)'s next expiry and how far it got."""

legal_holds = Table(
    "legal_holds",
    metadata,
    Column("hold_id", Uuid, primary_key=True),
    Column("subject_id", Uuid, nullable=False, index=True),
    Column("reason", String(32), nullable=False),
    Column("placed_by", Uuid, nullable=False),
    Column("placed_at", DateTime(timezone=True), nullable=False),
    Column("released_by", Uuid, nullable=True),
    Column("released_at", DateTime(timezone=True), nullable=True),
)

certificates = Table(
    "certificates",
    metadata,
    Column("certificate_id", Uuid, primary_key=True),
    Column("erasure_case_id", Uuid, nullable=False, unique=True),
    Column("subject_id", Uuid, nullable=False),
    Column("kid", String(64), nullable=False),
    Column("jws", Text, nullable=False),
    Column("issued_at", DateTime(timezone=True), nullable=False),
)

certificate_signing_keys = signing_key_table("certificate_signing_keys", metadata)
