"""The consent service's HTTP API (contract: API.md, "consent"): parse, authorise, call one
handler, answer. The handlers' refusals answer as `problems.PROBLEM_TYPES` declares.

Who may do what:
- anyone: the purposes and their policy texts, the receipt verification keys;
- a signed-in client: grant, list and revoke their own consents;
- the consent's subject or compliance staff: read a consent, its receipt, its validity at a
  moment; compliance only: a person's consents valid at a moment, registering recipients.
A consent someone may not see answers 404, as if it did not exist.
"""

# No `from __future__ import annotations` here: FastAPI must evaluate the route annotations,
# and the caller dependencies they name are local to `router`.
import re
from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from confide_events.consent import RevocationReason
from confide_events.vocabulary import DataCategory, PolicyCode, Sha256Hex, VersionCode
from confide_toolkit.auth import Caller, CallerDependency, require_role
from confide_toolkit.pagination import IdCursor, Page, PageSize, page_of
from confide_toolkit.problem import NotFound
from fastapi import APIRouter, Depends, Query, Response
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
)

from confide_consent import handlers
from confide_consent.domain import Consent, Recipient, RecipientKind
from confide_consent.handlers import Dependencies
from confide_consent.purposes import PURPOSES, Purpose
from confide_consent.receipts import receipt_payload

# Pydantic would also read `0.5` or `1700000000` as a moment (seconds since 1970); the
# document promises RFC 3339 date-times, so only those are accepted.
_RFC3339 = re.compile(
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})$"
)


def _rfc3339(value: object) -> object:
    if isinstance(value, str) and not _RFC3339.fullmatch(value):
        raise ValueError("must be an RFC 3339 date-time with an offset, e.g. 2026-01-31T09:00:00Z")
    return value


Moment = Annotated[AwareDatetime, BeforeValidator(_rfc3339)]


# --- bodies ----------------------------------------------------------------------------------


class _Body(BaseModel):
    # Unknown fields are refused, so a misspelt `recipient_id` is not silently ignored.
    model_config = ConfigDict(extra="forbid")


def _grant_schema(schema: dict[str, Any]) -> None:
    # What the ledger accepts, said in the document: each purpose with the categories it
    # covers, its policy versions, and a recipient exactly when it names one. A purpose that is
    # never allowed (sell_data) is still refused by name, with 422 purpose-never-allowed.
    schema["oneOf"] = [
        {
            "properties": {
                "purpose": {"const": purpose.code},
                "data_categories": {"items": {"enum": list(purpose.data_categories)}},
                "policy_version": {"enum": [policy.version for policy in purpose.policies]},
                "recipient_id": {"type": "string", "format": "uuid"}
                if purpose.requires_recipient
                else {"type": "null"},
            },
            "required": ["purpose", "recipient_id"] if purpose.requires_recipient else ["purpose"],
        }
        for purpose in PURPOSES.values()
    ]


def _recipient_purposes_schema(schema: dict[str, Any]) -> None:
    schema["items"] = {"enum": [p.code for p in PURPOSES.values() if p.requires_recipient]}


class GrantRequest(_Body):
    model_config = ConfigDict(extra="forbid", json_schema_extra=_grant_schema)

    purpose: PolicyCode = Field(
        description="A purpose code from GET /v1/purposes.",
        json_schema_extra={"enum": list(PURPOSES)},
    )
    recipient_id: UUID | None = Field(
        default=None, description="The registered recipient; required by share_with_provider."
    )
    data_categories: list[DataCategory] = Field(min_length=1, max_length=16)
    policy_version: VersionCode = Field(
        description="The version of the policy text the person was shown; must be current."
    )
    policy_hash: Sha256Hex | None = Field(
        default=None, description="Optional: the SHA-256 of the text shown, checked if given."
    )
    method: Literal["api", "web_form", "mobile_app", "paper_form"] = Field(
        default="api", description="How the consent was collected."
    )


def _stripped_name(value: str) -> str:
    stripped = value.strip()
    if len(stripped) < 2:
        raise ValueError("must have at least 2 characters besides spaces")
    return stripped


class RecipientRequest(_Body):
    name: Annotated[
        str,
        # The length is checked on what was sent (as the document's maxLength counts it),
        # then the name is stripped and must keep two characters.
        StringConstraints(min_length=2, max_length=200),
        AfterValidator(_stripped_name),
        # The document says what stripping then counting means: two characters besides spaces.
        Field(json_schema_extra={"pattern": r"\S[\s\S]*\S"}),
    ]
    kind: RecipientKind
    purposes: list[PolicyCode] = Field(
        min_length=1,
        max_length=16,
        description="Purposes that name a recipient (`requires_recipient`).",
        json_schema_extra=_recipient_purposes_schema,
    )


class PolicyOut(BaseModel):
    purpose: str
    version: str
    text: str
    hash: str = Field(description="SHA-256 of the UTF-8 text, lowercase hex.")
    current: bool


class PurposeOut(BaseModel):
    purpose: str
    title: str
    description: str
    requires_recipient: bool
    data_categories: list[str]
    policy_version: str
    policy_text: str
    policy_hash: str


class PurposesOut(BaseModel):
    items: list[PurposeOut]


class ReceiptOut(BaseModel):
    receipt_id: UUID
    kid: str
    issued_at: datetime
    jws: str = Field(description="The signed receipt: a compact JWS (EdDSA) over `claims`.")
    claims: dict[str, Any] = Field(description="The receipt's content (Kantara CR v1.1 fields).")


class ConsentOut(BaseModel):
    consent_id: UUID
    subject_id: UUID
    purpose: str
    recipient_id: UUID | None
    data_categories: list[str]
    policy_version: str
    policy_hash: str
    method: str
    granted_at: datetime
    status: Literal["active", "revoked"]
    revoked_at: datetime | None
    revoke_reason: RevocationReason | None
    receipt_id: UUID | None


class GrantedOut(BaseModel):
    consent_id: UUID
    granted_at: datetime
    receipt: ReceiptOut


class ValidityOut(BaseModel):
    consent_id: UUID
    at: datetime
    valid: bool
    granted_at: datetime
    revoked_at: datetime | None
    revoke_reason: RevocationReason | None


class RecipientOut(BaseModel):
    recipient_id: UUID
    name: str
    kind: str
    purposes: list[str]


class Jwks(BaseModel):
    keys: list[dict[str, Any]]


# --- answers ---------------------------------------------------------------------------------


def _consent_out(consent: Consent) -> ConsentOut:
    return ConsentOut(
        consent_id=consent.consent_id,
        subject_id=consent.subject_id,
        purpose=consent.purpose,
        recipient_id=consent.recipient_id,
        data_categories=list(consent.data_categories),
        policy_version=consent.policy_version,
        policy_hash=consent.policy_hash,
        method=consent.method,
        granted_at=consent.granted_at,
        status=consent.status,
        revoked_at=consent.revoked_at,
        revoke_reason=consent.revoke_reason,
        receipt_id=consent.receipt.receipt_id if consent.receipt else None,
    )


def _receipt_out(consent: Consent) -> ReceiptOut:
    receipt = consent.receipt
    if receipt is None:  # every grant records its receipt in the same append
        raise NotFound(f"Consent {consent.consent_id} has no receipt.")
    return ReceiptOut(
        receipt_id=receipt.receipt_id,
        kid=receipt.kid,
        issued_at=receipt.issued_at,
        jws=receipt.jws,
        claims=receipt_payload(receipt.jws),
    )


def _purpose_out(purpose: Purpose) -> PurposeOut:
    policy = purpose.current_policy
    return PurposeOut(
        purpose=purpose.code,
        title=purpose.title,
        description=purpose.description,
        requires_recipient=purpose.requires_recipient,
        data_categories=list(purpose.data_categories),
        policy_version=policy.version,
        policy_text=policy.text,
        policy_hash=policy.hash,
    )


def _recipient_out(recipient: Recipient) -> RecipientOut:
    return RecipientOut(
        recipient_id=recipient.recipient_id,
        name=recipient.name,
        kind=recipient.kind,
        purposes=list(recipient.purposes),
    )


# --- routes ----------------------------------------------------------------------------------


def router(deps: Dependencies, current_caller: CallerDependency) -> APIRouter:
    """The /v1 routes of the consent service, bound to its dependencies and its token check."""
    api = APIRouter(prefix="/v1", tags=["consent"])
    signed_in = Annotated[Caller, Depends(current_caller)]
    client = Annotated[Caller, Depends(require_role("client", caller=current_caller))]
    compliance = Annotated[Caller, Depends(require_role("compliance", caller=current_caller))]

    # -- purposes and policies ----------------------------------------------------------------

    @api.get("/purposes", summary="The purposes a person can consent to, with current policy")
    async def get_purposes() -> PurposesOut:
        return PurposesOut(items=[_purpose_out(p) for p in PURPOSES.values()])

    @api.get(
        "/purposes/{purpose}/policies/{version}",
        summary="The exact text of any policy version, current or past (a receipt's policyUrl)",
    )
    async def get_policy(purpose: str, version: str) -> PolicyOut:
        found = PURPOSES.get(purpose)
        policy = found.policy(version) if found else None
        if found is None or policy is None:
            raise NotFound(f"There is no policy version {version!r} of purpose {purpose!r}.")
        return PolicyOut(
            purpose=purpose,
            version=policy.version,
            text=policy.text,
            hash=policy.hash,
            current=policy == found.current_policy,
        )

    # -- consents -----------------------------------------------------------------------------

    @api.post(
        "/consents",
        status_code=201,
        summary="Grant a consent (signed-in client); answers its signed receipt",
        responses={409: {"description": "Stale policy version"}, 422: {"description": "Refused"}},
    )
    async def post_consent(body: GrantRequest, caller: client, response: Response) -> GrantedOut:
        consent = await handlers.grant_consent(
            deps,
            handlers.GrantConsent(
                subject_id=caller.subject_id,
                purpose=body.purpose,
                recipient_id=body.recipient_id,
                data_categories=body.data_categories,
                policy_version=body.policy_version,
                policy_hash=body.policy_hash,
                method=body.method,
            ),
        )
        response.headers["Location"] = f"/v1/consents/{consent.consent_id}"
        return GrantedOut(
            consent_id=consent.consent_id,
            granted_at=consent.granted_at,
            receipt=_receipt_out(consent),
        )

    @api.get("/consents", summary="The caller's consents, active and past, newest first")
    async def get_consents(
        caller: client,
        limit: PageSize = 50,
        cursor: IdCursor = None,
        status: Annotated[Literal["active", "revoked"] | None, Query()] = None,
    ) -> Page[ConsentOut]:
        found = await handlers.list_consents(
            deps, caller.subject_id, limit=limit + 1, after=cursor, status=status
        )
        items, next_cursor = page_of(found, limit, lambda c: c.consent_id)
        return Page[ConsentOut](items=[_consent_out(c) for c in items], next_cursor=next_cursor)

    @api.get("/consents/{consent_id}", summary="One consent (its subject, or compliance)")
    async def get_consent(consent_id: UUID, caller: signed_in) -> ConsentOut:
        return _consent_out(await handlers.visible_consent(deps, consent_id, caller))

    @api.delete(
        "/consents/{consent_id}",
        status_code=204,
        summary="Withdraw a consent (its subject); effective at once, publishes ConsentRevoked",
    )
    async def delete_consent(consent_id: UUID, caller: signed_in) -> Response:
        await handlers.revoke_consent(deps, caller.subject_id, consent_id)
        return Response(status_code=204)

    @api.get("/consents/{consent_id}/receipt", summary="The signed consent receipt")
    async def get_receipt(consent_id: UUID, caller: signed_in) -> ReceiptOut:
        return _receipt_out(await handlers.visible_consent(deps, consent_id, caller))

    @api.get(
        "/consents/{consent_id}/validity",
        summary="Was this consent valid at a moment? (its subject, or compliance)",
    )
    async def get_validity(
        consent_id: UUID,
        caller: signed_in,
        at: Annotated[
            Moment | None,
            Query(description="RFC 3339 time with an offset; now when omitted."),
        ] = None,
    ) -> ValidityOut:
        consent = await handlers.visible_consent(deps, consent_id, caller)
        moment = at or deps.clock.now()
        return ValidityOut(
            consent_id=consent.consent_id,
            at=moment,
            valid=consent.valid_at(moment),
            granted_at=consent.granted_at,
            revoked_at=consent.revoked_at,
            revoke_reason=consent.revoke_reason,
        )

    @api.get(
        "/subjects/{subject_id}/consents",
        summary="A person's consents, or those valid at a moment (compliance)",
    )
    async def get_subject_consents(
        subject_id: UUID,
        caller: compliance,
        valid_at: Annotated[Moment | None, Query()] = None,
        limit: PageSize = 50,
        cursor: IdCursor = None,
    ) -> Page[ConsentOut]:
        found = await handlers.list_consents(
            deps, subject_id, limit=limit + 1, after=cursor, valid_at=valid_at
        )
        items, next_cursor = page_of(found, limit, lambda c: c.consent_id)
        return Page[ConsentOut](items=[_consent_out(c) for c in items], next_cursor=next_cursor)

    # -- receipt keys and recipients ----------------------------------------------------------

    @api.get("/receipt-keys", summary="JWKS: the public keys that verify consent receipts")
    async def get_receipt_keys() -> Jwks:
        return Jwks.model_validate(await handlers.receipt_keys(deps))

    @api.get("/recipients", summary="The registered recipients a consent can name")
    async def get_recipients(
        caller: signed_in, limit: PageSize = 50, cursor: IdCursor = None
    ) -> Page[RecipientOut]:
        found = await handlers.list_recipients(deps, limit=limit + 1, after=cursor)
        items, next_cursor = page_of(found, limit, lambda r: r.recipient_id)
        return Page[RecipientOut](items=[_recipient_out(r) for r in items], next_cursor=next_cursor)

    @api.post(
        "/recipients", status_code=201, summary="Register a third-party recipient (compliance)"
    )
    async def post_recipient(body: RecipientRequest, caller: compliance) -> RecipientOut:
        recipient = await handlers.register_recipient(
            deps,
            handlers.RegisterRecipient(
                name=body.name,
                kind=body.kind,
                purposes=body.purposes,
                registered_by=caller.subject_id,
            ),
        )
        return _recipient_out(recipient)

    return api
