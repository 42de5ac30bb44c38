"""Every service's own read model of consents, fed by the consent service's events.

Services never call the consent service (DESIGN rule 1): a service that must check consent
before disclosing data subscribes to `consent.events` and keeps `consent_view` in its own
database, then asks `find_valid_consent` before each disclosure::

    service.subscribe(CONSENT_EVENTS, consent_handlers())
    ...
    consent = await find_valid_consent(
        conn, subject_id, "share_with_provider", recipient_id, ["messaging.session_notes"], now
    )
    if consent is None:
        raise Forbidden("No valid consent covers this disclosure.")

The table is an optional part of the toolkit's migration history: a service that keeps it
says so in its `migrations/env.py`, `run_migrations(store.metadata,
toolkit_parts=[CONSENT_VIEW])` (`confide_toolkit.migrations`).

The view is an interval per consent: valid from `granted_at` until `revoked_at` (exclusive),
so it answers for any moment, past or present. The handlers are idempotent and commutative: a
revocation that arrives before its grant (a grant replayed from the dead-letter topic, say) is
kept, and the grant then fills in the rest of the row without reopening the consent.

What a consent is, and when it is valid, is written here once for every read model of consents,
the consent service's own included: `ConsentRecord` (its terms, `valid_at`, `covers`, and
`from_row`, the mapping of a row) and `valid_at_clause` (the same rule in SQL, for any table
with `granted_at` and `revoked_at` columns). The consent service's `Consent` extends the record
with what only the ledger knows (how it was collected, its receipt).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Self
from uuid import UUID

from confide_events import IntegrationEvent
from confide_events.consent import ConsentGranted, ConsentRevoked, RevocationReason
from confide_events.vocabulary import DataCategory
from sqlalchemy import (
    Column,
    ColumnElement,
    DateTime,
    Index,
    String,
    Table,
    Text,
    Uuid,
    and_,
    func,
    or_,
    select,
)
from sqlalchemy.dialects.postgresql import ARRAY, insert
from sqlalchemy.ext.asyncio import AsyncConnection

from confide_toolkit.database import toolkit_metadata
from confide_toolkit.inbox import EventContext, EventHandler

consent_view = Table(
    "consent_view",
    toolkit_metadata,
    Column("consent_id", Uuid, primary_key=True),
    Column("subject_id", Uuid, nullable=False),
    # The grant's columns are null only while a revocation has arrived before its grant.
    Column("purpose", String(64), nullable=True),
    Column("recipient_id", Uuid, nullable=True),
    Column("data_categories", ARRAY(Text), nullable=True),
    Column("policy_version", String(32), nullable=True),
    Column("policy_hash", String(64), nullable=True),
    Column("granted_at", DateTime(timezone=True), nullable=True),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
    Column("revoke_reason", String(32), nullable=True),
    # find_valid_consent looks consents up by person and purpose.
    Index("ix_consent_view_subject_purpose", "subject_id", "purpose"),
)
"""A service's copy of every consent: who allowed what, to whom, from when until when."""


@dataclass(frozen=True, kw_only=True)
class ConsentRecord:
    """A consent's terms and its validity interval: who allowed what, to whom, under which
    policy text, from `granted_at` until `revoked_at` (exclusive; None while in force).

    Every read model of consents answers with it (or, in the consent service, its subclass
    `Consent`); `valid_at` is the rule, and `valid_at_clause` the same rule in SQL."""

    consent_id: UUID
    subject_id: UUID
    purpose: str
    recipient_id: UUID | None
    data_categories: tuple[DataCategory, ...]
    policy_version: str
    policy_hash: str
    granted_at: datetime
    revoked_at: datetime | None = None
    revoke_reason: RevocationReason | None = None

    def valid_at(self, at: datetime) -> bool:
        """Whether the consent was in force at `at`: granted by then, not yet revoked."""
        return self.granted_at <= at and (self.revoked_at is None or at < self.revoked_at)

    def covers(self, categories: Collection[str]) -> bool:
        """Whether the consent covers every one of `categories`."""
        return set(categories) <= set(self.data_categories)

    @classmethod
    def from_row(cls, row: Any, **more: Any) -> Self:
        """The record of a row that has the record's columns (`consent_view`, or the consent
        service's `consents`); `more` gives the fields a subclass adds."""
        return cls(
            consent_id=row.consent_id,
            subject_id=row.subject_id,
            purpose=row.purpose,
            recipient_id=row.recipient_id,
            data_categories=tuple(row.data_categories),
            policy_version=row.policy_version,
            policy_hash=row.policy_hash,
            granted_at=row.granted_at,
            revoked_at=row.revoked_at,
            revoke_reason=row.revoke_reason,
            **more,
        )


def valid_at_clause(table: Table, at: datetime) -> ColumnElement[bool]:
    """`ConsentRecord.valid_at` in SQL, for a table with `granted_at` and `revoked_at` columns:
    granted by `at` and not revoked by then. A row without `granted_at` (a revocation that
    arrived before its grant) is never valid."""
    return and_(
        table.c.granted_at <= at,
        or_(table.c.revoked_at.is_(None), table.c.revoked_at > at),
    )


async def record_consent_granted(event: ConsentGranted, ctx: EventContext) -> None:
    """Add a granted consent to the view (idempotent; keeps a revocation already recorded)."""
    statement = insert(consent_view).values(
        consent_id=event.consent_id,
        subject_id=event.subject_id,
        purpose=event.purpose,
        recipient_id=event.recipient_id,
        data_categories=list(event.data_categories),
        policy_version=event.policy_version,
        policy_hash=event.policy_hash,
        granted_at=event.granted_at,
    )
    excluded = statement.excluded
    await ctx.conn.execute(
        statement.on_conflict_do_update(
            index_elements=[consent_view.c.consent_id],
            set_={
                "purpose": excluded.purpose,
                "recipient_id": excluded.recipient_id,
                "data_categories": excluded.data_categories,
                "policy_version": excluded.policy_version,
                "policy_hash": excluded.policy_hash,
                "granted_at": excluded.granted_at,
            },
        )
    )


async def record_consent_revoked(event: ConsentRevoked, ctx: EventContext) -> None:
    """Close a consent's interval at `revoked_at` (idempotent; the first revocation stands)."""
    statement = insert(consent_view).values(
        consent_id=event.consent_id,
        subject_id=event.subject_id,
        revoked_at=event.revoked_at,
        revoke_reason=event.reason,
    )
    await ctx.conn.execute(
        statement.on_conflict_do_update(
            index_elements=[consent_view.c.consent_id],
            set_={
                "revoked_at": func.coalesce(consent_view.c.revoked_at, event.revoked_at),
                "revoke_reason": func.coalesce(consent_view.c.revoke_reason, event.reason),
            },
        )
    )


def consent_handlers() -> Mapping[type[IntegrationEvent], EventHandler]:
    """The handlers that keep `consent_view`, for `service.subscribe(CONSENT_EVENTS, ...)`."""
    return {ConsentGranted: record_consent_granted, ConsentRevoked: record_consent_revoked}


async def find_consent(conn: AsyncConnection, consent_id: UUID) -> ConsentRecord | None:
    """One consent by id (e.g. the consent a disclosure cited), or None if it was never
    granted as far as this service has seen."""
    row = (
        await conn.execute(
            select(consent_view).where(
                consent_view.c.consent_id == consent_id, consent_view.c.granted_at.is_not(None)
            )
        )
    ).first()
    return None if row is None else ConsentRecord.from_row(row)


async def find_valid_consent(
    conn: AsyncConnection,
    subject_id: UUID,
    purpose: str,
    recipient_id: UUID | None,
    categories: Collection[str],
    at: datetime,
) -> ConsentRecord | None:
    """A consent of `subject_id` for `purpose` and `recipient_id` (None: a consent that names no
    recipient) that covers every one of `categories` and was valid at `at`, or None.

    Valid means `granted_at <= at` and not revoked by then (`revoked_at` null or after `at`),
    as `ConsentRecord.valid_at` says.
    When several qualify, the most recently granted one is returned. Raises `ValueError` for
    no categories: a disclosure always says what it discloses."""
    if not categories:
        raise ValueError("name at least one data category")
    recipient = (
        consent_view.c.recipient_id.is_(None)
        if recipient_id is None
        else consent_view.c.recipient_id == recipient_id
    )
    row = (
        await conn.execute(
            select(consent_view)
            .where(
                consent_view.c.subject_id == subject_id,
                consent_view.c.purpose == purpose,
                recipient,
                consent_view.c.data_categories.contains(sorted(set(categories))),
                valid_at_clause(consent_view, at),
            )
            .order_by(consent_view.c.granted_at.desc())
            .limit(1)
        )
    ).first()
    return None if row is None else ConsentRecord.from_row(row)
