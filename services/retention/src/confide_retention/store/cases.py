"""Erasure cases: their repository over the event store, their projection, and the lock that
serialises the commands on one person."""

from __future__ import annotations

import uuid
from typing import Final

from confide_toolkit.clock import Clock
from confide_toolkit.event_store import EventStore, RecordedEvent
from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from confide_retention.domain import (
    CASE_EVENTS,
    ErasureCase,
    ErasureCaseClosed,
    ErasureCaseOpened,
    ErasureCasePaused,
    ErasureCaseResumed,
)
from confide_retention.store.tables import (
    erasure_cases,
)

_SUBJECT_LOCK: Final = "confide.retention.subject"


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


# Built once, as every service's projection: a statement built per event cost more CPU than
# running it. The SET columns are the parameters' names (all but the WHERE's `of_case`).
_OPEN_CASE = insert(erasure_cases)
_UPDATE_CASE = update(erasure_cases).where(erasure_cases.c.case_id == bindparam("of_case"))


async def project_case(conn: AsyncConnection, record: RecordedEvent) -> None:
    """Keep `erasure_cases` in step with one case event (in the transaction of the append)."""
    event = record.event
    this = {"of_case": record.stream_id}
    if isinstance(event, ErasureCaseOpened):
        await conn.execute(
            _OPEN_CASE,
            {
                "case_id": event.case_id,
                "subject_id": event.subject_id,
                "origin": event.origin,
                "status": "open",
                "requested_at": event.requested_at,
            },
        )
    elif isinstance(event, ErasureCasePaused | ErasureCaseResumed):
        status = "paused" if isinstance(event, ErasureCasePaused) else "open"
        await conn.execute(_UPDATE_CASE, {**this, "status": status})
    elif isinstance(event, ErasureCaseClosed):
        await conn.execute(
            _UPDATE_CASE,
            {
                **this,
                "status": "completed",
                "completed_at": event.completed_at,
                "certificate_id": event.certificate_id,
            },
        )


async def lock_subject(conn: AsyncConnection, subject_id: uuid.UUID) -> None:
    """Serialise the commands on one person (opening a case, placing a hold)."""
    key = f"{_SUBJECT_LOCK}:{subject_id}"
    await conn.execute(select(func.pg_advisory_xact_lock(func.hashtextextended(key, 0))))


async def open_case_of(conn: AsyncConnection, subject_id: uuid.UUID) -> uuid.UUID | None:
    """The person's erasure case not yet completed, if any."""
    found: uuid.UUID | None = await conn.scalar(
        select(erasure_cases.c.case_id).where(
            erasure_cases.c.subject_id == subject_id, erasure_cases.c.status != "completed"
        )
    )
    return found
