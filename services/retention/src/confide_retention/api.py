"""The retention service's HTTP API (contract: API.md, "retention"): parse, authorise, call one
handler, answer. The handlers' refusals answer as `problems.PROBLEM_TYPES` declares.

Who may do what:
- anyone: the policies in force, and the keys that verify certificates;
- a signed-in person: request their own erasure (after a fresh sign-in), follow it, read its
  certificate (anyone else's case or certificate does not exist for them: 404);
- compliance: request the erasure of a person it names, follow and pause or resume any case,
  read any certificate, place and release legal holds.
"""

# No `from __future__ import annotations` here: FastAPI must evaluate the route annotations,
# and the caller dependencies they name are local to `router`.
from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from confide_events.retention import LegalHoldReason
from confide_toolkit.auth import Caller, CallerDependency, require_role
from confide_toolkit.problem import Forbidden
from confide_toolkit.signed_documents import document_claims
from fastapi import APIRouter, Body, Depends, Response
from pydantic import BaseModel, ConfigDict, Field

from confide_retention import handlers
from confide_retention.domain import CategoryProgress, LogEntry
from confide_retention.handlers import CaseStatus, Dependencies
from confide_retention.policies import Policy, PolicySet

# --- bodies ----------------------------------------------------------------------------------


class _Body(BaseModel):
    # Unknown fields are refused, so a misspelt field is not silently ignored.
    model_config = ConfigDict(extra="forbid")


class ErasureRequestBody(_Body):
    subject_id: UUID | None = Field(
        default=None,
        description="The person to erase: compliance names them; a person may omit it (or "
        "name themselves).",
    )


class LegalHoldBody(_Body):
    subject_id: UUID
    reason: LegalHoldReason


class PolicyOut(BaseModel):
    category: str
    policy: str = Field(description="The code `RetentionExpired.policy` carries.")
    version: int
    keep_for: str = Field(description="ISO 8601 duration.")
    clock_starts_on: list[str]
    waits_for_account_closure: bool
    legal_obligation: str | None
    then: str = "shred"


class PoliciesOut(BaseModel):
    version: str
    policies: list[PolicyOut]


class RequestedOut(BaseModel):
    request_id: UUID


class LogEntryOut(BaseModel):
    step: str
    at: datetime
    attempt: int | None = None
    key_id: UUID | None = None
    by: str | None = None
    until: datetime | None = None
    ground: str | None = None


class CategoryOut(BaseModel):
    category: str
    policy: str
    state: str = Field(
        description="shredded, nothing_held, retained (on a legal ground, until retained_until),"
        " awaiting_owner (expiry emitted), scheduled, held (a legal hold stands), paused"
    )
    shredded_at: datetime | None = None
    key_id: UUID | None = None
    answered_by: str | None = None
    retained_until: datetime | None = None
    retained_on: str | None = None
    ground: str | None = None
    log: list[LogEntryOut]


class ErasureStatusOut(BaseModel):
    request_id: UUID
    subject_id: UUID
    origin: str
    status: str
    requested_at: datetime | None
    legal_hold: bool = Field(description="A legal hold stops this person's expiries now.")
    legal_hold_ids: list[UUID] | None = Field(
        default=None, description="The holds that stand (shown to compliance only)."
    )
    completed_at: datetime | None
    certificate_id: UUID | None
    backups_clear_from: datetime | None
    categories: list[CategoryOut]


class HoldOut(BaseModel):
    hold_id: UUID
    subject_id: UUID
    reason: str
    placed_at: datetime


class CertificateOut(BaseModel):
    certificate_id: UUID
    erasure_case_id: UUID
    kid: str
    issued_at: datetime
    jws: str = Field(description="The certificate: a compact JWS, verify with /v1/signing-keys.")
    claims: dict[str, Any] = Field(description="The JWS's payload, for reading.")


class Jwks(BaseModel):
    keys: list[dict[str, Any]]


# --- answers ---------------------------------------------------------------------------------


def _policy_out(policy: Policy) -> PolicyOut:
    return PolicyOut(
        category=policy.category,
        policy=policy.code,
        version=policy.version,
        keep_for=policy.keep_for.text,
        clock_starts_on=list(policy.clock_starts_on),
        waits_for_account_closure=policy.waits_for_account_closure,
        legal_obligation=policy.legal_obligation,
    )


def _policies_out(policies: PolicySet) -> PoliciesOut:
    return PoliciesOut(
        version=policies.version, policies=[_policy_out(p) for p in policies.policies.values()]
    )


def _log_out(entry: LogEntry) -> LogEntryOut:
    return LogEntryOut(
        step=entry.step,
        at=entry.at,
        attempt=entry.attempt,
        key_id=entry.key_id,
        by=entry.by,
        until=entry.until,
        ground=entry.ground,
    )


def _state(progress: CategoryProgress, held: bool, paused: bool) -> str:
    if progress.answer is not None:
        return progress.answer.outcome
    if progress.retained:
        return "retained"
    if held:
        return "held"
    if paused:
        return "paused"
    return "awaiting_owner" if progress.attempts else "scheduled"


def _category_out(progress: CategoryProgress, held: bool, paused: bool) -> CategoryOut:
    answer, plan = progress.answer, progress.plan
    retained = answer is None and progress.retained
    return CategoryOut(
        category=plan.category,
        policy=plan.policy,
        state=_state(progress, held, paused),
        shredded_at=answer.answered_at if answer and answer.outcome == "shredded" else None,
        key_id=answer.key_id if answer else None,
        answered_by=answer.answered_by if answer else None,
        retained_until=plan.due_at if retained else None,
        retained_on="legal_obligation" if retained else None,
        ground=plan.legal_obligation if retained else None,
        log=[_log_out(e) for e in progress.log],
    )


def _status_out(status: CaseStatus, caller: Caller) -> ErasureStatusOut:
    case, held = status.case, bool(status.holds)
    return ErasureStatusOut(
        request_id=case.case_id,
        subject_id=case.subject_id,
        origin=case.origin,
        status=case.status,
        requested_at=case.requested_at,
        legal_hold=held,
        legal_hold_ids=[h.hold_id for h in status.holds] if caller.role == "compliance" else None,
        completed_at=case.completed_at,
        certificate_id=case.certificate_id,
        backups_clear_from=case.backups_clear_from,
        categories=[
            _category_out(p, held, case.status == "paused") for p in case.categories.values()
        ],
    )


# --- routes ----------------------------------------------------------------------------------


def router(deps: Dependencies, current_caller: CallerDependency) -> APIRouter:
    """The /v1 routes of the retention service, bound to its dependencies and its token check."""
    api = APIRouter(prefix="/v1", tags=["retention"])
    signed_in = Annotated[Caller, Depends(current_caller)]
    compliance = Annotated[Caller, Depends(require_role("compliance", caller=current_caller))]

    @api.get("/policies", summary="The retention policies in force")
    async def get_policies() -> PoliciesOut:
        return _policies_out(deps.policies)

    @api.post(
        "/erasure-requests",
        status_code=202,
        summary="Request an erasure: a person's own (fresh sign-in needed), or compliance's "
        "for the person it names",
        responses={
            401: {"description": "fresh-sign-in-required: sign in again, then repeat"},
            409: {"description": "erasure-already-requested: the open request is named"},
        },
    )
    async def post_erasure_request(
        caller: signed_in, body: Annotated[ErasureRequestBody | None, Body()] = None
    ) -> RequestedOut:
        subject_id = body.subject_id if body is not None else None
        if (
            caller.role != "compliance"
            and subject_id is not None
            and subject_id != caller.subject_id
        ):
            raise Forbidden("Only compliance may request the erasure of someone else.")
        case_id = await handlers.request_erasure(deps, caller, subject_id)
        return RequestedOut(request_id=case_id)

    @api.get("/erasure-requests/{request_id}", summary="An erasure request's status and log")
    async def get_erasure_request(request_id: UUID, caller: signed_in) -> ErasureStatusOut:
        return _status_out(await handlers.erasure_status(deps, caller, request_id), caller)

    @api.post("/erasure-requests/{request_id}/pause", summary="Pause a case (compliance)")
    async def pause_erasure_request(request_id: UUID, caller: compliance) -> ErasureStatusOut:
        return _status_out(await handlers.pause_erasure(deps, caller, request_id), caller)

    @api.post("/erasure-requests/{request_id}/resume", summary="Resume a case (compliance)")
    async def resume_erasure_request(request_id: UUID, caller: compliance) -> ErasureStatusOut:
        return _status_out(await handlers.resume_erasure(deps, caller, request_id), caller)

    @api.post("/legal-holds", status_code=201, summary="Place a legal hold (compliance)")
    async def post_legal_hold(body: LegalHoldBody, caller: compliance) -> HoldOut:
        hold = await handlers.place_legal_hold(deps, caller, body.subject_id, body.reason)
        return HoldOut(
            hold_id=hold.hold_id,
            subject_id=hold.subject_id,
            reason=hold.reason,
            placed_at=hold.placed_at,
        )

    @api.delete(
        "/legal-holds/{hold_id}", status_code=204, summary="Release a legal hold (compliance)"
    )
    async def delete_legal_hold(hold_id: UUID, caller: compliance) -> Response:
        await handlers.release_legal_hold(deps, caller, hold_id)
        return Response(status_code=204)

    @api.get("/certificates/{certificate_id}", summary="A signed erasure certificate")
    async def get_certificate(certificate_id: UUID, caller: signed_in) -> CertificateOut:
        found = await handlers.certificate(deps, caller, certificate_id)
        return CertificateOut(
            certificate_id=found.certificate_id,
            erasure_case_id=found.erasure_case_id,
            kid=found.kid,
            issued_at=found.issued_at,
            jws=found.jws,
            claims=document_claims(found.jws),
        )

    @api.get("/signing-keys", summary="JWKS: the public keys that verify erasure certificates")
    async def get_signing_keys() -> Jwks:
        return Jwks.model_validate(await handlers.signing_keys(deps))

    return api
