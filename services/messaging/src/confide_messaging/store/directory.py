"""`people`, the read model of `identity.events`: who is a client, a therapist or compliance, and
who closed their account."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import (
    func,
    select,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from confide_messaging.store.tables import (
    people,
)


@dataclass(frozen=True)
class Person:
    subject_id: uuid.UUID
    role: str | None
    closed_at: datetime | None

    def is_open(self, role: str) -> bool:
        """Whether this is an open account of `role`."""
        return self.role == role and self.closed_at is None


async def find_person(conn: AsyncConnection, subject_id: uuid.UUID) -> Person | None:
    row = (await conn.execute(select(people).where(people.c.subject_id == subject_id))).first()
    return None if row is None else Person(row.subject_id, row.role, row.closed_at)


async def record_registered(
    conn: AsyncConnection, subject_id: uuid.UUID, role: str, registered_at: datetime
) -> None:
    """Add a registered person (idempotent; keeps a closure already recorded)."""
    statement = pg_insert(people).values(
        subject_id=subject_id, role=role, registered_at=registered_at
    )
    await conn.execute(
        statement.on_conflict_do_update(
            index_elements=[people.c.subject_id],
            set_={
                "role": statement.excluded.role,
                "registered_at": statement.excluded.registered_at,
            },
        )
    )


async def record_closed(conn: AsyncConnection, subject_id: uuid.UUID, closed_at: datetime) -> None:
    """Mark a person's account closed (idempotent; the first closure stands)."""
    statement = pg_insert(people).values(subject_id=subject_id, closed_at=closed_at)
    await conn.execute(
        statement.on_conflict_do_update(
            index_elements=[people.c.subject_id],
            set_={"closed_at": func.coalesce(people.c.closed_at, closed_at)},
        )
    )
