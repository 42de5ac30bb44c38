"""The conversation: one aggregate per conversation between a client and a therapist, rebuilt
from the stream of its events.

A client opens a conversation with a therapist; from then on only those two may post in it, and
only the therapist records session notes about the client in it. Once either of them closes
their account the conversation is closed for new messages. Message bodies and notes reach the
domain only sealed (`Keyring.encrypt` under the client's key for the category, bound to the
record's id): the events hold ciphertext, never plaintext. The invariants live here, with no I/O.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final
from uuid import UUID

from confide_events.messaging import ParticipantRole
from confide_events.vocabulary import DataCategory, MessagingCategory
from confide_toolkit.domain_events import DomainEvent

STREAM_TYPE: Final = "conversation"

MESSAGES: Final = "messaging.messages"
"""The category (and keyring key) of message bodies."""
SESSION_NOTES: Final = "messaging.session_notes"
"""The category (and keyring key) of session notes, kept for years after messages go."""
MESSAGING_CATEGORIES: Final[tuple[DataCategory, ...]] = (MESSAGES, SESSION_NOTES)

MAX_BODY_CHARACTERS: Final = 10_000
"""The longest message or note body, in characters."""

# --- errors: each names the request field it is about, when there is one ---------------------


class MessagingError(Exception):
    """A command the service refuses. Messages carry pseudonymous ids only."""

    field: str | None = None


class TherapistNotAvailable(MessagingError):
    """The therapist named is not a registered therapist with an open account."""

    field = "therapist_id"

    def __init__(self, therapist_id: UUID) -> None:
        super().__init__(f"There is no registered therapist {therapist_id} with an open account.")


class ClientNotAvailable(MessagingError):
    """The client opening a conversation is not a registered client with an open account."""

    def __init__(self, client_id: UUID) -> None:
        super().__init__(f"The account of {client_id} is not an open client account.")


class ConversationNotFound(MessagingError):
    """There is no such conversation, or the caller is not one of its two participants (to
    anyone else a conversation does not exist)."""

    def __init__(self, conversation_id: UUID) -> None:
        super().__init__(f"There is no conversation {conversation_id}.")


class ClientNotFound(MessagingError):
    """The caller is not a therapist in conversation with this client (to anyone else, the
    client's records do not exist)."""

    def __init__(self, client_id: UUID) -> None:
        super().__init__(f"There is no client {client_id} in conversation with you.")


class ConversationClosed(MessagingError):
    """A participant closed their account: the conversation takes no new messages."""

    def __init__(self, conversation_id: UUID) -> None:
        super().__init__(f"The conversation {conversation_id} is closed to new messages.")


class IdempotencyKeyReused(MessagingError):
    """The Idempotency-Key was already used for a post to another conversation."""

    field = "Idempotency-Key"

    def __init__(self) -> None:
        super().__init__("This Idempotency-Key was already used for another request.")


class ConsentRequired(MessagingError):
    """No consent valid now covers this disclosure: nothing leaves."""

    def __init__(self, recipient_id: UUID) -> None:
        super().__init__(
            f"No valid share_with_provider consent covers a disclosure to {recipient_id} "
            "of these categories."
        )


class NotHeldHere(MessagingError):
    """A disclosure named a category of data that messaging does not hold."""

    field = "data_categories"

    def __init__(self, categories: Iterable[str]) -> None:
        super().__init__(
            f"Messaging holds only {', '.join(MESSAGING_CATEGORIES)}; not {', '.join(categories)}."
        )


class RecordsErased(MessagingError):
    """The client's key for this category was shredded and the conversation is closed: nothing
    new is stored for them under a fresh key (see `Conversation.writes_after_erasure`)."""

    def __init__(self, category: str) -> None:
        super().__init__(
            f"The client's {category} were erased and the conversation is closed; "
            "nothing new is stored for them."
        )


class DownloadNotAvailable(MessagingError):
    """The download token is wrong, already used, or its disclosure expired."""

    def __init__(self, disclosure_id: UUID) -> None:
        super().__init__(f"Disclosure {disclosure_id} has no bundle for this token.")


# --- the conversation's events ---------------------------------------------------------------


def seal_text(ciphertext: bytes) -> str:
    """Ciphertext as a domain event carries it (events are JSON)."""
    return base64.b64encode(ciphertext).decode("ascii")


def sealed_bytes(text: str) -> bytes:
    """The ciphertext a domain event carries."""
    return base64.b64decode(text)


class ConversationOpened(DomainEvent):
    """A client opened a conversation with a therapist."""

    stream_type = STREAM_TYPE
    event_type = "ConversationOpened"
    schema_version = 1

    client_id: UUID
    therapist_id: UUID
    started_at: datetime


class MessagePosted(DomainEvent):
    """A participant posted a message; `sealed_body` is the keyring's ciphertext (base64)."""

    stream_type = STREAM_TYPE
    event_type = "MessagePosted"
    schema_version = 1

    message_id: UUID
    sender_id: UUID
    sender_role: ParticipantRole
    sealed_body: str
    sent_at: datetime


class NoteRecorded(DomainEvent):
    """The therapist recorded a session note; `sealed_body` is the keyring's ciphertext."""

    stream_type = STREAM_TYPE
    event_type = "NoteRecorded"
    schema_version = 1

    note_id: UUID
    sealed_body: str
    recorded_at: datetime


class ConversationClosedForMessages(DomainEvent):
    """A participant's account closed: no new messages from `closed_at` on."""

    stream_type = STREAM_TYPE
    event_type = "ConversationClosed"
    schema_version = 1

    closed_at: datetime


CONVERSATION_EVENTS: tuple[type[DomainEvent], ...] = (
    ConversationOpened,
    MessagePosted,
    NoteRecorded,
    ConversationClosedForMessages,
)


# --- the aggregate ---------------------------------------------------------------------------


@dataclass
class Conversation:
    """A conversation between one client and one therapist. Commands check the invariants, then
    record and apply new events; `pending` holds what is to be appended after `version`.
    `snapshot_version` is the version of the snapshot it was restored from (0: from the first
    event). The state is ids, times and counts: no command needs a body again."""

    conversation_id: UUID
    version: int = 0
    client_id: UUID | None = None
    therapist_id: UUID | None = None
    started_at: datetime | None = None
    closed_at: datetime | None = None
    message_count: int = 0
    note_count: int = 0
    pending: list[DomainEvent] = field(default_factory=list)
    snapshot_version: int = 0

    @classmethod
    def open(
        cls, conversation_id: UUID, client_id: UUID, therapist_id: UUID, now: datetime
    ) -> Conversation:
        """A new conversation of `client_id` with `therapist_id` (whose accounts the caller
        checked are open, of those roles)."""
        conversation = cls(conversation_id)
        conversation._record(
            ConversationOpened(client_id=client_id, therapist_id=therapist_id, started_at=now)
        )
        return conversation

    @classmethod
    def replay(
        cls,
        conversation_id: UUID,
        events: Iterable[DomainEvent],
        version: int,
        *,
        snapshot: tuple[int, dict[str, Any]] | None = None,
    ) -> Conversation:
        """The conversation as its recorded events left it, at stream `version`."""
        conversation = cls(conversation_id, version)
        if snapshot is not None:
            version_at, state = snapshot
            conversation.snapshot_version = version_at
            conversation.client_id = UUID(state["client_id"])
            conversation.therapist_id = UUID(state["therapist_id"])
            conversation.started_at = datetime.fromisoformat(state["started_at"])
            closed_at = state["closed_at"]
            conversation.closed_at = datetime.fromisoformat(closed_at) if closed_at else None
            conversation.message_count = int(state["message_count"])
            conversation.note_count = int(state["note_count"])
        for event in events:
            conversation._apply(event)
        return conversation

    @property
    def exists(self) -> bool:
        """Whether the conversation was ever opened (an unknown id replays to nothing)."""
        return self.client_id is not None

    def snapshot_state(self) -> dict[str, Any]:
        """The state as JSON, to be saved as the snapshot at `version`."""
        assert self.started_at is not None
        return {
            "client_id": str(self.client_id),
            "therapist_id": str(self.therapist_id),
            "started_at": self.started_at.isoformat(),
            "closed_at": self.closed_at.isoformat() if self.closed_at else None,
            "message_count": self.message_count,
            "note_count": self.note_count,
        }

    def role_of(self, person_id: UUID) -> ParticipantRole | None:
        """`client` or `therapist` for the two participants; None for anyone else."""
        if person_id == self.client_id:
            return "client"
        if person_id == self.therapist_id:
            return "therapist"
        return None

    # -- commands ---------------------------------------------------------------------------

    def check_participant(self, person_id: UUID) -> ParticipantRole:
        """The role of `person_id` in the conversation; raises `ConversationNotFound` for
        anyone but the two participants."""
        role = self.role_of(person_id) if self.exists else None
        if role is None:
            raise ConversationNotFound(self.conversation_id)
        return role

    @property
    def writes_after_erasure(self) -> bool:
        """Whether what is written here after the client's messages or notes were erased is
        kept, under a fresh key: only while the conversation is open (both accounts open, the
        therapy going on). Once it is closed, an erasure stays true for anything written next."""
        return self.exists and self.closed_at is None

    def check_open(self) -> None:
        """Raises `ConversationClosed` once a participant closed their account."""
        if self.closed_at is not None:
            raise ConversationClosed(self.conversation_id)

    def post(
        self, message_id: UUID, sender_id: UUID, sealed_body: bytes, now: datetime
    ) -> MessagePosted:
        """Record a message of a participant in the open conversation."""
        role = self.check_participant(sender_id)
        self.check_open()
        event = MessagePosted(
            message_id=message_id,
            sender_id=sender_id,
            sender_role=role,
            sealed_body=seal_text(sealed_body),
            sent_at=now,
        )
        self._record(event)
        return event

    def record_note(
        self, note_id: UUID, therapist_id: UUID, sealed_body: bytes, now: datetime
    ) -> NoteRecorded:
        """Record a session note of the conversation's therapist (a closed conversation still
        takes notes: the clinical record outlives the conversation)."""
        if not self.exists or therapist_id != self.therapist_id:
            raise ConversationNotFound(self.conversation_id)
        event = NoteRecorded(note_id=note_id, sealed_body=seal_text(sealed_body), recorded_at=now)
        self._record(event)
        return event

    def close(self, now: datetime) -> bool:
        """Close the conversation to new messages; False (and nothing recorded) if it was."""
        if not self.exists or self.closed_at is not None:
            return False
        self._record(ConversationClosedForMessages(closed_at=now))
        return True

    # -- events -----------------------------------------------------------------------------

    def _record(self, event: DomainEvent) -> None:
        self._apply(event)
        self.pending.append(event)

    def _apply(self, event: DomainEvent) -> None:
        if isinstance(event, ConversationOpened):
            self.client_id = event.client_id
            self.therapist_id = event.therapist_id
            self.started_at = event.started_at
        elif isinstance(event, MessagePosted):
            self.message_count += 1
        elif isinstance(event, NoteRecorded):
            self.note_count += 1
        elif isinstance(event, ConversationClosedForMessages):
            self.closed_at = event.closed_at


# --- what reads answer -----------------------------------------------------------------------


@dataclass(frozen=True)
class ConversationSummary:
    """A conversation's metadata: ids, participants, times and counts, never a body."""

    conversation_id: UUID
    client_id: UUID
    therapist_id: UUID
    started_at: datetime
    closed_at: datetime | None
    message_count: int
    note_count: int
    last_message_at: datetime | None


@dataclass(frozen=True)
class Message:
    """A message as a participant reads it; `body` is None when its key was shredded."""

    message_id: UUID
    conversation_id: UUID
    sender_id: UUID
    sender_role: str
    body: str | None
    sent_at: datetime

    @property
    def erased(self) -> bool:
        return self.body is None


@dataclass(frozen=True)
class SessionNote:
    """A session note as its therapist reads it; `body` is None when its key was shredded."""

    note_id: UUID
    conversation_id: UUID
    client_id: UUID
    therapist_id: UUID
    body: str | None
    recorded_at: datetime

    @property
    def erased(self) -> bool:
        return self.body is None


def disclosable(categories: Iterable[str]) -> tuple[DataCategory, ...]:
    """The categories of a disclosure, each once; refuses any that messaging does not hold."""
    requested = tuple(dict.fromkeys(categories))
    foreign = [c for c in requested if c not in MESSAGING_CATEGORIES]
    if foreign:
        raise NotHeldHere(foreign)
    return tuple(c for c in MESSAGING_CATEGORIES if c in requested)


def messaging_category(category: str) -> MessagingCategory | None:
    """`category` when messaging owns it, else None (an expiry of another owner's data)."""
    if category == MESSAGES:
        return MESSAGES
    if category == SESSION_NOTES:
        return SESSION_NOTES
    return None
