"""Events published by the messaging service on `messaging.events`.

They say that something happened to a conversation and when, never what was
said: message bodies and session notes stay encrypted in messaging.
The subject of every event is the client whose conversation it is, so all of a
conversation's events share a partition and keep their order.
"""

from typing import Annotated, ClassVar, Literal, Self
from uuid import UUID

from pydantic import Field, model_validator

from confide_events.base import IntegrationEvent
from confide_events.shredding import SubjectDataShredded as _SubjectDataShredded
from confide_events.shredding import SubjectDataShreddedV1 as _SubjectDataShreddedV1
from confide_events.vocabulary import DataCategory, MessagingCategory, UtcDateTime

PRODUCER = "messaging"

ParticipantRole = Literal["client", "therapist"]

LegalBasis = Literal[
    "court_order",
    "mandatory_reporting",
    "imminent_risk_of_harm",
    "regulatory_inspection",
]
"""A legal basis that allows a disclosure without consent."""


class ConversationStarted(IntegrationEvent):
    """A client and a therapist opened a conversation."""

    event_type: ClassVar[str] = "confide.messaging.ConversationStarted"
    schema_version: ClassVar[int] = 1
    producer: ClassVar[str] = PRODUCER

    conversation_id: UUID
    subject_id: UUID
    therapist_id: UUID
    started_at: UtcDateTime


class MessageSent(IntegrationEvent):
    """A participant sent a message in a conversation (ids and time only, never the body)."""

    event_type: ClassVar[str] = "confide.messaging.MessageSent"
    schema_version: ClassVar[int] = 1
    producer: ClassVar[str] = PRODUCER

    message_id: UUID
    conversation_id: UUID
    subject_id: UUID
    sender_id: UUID
    sender_role: ParticipantRole
    sent_at: UtcDateTime


class SessionNoteRecorded(IntegrationEvent):
    """A therapist recorded a session note about a client (never its content)."""

    event_type: ClassVar[str] = "confide.messaging.SessionNoteRecorded"
    schema_version: ClassVar[int] = 1
    producer: ClassVar[str] = PRODUCER

    note_id: UUID
    conversation_id: UUID
    subject_id: UUID
    therapist_id: UUID
    recorded_at: UtcDateTime


class RecordAccessed(IntegrationEvent):
    """Someone read a client's clinical record: the audit trail of every access."""

    event_type: ClassVar[str] = "confide.messaging.RecordAccessed"
    schema_version: ClassVar[int] = 1
    producer: ClassVar[str] = PRODUCER

    subject_id: UUID
    accessor_id: UUID
    accessor_role: ParticipantRole
    category: MessagingCategory
    record_id: UUID
    accessed_at: UtcDateTime


class RecordsDisclosed(IntegrationEvent):
    """A client's records were disclosed to a third party.

    Exactly one of `consent_id` (a consent valid at `disclosed_at`) or
    `legal_basis` justifies it.
    """

    event_type: ClassVar[str] = "confide.messaging.RecordsDisclosed"
    schema_version: ClassVar[int] = 1
    producer: ClassVar[str] = PRODUCER

    disclosure_id: UUID
    subject_id: UUID
    recipient_id: UUID
    consent_id: UUID | None
    legal_basis: LegalBasis | None
    data_categories: Annotated[tuple[DataCategory, ...], Field(min_length=1)]
    disclosed_at: UtcDateTime

    @model_validator(mode="after")
    def _one_justification(self) -> Self:
        if (self.consent_id is None) == (self.legal_basis is None):
            raise ValueError("exactly one of consent_id and legal_basis must be set")
        return self


class SubjectDataShredded(_SubjectDataShredded):
    """Messaging's answer to a `RetentionExpired` for one of its categories: the person's
    key destroyed (`shredded`), or no data held for them (`nothing_held`)."""

    event_type: ClassVar[str] = "confide.messaging.SubjectDataShredded"
    schema_version: ClassVar[int] = 2
    producer: ClassVar[str] = PRODUCER

    category: MessagingCategory


# Version 1 of `SubjectDataShredded`, frozen: do not edit; read as version 2 through
# `shredding.upcast_subject_data_shredded_v1`. (Its docstring is its committed schema's.)
class SubjectDataShreddedV1(_SubjectDataShreddedV1):
    """Messaging destroyed a person's key for their messages or session notes."""

    event_type: ClassVar[str] = "confide.messaging.SubjectDataShredded"
    schema_version: ClassVar[int] = 1
    producer: ClassVar[str] = PRODUCER

    category: MessagingCategory
