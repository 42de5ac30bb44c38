"""The retention clocks of each person (the triggers their policies start from), and the payment
methods billing told of."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import (
    func,
    select,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from confide_retention.policies import ClockTrigger
from confide_retention.store.tables import (
    payment_methods,
    subject_clocks,
)

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
