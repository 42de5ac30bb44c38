"""The events of a person's journey through Confide, as their producers publish them: a client
registers, consents to share their session notes with a provider, talks to a therapist, has a
note read and disclosed, withdraws the consent, and has their data erased."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from confide_events.consent import ConsentGranted, ConsentRevoked
from confide_events.identity import UserRegistered
from confide_events.messaging import (
    ConversationStarted,
    MessageSent,
    RecordAccessed,
    RecordsDisclosed,
    SessionNoteRecorded,
    SubjectDataShredded,
)
from confide_events.retention import (
    CategoryOutcome,
    ErasureCompleted,
    ErasureRequested,
    RetentionExpired,
)

NOTES = "messaging.session_notes"


def at(minutes: int) -> datetime:
    """A moment of the journey: `minutes` after its start, a day ago."""
    return datetime(2026, 11, 1, 9, 0, tzinfo=UTC) + timedelta(minutes=minutes)


@dataclass
class Journey:
    client: uuid.UUID = field(default_factory=uuid.uuid4)
    therapist: uuid.UUID = field(default_factory=uuid.uuid4)
    provider: uuid.UUID = field(default_factory=uuid.uuid4)
    consent_id: uuid.UUID = field(default_factory=uuid.uuid4)
    conversation_id: uuid.UUID = field(default_factory=uuid.uuid4)
    note_id: uuid.UUID = field(default_factory=uuid.uuid4)
    case_id: uuid.UUID = field(default_factory=uuid.uuid4)
    certificate_id: uuid.UUID = field(default_factory=uuid.uuid4)

    def registered(self) -> UserRegistered:
        return UserRegistered(subject_id=self.client, role="client", registered_at=at(0))

    def consented(self, minutes: int = 1) -> ConsentGranted:
        return ConsentGranted(
            consent_id=self.consent_id,
            subject_id=self.client,
            purpose="share_with_provider",
            recipient_id=self.provider,
            data_categories=(NOTES,),
            policy_version="2026-01",
            policy_hash="a" * 64,
            method="web_form",
            granted_at=at(minutes),
        )

    def conversation(self) -> list[ConversationStarted | MessageSent | SessionNoteRecorded]:
        return [
            ConversationStarted(
                conversation_id=self.conversation_id,
                subject_id=self.client,
                therapist_id=self.therapist,
                started_at=at(2),
            ),
            MessageSent(
                message_id=uuid.uuid4(),
                conversation_id=self.conversation_id,
                subject_id=self.client,
                sender_id=self.client,
                sender_role="client",
                sent_at=at(3),
            ),
            SessionNoteRecorded(
                note_id=self.note_id,
                conversation_id=self.conversation_id,
                subject_id=self.client,
                therapist_id=self.therapist,
                recorded_at=at(4),
            ),
        ]

    def note_read(self, minutes: int = 5) -> RecordAccessed:
        return RecordAccessed(
            subject_id=self.client,
            accessor_id=self.therapist,
            accessor_role="therapist",
            category=NOTES,
            record_id=self.note_id,
            accessed_at=at(minutes),
        )

    def disclosed(self, minutes: int, disclosure_id: uuid.UUID | None = None) -> RecordsDisclosed:
        return RecordsDisclosed(
            disclosure_id=disclosure_id or uuid.uuid4(),
            subject_id=self.client,
            recipient_id=self.provider,
            consent_id=self.consent_id,
            legal_basis=None,
            data_categories=(NOTES,),
            disclosed_at=at(minutes),
        )

    def revoked(self, minutes: int) -> ConsentRevoked:
        return ConsentRevoked(
            consent_id=self.consent_id,
            subject_id=self.client,
            revoked_at=at(minutes),
            reason="subject_withdrew",
        )

    def erasure_requested(self, minutes: int) -> ErasureRequested:
        return ErasureRequested(
            erasure_case_id=self.case_id,
            subject_id=self.client,
            origin="subject_request",
            data_categories=(NOTES, "messaging.messages"),
            requested_at=at(minutes),
        )

    def expired(self, category: str, minutes: int) -> RetentionExpired:
        return RetentionExpired(
            subject_id=self.client,
            category=category,  # type: ignore[arg-type]
            policy="erasure.subject_request",
            due_at=at(minutes),
            erasure_case_id=self.case_id,
        )

    def shredded(self, category: str, minutes: int) -> SubjectDataShredded:
        return SubjectDataShredded(
            subject_id=self.client,
            category=category,  # type: ignore[arg-type]
            outcome="shredded",
            key_id=uuid.uuid4(),
            answered_at=at(minutes),
            erasure_case_id=self.case_id,
        )

    def erasure_completed(self, minutes: int) -> ErasureCompleted:
        return ErasureCompleted(
            erasure_case_id=self.case_id,
            subject_id=self.client,
            certificate_id=self.certificate_id,
            outcomes=(
                CategoryOutcome(
                    category=NOTES, outcome="shredded", key_id=uuid.uuid4(), shredded_at=at(minutes)
                ),
            ),
            backups_clear_from=at(minutes) + timedelta(days=35),
            completed_at=at(minutes),
        )
