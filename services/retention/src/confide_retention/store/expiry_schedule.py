"""The schedule: when each person's category of data expires, which expiries are due, emitted and
answered."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from confide_events.vocabulary import DataCategory
from sqlalchemy import (
    and_,
    exists,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from confide_retention.store.tables import (
    erasure_cases,
    expiries,
    legal_holds,
)

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
