"""Events published by the consent service on `consent.events`.

`ConsentGranted` is at schema version 2. Version 1 did not record how the consent
was collected; `ConsentGrantedV1` keeps that version's model, frozen, so its
committed JSON Schema stays generated and tested, and
`upcast_consent_granted_v1` turns old data into version 2 when it is read.
"""

from typing import Annotated, Any, ClassVar, Literal
from uuid import UUID

from pydantic import Field

from confide_events.base import IntegrationEvent
from confide_events.vocabulary import (
    DataCategory,
    PolicyCode,
    Sha256Hex,
    UtcDateTime,
    VersionCode,
)

PRODUCER = "consent"

CollectionMethod = Literal["api", "web_form", "mobile_app", "paper_form", "unspecified"]
"""How a consent was collected. `unspecified` only for grants recorded before version 2."""

RevocationReason = Literal["subject_withdrew", "account_closed"]


class ConsentGranted(IntegrationEvent):
    """A person consented to share some categories of their data for a purpose.

    `recipient_id` is None when the consent is not tied to one recipient.
    `policy_hash` is the SHA-256 of the exact policy text the person agreed to.
    """

    event_type: ClassVar[str] = "confide.consent.ConsentGranted"
    schema_version: ClassVar[int] = 2
    producer: ClassVar[str] = PRODUCER

    consent_id: UUID
    subject_id: UUID
    purpose: PolicyCode
    recipient_id: UUID | None
    data_categories: Annotated[tuple[DataCategory, ...], Field(min_length=1)]
    policy_version: VersionCode
    policy_hash: Sha256Hex
    method: CollectionMethod
    granted_at: UtcDateTime


class ConsentGrantedV1(IntegrationEvent):
    """Version 1 of `ConsentGranted`, frozen: do not edit; read through the upcaster."""

    event_type: ClassVar[str] = "confide.consent.ConsentGranted"
    schema_version: ClassVar[int] = 1
    producer: ClassVar[str] = PRODUCER

    consent_id: UUID
    subject_id: UUID
    purpose: PolicyCode
    recipient_id: UUID | None
    data_categories: Annotated[tuple[DataCategory, ...], Field(min_length=1)]
    policy_version: VersionCode
    policy_hash: Sha256Hex
    granted_at: UtcDateTime


def upcast_consent_granted_v1(data: dict[str, Any]) -> dict[str, Any]:
    """ConsentGranted v1 -> v2: v1 did not record the collection method."""
    return {**data, "method": "unspecified"}


class ConsentRevoked(IntegrationEvent):
    """A consent ends: no disclosure may cite it from `revoked_at` on."""

    event_type: ClassVar[str] = "confide.consent.ConsentRevoked"
    schema_version: ClassVar[int] = 1
    producer: ClassVar[str] = PRODUCER

    consent_id: UUID
    subject_id: UUID
    revoked_at: UtcDateTime
    reason: RevocationReason
