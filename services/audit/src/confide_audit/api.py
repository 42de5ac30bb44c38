"""The audit service's HTTP API (/v1): answers for compliance officers only. Every other caller
gets 403 on every route, and every answer is recorded in the trail (`handlers`)."""

from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from confide_toolkit.auth import Caller, CallerDependency, require_role
from confide_toolkit.pagination import Page, PageSize, SequenceCursor, page_of
from fastapi import APIRouter, Depends, Query, Response
from pydantic import BaseModel

from confide_audit import handlers, report
from confide_audit.domain import (
    ConsentHistory,
    DisclosureCheck,
    ErasureCase,
    TrailEvent,
)
from confide_audit.handlers import Dependencies

SubjectFilter = Annotated[UUID | None, Query(description="Only this person's.")]


class TrailEventOut(BaseModel):
    seq: int
    event_id: str | None
    event_type: str | None
    occurred_at: datetime | None
    topic: str
    partition: int
    offset: int
    data: dict[str, Any]


class ConsentOut(BaseModel):
    consent_id: UUID
    purpose: str | None
    recipient_id: UUID | None
    data_categories: list[str]
    granted_at: datetime | None
    revoked_at: datetime | None


class DisclosureOut(BaseModel):
    seq: int
    disclosure_id: UUID
    subject_id: UUID
    recipient_id: UUID
    data_categories: list[str]
    disclosed_at: datetime
    consent_id: UUID | None
    legal_basis: str | None
    consent: ConsentOut | None
    consent_valid: bool
    flagged: bool
    reason: str


class AccessOut(BaseModel):
    seq: int
    subject_id: UUID
    accessor_id: UUID
    accessor_role: str
    category: str
    record_id: UUID
    accessed_at: datetime


class ExpiryOut(BaseModel):
    category: str
    owner: str
    expired_at: datetime | None
    answer: str | None
    answered_at: datetime | None
    overdue: bool


class ErasureCaseOut(BaseModel):
    erasure_case_id: UUID
    subject_id: UUID
    origin: str | None
    requested_at: datetime | None
    data_categories: list[str]
    expiries: list[ExpiryOut]
    every_owner_confirmed: bool
    unacknowledged: list[ExpiryOut]
    certificate_id: UUID | None
    completed_at: datetime | None
    outcomes: list[dict[str, Any]]
    open: bool


class ErasuresOut(BaseModel):
    items: list[ErasureCaseOut]


class ChainOut(BaseModel):
    generation: int
    state: str
    entries: int
    intact: bool
    first_broken: str | None


class ChainsOut(BaseModel):
    intact: bool
    chains: list[ChainOut]


def event_out(event: TrailEvent) -> TrailEventOut:
    return TrailEventOut(
        seq=event.seq,
        event_id=event.event_id,
        event_type=event.event_type,
        occurred_at=event.occurred_at,
        topic=event.topic,
        partition=event.partition,
        offset=event.offset,
        data=event.data,
    )


def _consent_out(consent: ConsentHistory | None) -> ConsentOut | None:
    if consent is None:
        return None
    return ConsentOut(
        consent_id=consent.consent_id,
        purpose=consent.purpose,
        recipient_id=consent.recipient_id,
        data_categories=list(consent.data_categories),
        granted_at=consent.granted_at,
        revoked_at=consent.revoked_at,
    )


def disclosure_out(check: DisclosureCheck) -> DisclosureOut:
    data = check.disclosure.data
    return DisclosureOut(
        seq=check.disclosure.seq,
        disclosure_id=data["disclosure_id"],
        subject_id=data["subject_id"],
        recipient_id=data["recipient_id"],
        data_categories=list(data["data_categories"]),
        disclosed_at=data["disclosed_at"],
        consent_id=data.get("consent_id"),
        legal_basis=data.get("legal_basis"),
        consent=_consent_out(check.consent),
        consent_valid=check.valid,
        flagged=check.flagged,
        reason=check.reason,
    )


def access_out(event: TrailEvent) -> AccessOut:
    return AccessOut(seq=event.seq, **event.data)


def erasure_out(case: ErasureCase) -> ErasureCaseOut:
    expiries = [ExpiryOut(**vars(expiry)) for expiry in case.expiries]
    return ErasureCaseOut(
        erasure_case_id=case.erasure_case_id,
        subject_id=case.subject_id,
        origin=case.origin,
        requested_at=case.requested_at,
        data_categories=list(case.data_categories),
        expiries=expiries,
        every_owner_confirmed=bool(case.expiries) and all(e.answer for e in case.expiries),
        unacknowledged=[e for e in expiries if e.overdue],
        certificate_id=case.certificate_id,
        completed_at=case.completed_at,
        outcomes=case.outcomes,
        open=case.open,
    )


def chains_out(reports: list[handlers.ChainReport]) -> ChainsOut:
    chains = [
        ChainOut(
            generation=r.generation,
            state=r.state,
            entries=r.entries,
            intact=r.broken is None,
            first_broken=r.broken.describe() if r.broken else None,
        )
        for r in reports
    ]
    return ChainsOut(intact=all(c.intact for c in chains), chains=chains)


def router(deps: Dependencies, current_caller: CallerDependency) -> APIRouter:
    """The /v1 routes of the audit service, all for the compliance role."""
    api = APIRouter(
        prefix="/v1",
        tags=["audit"],
        responses={403: {"description": "The caller is not a compliance officer"}},
    )
    compliance = Annotated[Caller, Depends(require_role("compliance", caller=current_caller))]

    @api.get(
        "/subjects/{subject_id}/timeline",
        summary="Every event about a person, in the order it happened, from the whole history",
        responses={404: {"description": "The trail holds nothing about this person"}},
    )
    async def get_timeline(
        subject_id: UUID, caller: compliance, limit: PageSize = 50, cursor: SequenceCursor = None
    ) -> Page[TrailEventOut]:
        found = await handlers.subject_timeline(
            deps, caller, subject_id, after=cursor, limit=limit + 1
        )
        items, next_cursor = page_of(found, limit, lambda e: e.seq)
        return Page[TrailEventOut](items=[event_out(e) for e in items], next_cursor=next_cursor)

    @api.get(
        "/disclosures",
        summary="Every disclosure with the consent it relied on and whether it was valid then",
    )
    async def get_disclosures(
        caller: compliance,
        subject_id: SubjectFilter = None,
        flagged: Annotated[
            bool, Query(description="Only disclosures whose consent was not valid.")
        ] = False,
        limit: PageSize = 50,
        cursor: SequenceCursor = None,
    ) -> Page[DisclosureOut]:
        found = await handlers.disclosures(
            deps,
            caller,
            subject_id=subject_id,
            flagged_only=flagged,
            after=cursor,
            limit=limit + 1,
        )
        items, next_cursor = page_of(found, limit, lambda c: c.disclosure.seq)
        return Page[DisclosureOut](
            items=[disclosure_out(c) for c in items], next_cursor=next_cursor
        )

    @api.get("/record-accesses", summary="Every read of a person's records (RecordAccessed)")
    async def get_record_accesses(
        caller: compliance,
        subject_id: SubjectFilter = None,
        limit: PageSize = 50,
        cursor: SequenceCursor = None,
    ) -> Page[AccessOut]:
        found = await handlers.record_accesses(
            deps, caller, subject_id=subject_id, after=cursor, limit=limit + 1
        )
        items, next_cursor = page_of(found, limit, lambda e: e.seq)
        return Page[AccessOut](items=[access_out(e) for e in items], next_cursor=next_cursor)

    @api.get(
        "/erasures",
        summary="Erasure cases: each owner's answer, the certificate, overdue expiries",
    )
    async def get_erasures(
        caller: compliance,
        subject_id: SubjectFilter = None,
        open: Annotated[bool, Query(description="Only cases not completed.")] = False,
    ) -> ErasuresOut:
        cases = await handlers.erasures(deps, caller, subject_id=subject_id, open_only=open)
        return ErasuresOut(items=[erasure_out(c) for c in cases])

    @api.get(
        "/subjects/{subject_id}/report",
        summary="A person's report: JSON, or a document to read (HTML, PDF)",
        responses={
            200: {
                "content": {
                    "application/json": {},
                    "text/html": {},
                    "application/pdf": {},
                }
            },
            404: {"description": "The trail holds nothing about this person"},
        },
    )
    async def get_report(
        subject_id: UUID,
        caller: compliance,
        format: Annotated[report.ReportFormat, Query(description="json, html or pdf")] = "json",
    ) -> Response:
        history = await handlers.subject_history(deps, caller, subject_id)
        return Response(report.render(history, format), media_type=report.MEDIA_TYPES[format])

    @api.get("/chain", summary="Whether every chain of the trail is intact, and its first break")
    async def get_chain(caller: compliance) -> ChainsOut:
        return chains_out(await handlers.chain_status(deps, caller))

    return api
