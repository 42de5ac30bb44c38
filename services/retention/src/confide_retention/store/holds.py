"""Legal holds: placed, released, and those standing on a person."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    insert,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from confide_retention.domain import (
    LegalHold,
)
from confide_retention.store.tables import (
    legal_holds,
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
