"""Events published by the retention service on `retention.events`.

Retention decides when data goes: it emits `RetentionExpired` for a (subject,
category), the owning service shreds the key and answers `SubjectDataShredded`,
and retention closes the erasure case with `ErasureCompleted`.
"""

from typing import Annotated, ClassVar, Literal, Self
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, model_validator

from confide_events.base import IntegrationEvent
from confide_events.vocabulary import DataCategory, PolicyCode, UtcDateTime

PRODUCER = "retention"

ErasureOrigin = Literal["subject_request", "compliance_request", "account_closed"]

LegalHoldReason = Literal[
    "litigation",
    "regulatory_investigation",
    "law_enforcement_request",
    "clinical_complaint",
]
"""Why a legal hold stands: a code, never free text."""

CategoryOutcomeCode = Literal["shredded", "retained", "nothing_held"]

RetentionGround = Literal["legal_obligation", "legal_hold"]
"""Why a category is kept past an erasure request."""


class ErasureRequested(IntegrationEvent):
    """An erasure case was opened for a person."""

    event_type: ClassVar[str] = "confide.retention.ErasureRequested"
    schema_version: ClassVar[int] = 1
    producer: ClassVar[str] = PRODUCER

    erasure_case_id: UUID
    subject_id: UUID
    origin: ErasureOrigin
    data_categories: Annotated[tuple[DataCategory, ...], Field(min_length=1)]
    requested_at: UtcDateTime


class LegalHoldPlaced(IntegrationEvent):
    """A legal hold pauses every expiry for a person until it is released."""

    event_type: ClassVar[str] = "confide.retention.LegalHoldPlaced"
    schema_version: ClassVar[int] = 1
    producer: ClassVar[str] = PRODUCER

    legal_hold_id: UUID
    subject_id: UUID
    reason: LegalHoldReason
    placed_by: UUID
    placed_at: UtcDateTime


class LegalHoldReleased(IntegrationEvent):
    """A legal hold ended; overdue expiries for the person now run."""

    event_type: ClassVar[str] = "confide.retention.LegalHoldReleased"
    schema_version: ClassVar[int] = 1
    producer: ClassVar[str] = PRODUCER

    legal_hold_id: UUID
    subject_id: UUID
    released_by: UUID
    released_at: UtcDateTime


class RetentionExpired(IntegrationEvent):
    """A person's data in one category reached its end: the owning service must shred it."""

    event_type: ClassVar[str] = "confide.retention.RetentionExpired"
    schema_version: ClassVar[int] = 1
    producer: ClassVar[str] = PRODUCER

    subject_id: UUID
    category: DataCategory
    policy: PolicyCode
    due_at: UtcDateTime
    erasure_case_id: UUID | None = None


class CategoryOutcome(BaseModel):
    """What an erasure did to one category of a person's data."""

    model_config = ConfigDict(frozen=True, strict=True, extra="forbid")

    category: DataCategory
    outcome: CategoryOutcomeCode
    key_id: UUID | None = None
    shredded_at: UtcDateTime | None = None
    retained_until: UtcDateTime | None = None
    retained_on: RetentionGround | None = None

    @model_validator(mode="after")
    def _outcome_is_explained(self) -> Self:
        if self.outcome == "shredded" and (self.key_id is None or self.shredded_at is None):
            raise ValueError("a shredded category names its key_id and shredded_at")
        if self.outcome == "retained" and (self.retained_until is None or self.retained_on is None):
            raise ValueError("a retained category names retained_until and retained_on")
        return self


class ErasureCompleted(IntegrationEvent):
    """An erasure case closed; its signed certificate lists each category's outcome.

    `backups_clear_from` is the date from which no backup can restore the
    shredded data any more (the KEK versions that wrapped the keys are destroyed).
    """

    event_type: ClassVar[str] = "confide.retention.ErasureCompleted"
    schema_version: ClassVar[int] = 1
    producer: ClassVar[str] = PRODUCER

    erasure_case_id: UUID
    subject_id: UUID
    certificate_id: UUID
    outcomes: Annotated[tuple[CategoryOutcome, ...], Field(min_length=1)]
    backups_clear_from: UtcDateTime
    completed_at: UtcDateTime
