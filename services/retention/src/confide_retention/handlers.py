"""The retention service's commands, consumed events and reads, one function each.

Commands run through the toolkit's `run_command` (one transaction, run again on a concurrent
append): they load, let the domain decide, save, and put the integration events in the outbox.
Consumed events run in the consumer's transaction (`ctx.conn`), exactly once in effect.
The scheduler that emits due expiries is `scheduler.Scheduler`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from confide_events import retention as published
from confide_events.retention import ErasureOrigin, LegalHoldReason
from confide_events.shredding import SubjectDataShredded
from confide_events.vocabulary import DATA_CATEGORIES
from confide_toolkit.auth import Caller
from confide_toolkit.clock import Clock
from confide_toolkit.commands import run_command
from confide_toolkit.ids import uuid7
from confide_toolkit.inbox import EventContext
from confide_toolkit.kek import KekSchedule, backups_clear_from
from confide_toolkit.outbox import Outbox
from confide_toolkit.signed_documents import DocumentSigningKeys, sign_document
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from confide_retention import store
from confide_retention.certificates import CERTIFICATE_TYPE, certificate_claims
from confide_retention.domain import (
    CertificateNotFound,
    ErasureAlreadyRequested,
    ErasureCase,
    ErasureCaseNotFound,
    FreshSignInRequired,
    LegalHold,
    LegalHoldAlreadyReleased,
    LegalHoldNotFound,
    PlannedCategory,
    SubjectRequired,
)
from confide_retention.policies import ClockTrigger, PolicySet
from confide_retention.scheduler import Scheduler
from confide_retention.store import ErasureCases, Expiry, StoredCertificate


@dataclass(frozen=True)
class Dependencies:
    """What the handlers are wired with (built once, in app.py)."""

    engine: AsyncEngine
    cases: ErasureCases
    outbox: Outbox
    clock: Clock
    policies: PolicySet
    certificate_keys: DocumentSigningKeys
    fresh_sign_in: timedelta
    """How recent a person's sign-in must be for them to request their own erasure."""
    kek_schedule: KekSchedule
    """When the suite's KEK versions rotate and die (`CONFIDE_KEK_ROTATION_PERIOD`,
    `CONFIDE_KEK_BACKUP_RETENTION`): a certificate's `backups_clear_from` follows from it."""
    scheduler: Scheduler
    """Woken after a command that may have made expiries due (a request, a release, a resume)."""


# --- erasure requests ------------------------------------------------------------------------


async def request_erasure(deps: Dependencies, caller: Caller, subject_id: UUID | None) -> UUID:
    """Open an erasure case: by the person (after a fresh sign-in), or by compliance for the
    person it names. Every category without a legal obligation is scheduled to expire now, the
    others at their legal end. Returns the case id."""
    now = deps.clock.now()
    origin: ErasureOrigin
    if caller.role == "compliance":
        if subject_id is None:
            raise SubjectRequired()
        origin = "compliance_request"
    else:
        if now - caller.auth_time > deps.fresh_sign_in:
            raise FreshSignInRequired(int(deps.fresh_sign_in.total_seconds()))
        subject_id, origin = caller.subject_id, "subject_request"
    person = subject_id

    async def work(conn: AsyncConnection) -> UUID:
        await store.lock_subject(conn, person)
        already = await store.open_case_of(conn, person)
        if already is not None:
            raise ErasureAlreadyRequested(already)
        plan = await _plan(deps, conn, person, now)
        case = ErasureCase.open(uuid7(), person, origin, caller.subject_id, now, plan)
        await deps.cases.save(conn, case)
        for planned in plan:
            await store.schedule(
                conn, person, planned.category, planned.policy, planned.due_at, case.case_id
            )
        await deps.outbox.put(
            conn,
            published.ErasureRequested(
                erasure_case_id=case.case_id,
                subject_id=person,
                origin=origin,
                data_categories=tuple(p.category for p in plan),
                requested_at=now,
            ),
        )
        return case.case_id

    case_id = await run_command(deps.engine, work)
    deps.scheduler.wake()
    return case_id


async def _plan(
    deps: Dependencies, conn: AsyncConnection, subject_id: UUID, now: datetime
) -> list[PlannedCategory]:
    clocks = await store.clocks_of(conn, subject_id)
    schedule = {e.category: e for e in await store.expiries_of(conn, subject_id)}
    plan = []
    for category in DATA_CATEGORIES:
        policy = deps.policies[category]
        due = now
        if policy.legal_obligation is not None:
            known = schedule.get(category)
            current_due = policy.due_at(clocks)
            # Already shredded by its policy, and nothing new since: nothing left to retain.
            gone = (
                known is not None
                and known.answered_at is not None
                and (current_due is None or known.due_at >= current_due)
            )
            if not gone:
                due = max(now, policy.legal_end(clocks, now))
        plan.append(
            PlannedCategory(
                category=category,
                policy=policy.code,
                due_at=due,
                legal_obligation=policy.legal_obligation,
            )
        )
    return plan


@dataclass(frozen=True)
class CaseStatus:
    """An erasure case as its status shows it: the case, and the holds that stop it now."""

    case: ErasureCase
    holds: list[LegalHold]


async def erasure_status(deps: Dependencies, caller: Caller, case_id: UUID) -> CaseStatus:
    """The case with its execution log, for its subject or compliance (404 to anyone else)."""
    async with deps.engine.connect() as conn:
        case = await deps.cases.load(conn, case_id)
        if case is None or not _may_see(caller, case.subject_id):
            raise ErasureCaseNotFound(case_id)
        holds = await store.standing_holds(conn, case.subject_id)
    return CaseStatus(case, holds)


def _may_see(caller: Caller, subject_id: UUID) -> bool:
    return caller.role == "compliance" or caller.subject_id == subject_id


async def pause_erasure(deps: Dependencies, caller: Caller, case_id: UUID) -> CaseStatus:
    """Compliance stops a case: none of its expiries is emitted until it resumes."""
    return await _change_case(deps, caller, case_id, pause=True)


async def resume_erasure(deps: Dependencies, caller: Caller, case_id: UUID) -> CaseStatus:
    """Compliance lets a paused case go on: what fell due meanwhile is emitted."""
    return await _change_case(deps, caller, case_id, pause=False)


async def _change_case(
    deps: Dependencies, caller: Caller, case_id: UUID, *, pause: bool
) -> CaseStatus:
    async def work(conn: AsyncConnection) -> CaseStatus:
        case = await deps.cases.load_for_change(conn, case_id)
        if case is None:
            raise ErasureCaseNotFound(case_id)
        if pause:
            case.pause(caller.subject_id, deps.clock.now())
        else:
            case.resume(caller.subject_id, deps.clock.now())
        await deps.cases.save(conn, case)
        return CaseStatus(case, await store.standing_holds(conn, case.subject_id))

    status = await run_command(deps.engine, work)
    deps.scheduler.wake()
    return status


# --- legal holds -----------------------------------------------------------------------------


async def place_legal_hold(
    deps: Dependencies, caller: Caller, subject_id: UUID, reason: LegalHoldReason
) -> LegalHold:
    """Nothing of the person expires from the commit on, until the hold is released."""
    hold = LegalHold(uuid7(), subject_id, reason, caller.subject_id, deps.clock.now())

    async def work(conn: AsyncConnection) -> LegalHold:
        await store.lock_subject(conn, subject_id)
        await store.lock_expiries_of(conn, subject_id)
        await store.add_hold(conn, hold)
        await deps.outbox.put(
            conn,
            published.LegalHoldPlaced(
                legal_hold_id=hold.hold_id,
                subject_id=subject_id,
                reason=reason,
                placed_by=caller.subject_id,
                placed_at=hold.placed_at,
            ),
        )
        return hold

    return await run_command(deps.engine, work)


async def release_legal_hold(deps: Dependencies, caller: Caller, hold_id: UUID) -> LegalHold:
    """End a hold; once no other hold stands, the person's overdue expiries run."""
    now = deps.clock.now()

    async def work(conn: AsyncConnection) -> LegalHold:
        hold = await store.hold_for_change(conn, hold_id)
        if hold is None:
            raise LegalHoldNotFound(hold_id)
        if hold.released_at is not None:
            raise LegalHoldAlreadyReleased(hold_id)
        await store.release_hold(conn, hold_id, caller.subject_id, now)
        await deps.outbox.put(
            conn,
            published.LegalHoldReleased(
                legal_hold_id=hold_id,
                subject_id=hold.subject_id,
                released_by=caller.subject_id,
                released_at=now,
            ),
        )
        return hold

    released = await run_command(deps.engine, work)
    deps.scheduler.wake()
    return released


# --- certificates and keys -------------------------------------------------------------------


async def certificate(
    deps: Dependencies, caller: Caller, certificate_id: UUID
) -> StoredCertificate:
    async with deps.engine.connect() as conn:
        found = await store.certificate(conn, certificate_id)
    if found is None or not _may_see(caller, found.subject_id):
        raise CertificateNotFound(certificate_id)
    return found


async def signing_keys(deps: Dependencies) -> dict[str, list[dict[str, Any]]]:
    """The JWKS that verifies every certificate retention ever signed (the first key is
    created here if none exists yet, so the document is never empty)."""
    async with deps.engine.begin() as conn:
        await deps.certificate_keys.current(conn)
        return await deps.certificate_keys.jwks(conn)


async def _complete(deps: Dependencies, conn: AsyncConnection, case: ErasureCase) -> None:
    """Issue the settled case's certificate, close it, and publish `ErasureCompleted`, in the
    transaction of the answer that settled it."""
    now = deps.clock.now()
    certificate_id = uuid7()
    # Every shredding of the case happened by now: from this date no backup taken before it
    # can unwrap any of the shredded keys (their KEK version is destroyed by then).
    clear_from = backups_clear_from(now, deps.kek_schedule)
    key = await deps.certificate_keys.current(conn)
    claims = certificate_claims(case, certificate_id, now, clear_from)
    jws = sign_document(claims, key, CERTIFICATE_TYPE)
    await store.add_certificate(
        conn, StoredCertificate(certificate_id, case.case_id, case.subject_id, key.kid, jws, now)
    )
    case.close(certificate_id, clear_from, now)
    await deps.cases.save(conn, case)
    await deps.outbox.put(
        conn,
        published.ErasureCompleted(
            erasure_case_id=case.case_id,
            subject_id=case.subject_id,
            certificate_id=certificate_id,
            outcomes=tuple(case.outcomes()),
            backups_clear_from=clear_from,
            completed_at=now,
        ),
    )


# --- consumed events -------------------------------------------------------------------------


async def start_clock(
    deps: Dependencies, ctx: EventContext, subject_id: UUID, trigger: ClockTrigger, at: datetime
) -> None:
    """A fact that starts (or restarts) retention clocks happened: reschedule every category
    whose policy names it."""
    conn = ctx.conn
    await store.record_clock(conn, subject_id, trigger, at)
    policies = deps.policies.starting_on(trigger)
    if not policies:
        return
    clocks = await store.clocks_of(conn, subject_id)
    for policy in policies:
        due = policy.due_at(clocks)
        if due is None:
            continue
        known = await store.expiry_for_change(conn, subject_id, policy.category)
        if known is None:
            await store.schedule(conn, subject_id, policy.category, policy.code, due, None)
        elif known.answered_at is not None:
            # Data written after its expiry has a clock of its own.
            if due > known.due_at:
                await store.schedule(conn, subject_id, policy.category, policy.code, due, None)
        elif known.emitted_at is None and known.erasure_case_id is None:
            await store.move_due(conn, subject_id, policy.category, policy.code, due)
        # Otherwise an expiry is under way (or an erasure case decides): it stands.


async def note_payment_method_added(
    deps: Dependencies, ctx: EventContext, payment_method_id: UUID, subject_id: UUID
) -> None:
    await store.add_payment_method(ctx.conn, payment_method_id, subject_id)


async def note_payment_method_removed(
    deps: Dependencies,
    ctx: EventContext,
    payment_method_id: UUID,
    subject_id: UUID,
    removed_at: datetime,
) -> None:
    """A card removed: the clock of the person's card data starts when none is left."""
    if await store.remove_payment_method(ctx.conn, payment_method_id, subject_id, removed_at):
        await start_clock(deps, ctx, subject_id, "card_removed", removed_at)


async def record_owner_answer(
    deps: Dependencies, event: SubjectDataShredded, ctx: EventContext
) -> None:
    """An owner answered an expiry: settle the schedule's row and, for an erasure case, the
    case's category, completing the case once every category is settled. An answer to an
    expiry that is not the one in flight (a late copy, another deployment's second answer) has
    no effect."""
    conn = ctx.conn
    expiry = await store.expiry_for_change(conn, event.subject_id, event.category)
    if not _answers(expiry, event):
        return
    assert expiry is not None
    await store.mark_answered(
        conn, expiry, event.outcome, event.key_id, event.producer, event.answered_at
    )
    if expiry.erasure_case_id is None:
        return
    case = await deps.cases.load_for_change(conn, expiry.erasure_case_id)
    if case is None:
        return
    if not case.record_answer(
        event.category, event.outcome, event.key_id, event.producer, event.answered_at
    ):
        return
    if case.status != "completed" and case.settled:
        await _complete(deps, conn, case)
    else:
        await deps.cases.save(conn, case)


def _answers(expiry: Expiry | None, event: SubjectDataShredded) -> bool:
    return (
        expiry is not None
        and expiry.emitted_at is not None
        and expiry.answered_at is None
        and expiry.erasure_case_id == event.erasure_case_id
    )
