"""The retention service's tables, repositories and projections, and every SQL statement of it.

- Erasure cases are streams of the toolkit's event store; `erasure_cases` is their projection
  (status, for the scheduler's and the status's queries), written in the append's transaction.
- `subject_clocks`: per person, the latest time of each fact that starts a retention clock,
  learnt from identity, messaging and billing; `payment_methods` tells when the last card went.
- `expiries`: the schedule, one row per (person, category): due, then emitted (with its
  attempts and the time of the next), then answered by the owner. The scheduler claims due
  rows with `FOR UPDATE SKIP LOCKED`, so replicas never emit the same row twice.
- `legal_holds`: placed and released by compliance (reference data with its history in the
  columns; `LegalHoldPlaced`/`LegalHoldReleased` tell the suite).
- `certificates` and `certificate_signing_keys`: the signed erasure certificates and the keys.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from confide_events.vocabulary import DataCategory
from confide_toolkit.clock import Clock
from confide_toolkit.database import NAMING_CONVENTION
from confide_toolkit.event_store import EventStore, RecordedEvent
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
    and_,
    exists,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from confide_retention.domain import (
    CASE_EVENTS,
    ErasureCase,
    ErasureCaseClosed,
    ErasureCaseOpened,
    ErasureCasePaused,
    ErasureCaseResumed,
    LegalHold,
)
from confide_retention.policies import ClockTrigger

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

_SUBJECT_LOCK: Final = "confide.retention.subject"


def _advisory_lock(key: str) -> Any:
    return select(func.pg_advisory_xact_lock(func.hashtextextended(key, 0)))


# --- erasure cases ---------------------------------------------------------------------------


class ErasureCases:
    """Loads and saves erasure cases through the event store (projection included)."""

    def __init__(self, clock: Clock) -> None:
        self.events = EventStore(CASE_EVENTS, clock, projections=[project_case])

    async def load(
        self, conn: AsyncConnection, case_id: uuid.UUID, *, for_change: bool = False
    ) -> ErasureCase | None:
        recorded = await self.events.load(conn, case_id, for_change=for_change)
        if not recorded:
            return None
        return ErasureCase.replay(case_id, (r.event for r in recorded), len(recorded))

    async def load_for_change(
        self, conn: AsyncConnection, case_id: uuid.UUID
    ) -> ErasureCase | None:
        """The case, locked until the transaction ends: the scheduler and the consumers of
        answers queue up on one case instead of racing."""
        return await self.load(conn, case_id, for_change=True)

    async def save(self, conn: AsyncConnection, case: ErasureCase) -> list[RecordedEvent]:
        """Append the case's pending events; raises `ConcurrencyConflict` if it moved on."""
        recorded = await self.events.append(conn, case.case_id, case.version, case.pending)
        case.version += len(recorded)
        case.pending.clear()
        return recorded


async def project_case(conn: AsyncConnection, record: RecordedEvent) -> None:
    """Keep `erasure_cases` in step with one case event (in the transaction of the append)."""
    event = record.event
    if isinstance(event, ErasureCaseOpened):
        await conn.execute(
            insert(erasure_cases).values(
                case_id=event.case_id,
                subject_id=event.subject_id,
                origin=event.origin,
                status="open",
                requested_at=event.requested_at,
            )
        )
    elif isinstance(event, ErasureCasePaused | ErasureCaseResumed):
        status = "paused" if isinstance(event, ErasureCasePaused) else "open"
        await conn.execute(
            update(erasure_cases)
            .where(erasure_cases.c.case_id == record.stream_id)
            .values(status=status)
        )
    elif isinstance(event, ErasureCaseClosed):
        await conn.execute(
            update(erasure_cases)
            .where(erasure_cases.c.case_id == record.stream_id)
            .values(
                status="completed",
                completed_at=event.completed_at,
                certificate_id=event.certificate_id,
            )
        )


async def lock_subject(conn: AsyncConnection, subject_id: uuid.UUID) -> None:
    """Serialise the commands on one person (opening a case, placing a hold)."""
    await conn.execute(_advisory_lock(f"{_SUBJECT_LOCK}:{subject_id}"))


async def open_case_of(conn: AsyncConnection, subject_id: uuid.UUID) -> uuid.UUID | None:
    """The person's erasure case not yet completed, if any."""
    found: uuid.UUID | None = await conn.scalar(
        select(erasure_cases.c.case_id).where(
            erasure_cases.c.subject_id == subject_id, erasure_cases.c.status != "completed"
        )
    )
    return found


# --- clocks ----------------------------------------------------------------------------------


async def record_clock(
    conn: AsyncConnection, subject_id: uuid.UUID, trigger: ClockTrigger, happened_at: datetime
) -> None:
    """Keep the latest time of `trigger` for the person (an older fact changes nothing)."""
    statement = pg_insert(subject_clocks).values(
        subject_id=subject_id, trigger=trigger, happened_at=happened_at
    )
    await conn.execute(
        statement.on_conflict_do_update(
            index_elements=[subject_clocks.c.subject_id, subject_clocks.c.trigger],
            set_={"happened_at": func.greatest(subject_clocks.c.happened_at, happened_at)},
        )
    )


async def clocks_of(conn: AsyncConnection, subject_id: uuid.UUID) -> dict[ClockTrigger, datetime]:
    rows = await conn.execute(
        select(subject_clocks.c.trigger, subject_clocks.c.happened_at).where(
            subject_clocks.c.subject_id == subject_id
        )
    )
    return {row.trigger: row.happened_at for row in rows}


async def add_payment_method(
    conn: AsyncConnection, payment_method_id: uuid.UUID, subject_id: uuid.UUID
) -> None:
    await conn.execute(
        pg_insert(payment_methods)
        .values(payment_method_id=payment_method_id, subject_id=subject_id)
        .on_conflict_do_nothing()
    )


async def remove_payment_method(
    conn: AsyncConnection, payment_method_id: uuid.UUID, subject_id: uuid.UUID, at: datetime
) -> bool:
    """Mark the method removed; True when the person has no payment method left."""
    await conn.execute(
        pg_insert(payment_methods)
        .values(payment_method_id=payment_method_id, subject_id=subject_id, removed_at=at)
        .on_conflict_do_update(
            index_elements=[payment_methods.c.payment_method_id], set_={"removed_at": at}
        )
    )
    live = await conn.scalar(
        select(func.count())
        .select_from(payment_methods)
        .where(payment_methods.c.subject_id == subject_id, payment_methods.c.removed_at.is_(None))
    )
    return live == 0


# --- the schedule ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Expiry:
    subject_id: uuid.UUID
    category: DataCategory
    policy: str
    due_at: datetime
    erasure_case_id: uuid.UUID | None
    emitted_at: datetime | None
    attempts: int
    answered_at: datetime | None


def _expiry(row: Any) -> Expiry:
    return Expiry(
        row.subject_id,
        row.category,
        row.policy,
        row.due_at,
        row.erasure_case_id,
        row.emitted_at,
        row.attempts,
        row.answered_at,
    )


async def expiry_for_change(
    conn: AsyncConnection, subject_id: uuid.UUID, category: DataCategory
) -> Expiry | None:
    row = (
        await conn.execute(
            select(expiries)
            .where(expiries.c.subject_id == subject_id, expiries.c.category == category)
            .with_for_update()
        )
    ).first()
    return None if row is None else _expiry(row)


async def schedule(
    conn: AsyncConnection,
    subject_id: uuid.UUID,
    category: DataCategory,
    policy: str,
    due_at: datetime,
    erasure_case_id: uuid.UUID | None,
) -> None:
    """(Re)schedule the person's category: due at `due_at`, not yet emitted."""
    values = {
        "policy": policy,
        "due_at": due_at,
        "erasure_case_id": erasure_case_id,
        "emitted_at": None,
        "attempts": 0,
        "next_attempt_at": None,
        "answered_at": None,
        "outcome": None,
        "key_id": None,
        "answered_by": None,
    }
    statement = pg_insert(expiries).values(subject_id=subject_id, category=category, **values)
    await conn.execute(
        statement.on_conflict_do_update(
            index_elements=[expiries.c.subject_id, expiries.c.category], set_=values
        )
    )


async def move_due(
    conn: AsyncConnection,
    subject_id: uuid.UUID,
    category: DataCategory,
    policy: str,
    due_at: datetime,
) -> None:
    """A later fact moved the clock of a row not yet emitted."""
    await conn.execute(
        update(expiries)
        .where(expiries.c.subject_id == subject_id, expiries.c.category == category)
        .values(policy=policy, due_at=due_at)
    )


_HOLD_STANDS = exists().where(
    legal_holds.c.subject_id == expiries.c.subject_id, legal_holds.c.released_at.is_(None)
)
_CASE_PAUSED = exists().where(
    erasure_cases.c.case_id == expiries.c.erasure_case_id, erasure_cases.c.status == "paused"
)


async def claim_due(conn: AsyncConnection, now: datetime, limit: int) -> list[Expiry]:
    """Lock up to `limit` rows to emit now: due and never emitted, or emitted, unanswered and
    past their retry time; none of a person under a legal hold, none of a paused case. Rows
    another replica holds are skipped (`SKIP LOCKED`), so no row is emitted twice."""
    rows = await conn.execute(
        select(expiries)
        .where(
            expiries.c.answered_at.is_(None),
            or_(
                and_(expiries.c.emitted_at.is_(None), expiries.c.due_at <= now),
                and_(expiries.c.emitted_at.is_not(None), expiries.c.next_attempt_at <= now),
            ),
            ~_HOLD_STANDS,
            ~_CASE_PAUSED,
        )
        .order_by(expiries.c.due_at)
        .limit(limit)
        .with_for_update(of=expiries, skip_locked=True)
    )
    return [_expiry(row) for row in rows]


async def mark_emitted(
    conn: AsyncConnection, expiry: Expiry, now: datetime, next_attempt_at: datetime
) -> None:
    await conn.execute(
        update(expiries)
        .where(expiries.c.subject_id == expiry.subject_id, expiries.c.category == expiry.category)
        .values(
            emitted_at=func.coalesce(expiries.c.emitted_at, now),
            attempts=expiries.c.attempts + 1,
            next_attempt_at=next_attempt_at,
        )
    )


async def mark_answered(
    conn: AsyncConnection,
    expiry: Expiry,
    outcome: str,
    key_id: uuid.UUID | None,
    answered_by: str,
    answered_at: datetime,
) -> None:
    await conn.execute(
        update(expiries)
        .where(expiries.c.subject_id == expiry.subject_id, expiries.c.category == expiry.category)
        .values(
            answered_at=answered_at,
            outcome=outcome,
            key_id=key_id,
            answered_by=answered_by,
            next_attempt_at=None,
        )
    )


async def expiries_of(conn: AsyncConnection, subject_id: uuid.UUID) -> list[Expiry]:
    rows = await conn.execute(
        select(expiries).where(expiries.c.subject_id == subject_id).order_by(expiries.c.category)
    )
    return [_expiry(row) for row in rows]


async def lock_expiries_of(conn: AsyncConnection, subject_id: uuid.UUID) -> None:
    """Wait for any emission of the person's rows in flight: a hold placed after it knows that
    it went out, and none goes out after the hold commits."""
    await conn.execute(
        select(expiries.c.category).where(expiries.c.subject_id == subject_id).with_for_update()
    )


# --- legal holds -----------------------------------------------------------------------------


def _hold(row: Any) -> LegalHold:
    return LegalHold(
        row.hold_id,
        row.subject_id,
        row.reason,
        row.placed_by,
        row.placed_at,
        row.released_by,
        row.released_at,
    )


async def add_hold(conn: AsyncConnection, hold: LegalHold) -> None:
    await conn.execute(
        insert(legal_holds).values(
            hold_id=hold.hold_id,
            subject_id=hold.subject_id,
            reason=hold.reason,
            placed_by=hold.placed_by,
            placed_at=hold.placed_at,
        )
    )


async def hold_for_change(conn: AsyncConnection, hold_id: uuid.UUID) -> LegalHold | None:
    row = (
        await conn.execute(
            select(legal_holds).where(legal_holds.c.hold_id == hold_id).with_for_update()
        )
    ).first()
    return None if row is None else _hold(row)


async def release_hold(
    conn: AsyncConnection, hold_id: uuid.UUID, by: uuid.UUID, at: datetime
) -> None:
    await conn.execute(
        update(legal_holds)
        .where(legal_holds.c.hold_id == hold_id)
        .values(released_by=by, released_at=at)
    )


async def standing_holds(conn: AsyncConnection, subject_id: uuid.UUID) -> list[LegalHold]:
    rows = await conn.execute(
        select(legal_holds)
        .where(legal_holds.c.subject_id == subject_id, legal_holds.c.released_at.is_(None))
        .order_by(legal_holds.c.placed_at)
    )
    return [_hold(row) for row in rows]


# --- certificates ----------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredCertificate:
    certificate_id: uuid.UUID
    erasure_case_id: uuid.UUID
    subject_id: uuid.UUID
    kid: str
    jws: str
    issued_at: datetime


async def add_certificate(conn: AsyncConnection, certificate: StoredCertificate) -> None:
    await conn.execute(
        insert(certificates).values(
            certificate_id=certificate.certificate_id,
            erasure_case_id=certificate.erasure_case_id,
            subject_id=certificate.subject_id,
            kid=certificate.kid,
            jws=certificate.jws,
            issued_at=certificate.issued_at,
        )
    )


async def certificate(conn: AsyncConnection, certificate_id: uuid.UUID) -> StoredCertificate | None:
    row = (
        await conn.execute(
            select(certificates).where(certificates.c.certificate_id == certificate_id)
        )
    ).first()
    if row is None:
        return None
    return StoredCertificate(
        row.certificate_id, row.erasure_case_id, row.subject_id, row.kid, row.jws, row.issued_at
    )
