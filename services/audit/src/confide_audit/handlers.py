"""The audit service's reads and its one consumed stream, one function each.

Every answer to a compliance officer is itself recorded in the trail, in the transaction of
the read (the queries chain, generation 0): if it cannot be recorded, nothing is answered.
Answers come from the trail alone (the generation that answers), so a replay that rebuilds the
trail gives the same answers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from uuid import UUID

from confide_toolkit.auth import Caller
from confide_toolkit.clock import Clock
from confide_toolkit.inbox import ConsumedRecord
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from confide_audit import store
from confide_audit.domain import (
    CONSENT_GRANTED,
    CONSENT_REVOKED,
    ERASURE_COMPLETED,
    ERASURE_REQUESTED,
    QUERIES_GENERATION,
    RECORD_ACCESSED,
    RECORDS_DISCLOSED,
    RETENTION_EXPIRED,
    SHREDDED_SUFFIX,
    BrokenLink,
    ChainWalk,
    DisclosureCheck,
    ErasureCase,
    SubjectNotFound,
    TrailEvent,
    check_disclosure,
    consent_histories,
    erasure_cases,
)

ERASURE_TYPES = (ERASURE_REQUESTED, RETENTION_EXPIRED, ERASURE_COMPLETED)


@dataclass(frozen=True)
class Dependencies:
    """What the handlers need, built once in app.py."""

    engine: AsyncEngine
    clock: Clock
    acknowledgement_timeout: timedelta


# --- the consumed stream -------------------------------------------------------------------


async def keep_records(conn: AsyncConnection, records: Sequence[ConsumedRecord]) -> None:
    """Append every new record of the event topics to the current generation of the trail."""
    await store.append_records(conn, records)


# --- recording the queries -------------------------------------------------------------------


async def _record_query(
    deps: Dependencies, conn: AsyncConnection, caller: Caller, query: str, **params: Any
) -> None:
    await store.append_query(
        conn,
        {
            "query": query,
            "caller": str(caller.subject_id),
            "role": caller.role,
            "at": deps.clock.now().isoformat(),
            "params": {name: str(value) for name, value in params.items() if value is not None},
        },
    )


# --- answers ---------------------------------------------------------------------------------


async def subject_timeline(
    deps: Dependencies, caller: Caller, subject_id: UUID, *, after: int | None, limit: int
) -> list[TrailEvent]:
    """A person's events from the whole history, in the order they happened."""
    async with deps.engine.begin() as conn:
        await _record_query(deps, conn, caller, "timeline", subject_id=subject_id, after=after)
        generation = await store.current_generation(conn)
        found = await store.timeline(conn, generation, subject_id, after=after, limit=limit)
    if not found and after is None:
        raise SubjectNotFound(subject_id)
    return found


async def _checked(
    conn: AsyncConnection, generation: int, disclosures: Sequence[TrailEvent]
) -> list[DisclosureCheck]:
    subjects = sorted({d.subject_id for d in disclosures if d.subject_id is not None})
    consents = consent_histories(
        await store.events_of_types(
            conn, generation, (CONSENT_GRANTED, CONSENT_REVOKED), subject_ids=subjects
        )
    )
    return [check_disclosure(disclosure, consents) for disclosure in disclosures]


async def disclosures(
    deps: Dependencies,
    caller: Caller,
    *,
    subject_id: UUID | None,
    flagged_only: bool,
    after: int | None,
    limit: int,
) -> list[DisclosureCheck]:
    """Disclosures in trail order, each with the consent it relied on and whether it was valid
    at that moment; with `flagged_only`, only those whose consent was not."""
    async with deps.engine.begin() as conn:
        await _record_query(
            deps,
            conn,
            caller,
            "disclosures",
            subject_id=subject_id,
            flagged=flagged_only or None,
            after=after,
        )
        generation = await store.current_generation(conn)
        found: list[DisclosureCheck] = []
        while len(found) < limit:
            batch = await store.events_of_types(
                conn,
                generation,
                (RECORDS_DISCLOSED,),
                subject_ids=[subject_id] if subject_id else None,
                after=after,
                limit=max(limit, 200),
            )
            if not batch:
                break
            checks = await _checked(conn, generation, batch)
            found.extend(c for c in checks if c.flagged or not flagged_only)
            after = batch[-1].seq
        return found[:limit]


async def record_accesses(
    deps: Dependencies, caller: Caller, *, subject_id: UUID | None, after: int | None, limit: int
) -> list[TrailEvent]:
    """Every read of a person's records (`RecordAccessed`), in trail order."""
    async with deps.engine.begin() as conn:
        await _record_query(
            deps, conn, caller, "record-accesses", subject_id=subject_id, after=after
        )
        generation = await store.current_generation(conn)
        return await store.events_of_types(
            conn,
            generation,
            (RECORD_ACCESSED,),
            subject_ids=[subject_id] if subject_id else None,
            after=after,
            limit=limit,
        )


async def erasures(
    deps: Dependencies, caller: Caller, *, subject_id: UUID | None, open_only: bool
) -> list[ErasureCase]:
    """Every erasure case: each owner's answer to each expiry, the certificate once complete,
    and the expiries left unanswered past the acknowledgement timeout."""
    async with deps.engine.begin() as conn:
        await _record_query(
            deps, conn, caller, "erasures", subject_id=subject_id, open=open_only or None
        )
        cases = await _erasure_cases(deps, conn, subject_id)
    return [case for case in cases if case.open or not open_only]


async def _erasure_cases(
    deps: Dependencies, conn: AsyncConnection, subject_id: UUID | None
) -> list[ErasureCase]:
    generation = await store.current_generation(conn)
    events = await store.events_of_types(
        conn,
        generation,
        ERASURE_TYPES,
        subject_ids=[subject_id] if subject_id else None,
        type_suffix=SHREDDED_SUFFIX,
    )
    return erasure_cases(events, deps.clock.now(), deps.acknowledgement_timeout)


@dataclass(frozen=True)
class SubjectHistory:
    """Everything the trail says about one person, for their report."""

    subject_id: UUID
    timeline: list[TrailEvent]
    disclosures: list[DisclosureCheck]
    accesses: list[TrailEvent]
    erasures: list[ErasureCase]


def _history_order(event: TrailEvent) -> tuple[Any, ...]:
    # The same order whichever generation answers: trail numbers differ between generations.
    return (event.occurred_at, event.topic, event.partition, event.offset)


async def subject_history(deps: Dependencies, caller: Caller, subject_id: UUID) -> SubjectHistory:
    """A person's whole history, for their report."""
    async with deps.engine.begin() as conn:
        await _record_query(deps, conn, caller, "report", subject_id=subject_id)
        generation = await store.current_generation(conn)
        events: list[TrailEvent] = []
        after: int | None = None
        while True:
            page = await store.timeline(conn, generation, subject_id, after=after, limit=5000)
            events.extend(page)
            if len(page) < 5000:
                break
            after = page[-1].seq
        if not events:
            raise SubjectNotFound(subject_id)
        events.sort(key=_history_order)
        disclosed = [e for e in events if e.event_type == RECORDS_DISCLOSED]
        checks = await _checked(conn, generation, disclosed)
        cases = await _erasure_cases(deps, conn, subject_id)
    return SubjectHistory(
        subject_id=subject_id,
        timeline=events,
        disclosures=checks,
        accesses=[e for e in events if e.event_type == RECORD_ACCESSED],
        erasures=cases,
    )


# --- the chain -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChainReport:
    generation: int
    state: str
    entries: int
    broken: BrokenLink | None


async def verify_chains(
    engine: AsyncEngine, *, every_generation: bool = False
) -> list[ChainReport]:
    """Walk the queries chain and the current generation (or every one) from the start,
    recomputing each link; each chain's first broken link, if any."""
    async with engine.connect() as conn:
        current = await store.current_generation(conn)
        chains = [
            chain
            for chain in await store.chains(conn)
            if every_generation or chain.generation in (QUERIES_GENERATION, current)
        ]
        reports = []
        for chain in chains:
            walk = ChainWalk(chain.generation)
            async for entry in store.stored_entries(conn, chain.generation):
                walk.step(entry)
                if walk.broken is not None:
                    break
            walk.finish(chain.last_seq, chain.link)
            reports.append(ChainReport(chain.generation, chain.state, walk.entries, walk.broken))
    return reports


async def chain_status(deps: Dependencies, caller: Caller) -> list[ChainReport]:
    """The chains' verification, asked by a compliance officer (recorded as a query)."""
    async with deps.engine.begin() as conn:
        await _record_query(deps, conn, caller, "chain-status")
    return await verify_chains(deps.engine)


async def find_subjects(deps: Dependencies, caller: Caller, prefix: str) -> list[UUID]:
    """People of the trail whose id starts with `prefix` (the console's search)."""
    async with deps.engine.begin() as conn:
        await _record_query(deps, conn, caller, "find-subject", prefix=prefix)
        generation = await store.current_generation(conn)
        return await store.subjects_like(conn, generation, prefix)
