"""The messaging service's tables, repositories and projections.

- The conversation streams live in the toolkit's event store (`stored_events`), one per
  conversation; their events hold ciphertext, never plaintext.
- `conversations`, `messages` and `session_notes` are the projection of those streams, written
  in the transaction of each append and rebuildable from the streams. Bodies are kept exactly as
  the keyring sealed them: each under its client's key for its category, bound to its id. A
  client's category can have had several keys (a fresh one after an erasure, while a
  conversation is open), so every read joins each body's own key: the erased ones find none.
- `people` is the read model of `identity.events`: who is a client, a therapist or compliance,
  and who closed their account.
- `idempotent_posts` remembers each `Idempotency-Key` a sender used and the message it made.
- `disclosures` holds each disclosure, its bundle sealed under a one-time key that only the
  download token carries (the service keeps its SHA-256), until the bundle is downloaded.
- `consent_view` (the toolkit's) is what disclosures check.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from confide_events.vocabulary import MessagingCategory
from confide_toolkit.clock import Clock
from confide_toolkit.database import NAMING_CONVENTION
from confide_toolkit.event_store import EventStore, RecordedEvent
from confide_toolkit.keyring import Erased, KeyOpener, Keyring, WrappedDataKey, join_data_keys
from sqlalchemy import (
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    Select,
    String,
    Table,
    Text,
    Uuid,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from confide_messaging.domain import (
    CONVERSATION_EVENTS,
    MESSAGES,
    SESSION_NOTES,
    Conversation,
    ConversationClosedForMessages,
    ConversationOpened,
    ConversationSummary,
    Message,
    MessagePosted,
    NoteRecorded,
    SessionNote,
    sealed_bytes,
)

metadata = MetaData(naming_convention=NAMING_CONVENTION)

people = Table(
    "people",
    metadata,
    Column("subject_id", Uuid, primary_key=True),
    # Null only while an AccountClosed arrived before the registration it follows.
    Column("role", String(16), nullable=True),
    Column("registered_at", DateTime(timezone=True), nullable=True),
    Column("closed_at", DateTime(timezone=True), nullable=True),
)
"""Who is who, from identity's events: role and whether the account closed."""

conversations = Table(
    "conversations",
    metadata,
    Column("conversation_id", Uuid, primary_key=True),
    Column("client_id", Uuid, nullable=False, index=True),
    Column("therapist_id", Uuid, nullable=False, index=True),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("closed_at", DateTime(timezone=True), nullable=True),
    Column("message_count", Integer, nullable=False),
    Column("note_count", Integer, nullable=False),
    Column("last_message_at", DateTime(timezone=True), nullable=True),
)
"""Projection of the conversations: participants, times and counts."""

messages = Table(
    "messages",
    metadata,
    Column("message_id", Uuid, primary_key=True),
    Column("conversation_id", Uuid, nullable=False),
    Column("client_id", Uuid, nullable=False),
    Column("sender_id", Uuid, nullable=False),
    Column("sender_role", String(16), nullable=False),
    Column("body", LargeBinary, nullable=False),
    Column("sent_at", DateTime(timezone=True), nullable=False),
    # A conversation's page of messages, newest first.
    Index("ix_messages_conversation_message", "conversation_id", "message_id"),
    Index("ix_messages_client_id", "client_id"),
)
"""Projection of the messages, each body sealed under its client's `messaging.messages` key."""

session_notes = Table(
    "session_notes",
    metadata,
    Column("note_id", Uuid, primary_key=True),
    Column("conversation_id", Uuid, nullable=False),
    Column("client_id", Uuid, nullable=False),
    Column("therapist_id", Uuid, nullable=False),
    Column("body", LargeBinary, nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False),
    Index("ix_session_notes_client_note", "client_id", "note_id"),
)
"""Projection of the notes, each sealed under its client's `messaging.session_notes` key."""

idempotent_posts = Table(
    "idempotent_posts",
    metadata,
    Column("sender_id", Uuid, nullable=False),
    Column("idempotency_key", String(255), nullable=False),
    Column("conversation_id", Uuid, nullable=False),
    Column("message_id", Uuid, nullable=False),
    Column("sent_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("sender_id", "idempotency_key"),
)
"""The first answer to each (sender, Idempotency-Key): a retried post answers it again."""

disclosures = Table(
    "disclosures",
    metadata,
    Column("disclosure_id", Uuid, primary_key=True),
    Column("subject_id", Uuid, nullable=False, index=True),
    Column("recipient_id", Uuid, nullable=False),
    Column("consent_id", Uuid, nullable=False),
    Column("data_categories", ARRAY(Text), nullable=False),
    Column("disclosed_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("token_sha256", LargeBinary, nullable=False, unique=True),
    # Null once downloaded: the bundle can be fetched once.
    Column("sealed_bundle", LargeBinary, nullable=True),
    Column("downloaded_at", DateTime(timezone=True), nullable=True),
)
"""Each disclosure, its consent, and its one-time bundle (sealed; the key is in the token)."""


CONVERSATION_SNAPSHOT_SCHEMA: Final = 1
"""The shape of `Conversation.snapshot_state`; a new shape needs a new number."""
SNAPSHOT_EVERY: Final = 50
"""Events a load may replay on top of the newest snapshot before a new one is saved: every
message is an event, so a long conversation still loads in two short queries."""


# --- people ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Person:
    subject_id: uuid.UUID
    role: str | None
    closed_at: datetime | None

    def is_open(self, role: str) -> bool:
        """Whether this is an open account of `role`."""
        return self.role == role and self.closed_at is None


async def find_person(conn: AsyncConnection, subject_id: uuid.UUID) -> Person | None:
    row = (await conn.execute(select(people).where(people.c.subject_id == subject_id))).first()
    return None if row is None else Person(row.subject_id, row.role, row.closed_at)


async def record_registered(
    conn: AsyncConnection, subject_id: uuid.UUID, role: str, registered_at: datetime
) -> None:
    """Add a registered person (idempotent; keeps a closure already recorded)."""
    statement = pg_insert(people).values(
        subject_id=subject_id, role=role, registered_at=registered_at
    )
    await conn.execute(
        statement.on_conflict_do_update(
            index_elements=[people.c.subject_id],
            set_={
                "role": statement.excluded.role,
                "registered_at": statement.excluded.registered_at,
            },
        )
    )


async def record_closed(conn: AsyncConnection, subject_id: uuid.UUID, closed_at: datetime) -> None:
    """Mark a person's account closed (idempotent; the first closure stands)."""
    statement = pg_insert(people).values(subject_id=subject_id, closed_at=closed_at)
    await conn.execute(
        statement.on_conflict_do_update(
            index_elements=[people.c.subject_id],
            set_={"closed_at": func.coalesce(people.c.closed_at, closed_at)},
        )
    )


# --- conversations ---------------------------------------------------------------------------


class Conversations:
    """Loads and saves conversations through the event store (projections included)."""

    def __init__(self, clock: Clock) -> None:
        self.events = EventStore(CONVERSATION_EVENTS, clock, projections=[project_conversation])

    async def load_for_change(
        self, conn: AsyncConnection, conversation_id: uuid.UUID
    ) -> Conversation:
        """The conversation, locked until the transaction ends: posts to one conversation
        queue up instead of racing (optimistic concurrency still guards the append)."""
        return await self.load(conn, conversation_id, for_change=True)

    async def load(
        self, conn: AsyncConnection, conversation_id: uuid.UUID, *, for_change: bool = False
    ) -> Conversation:
        """The conversation as its stream stands: its snapshot and the events after it (an
        unknown id loads as a conversation that does not exist)."""
        stream = await self.events.load_stream(
            conn,
            conversation_id,
            snapshot_schema=CONVERSATION_SNAPSHOT_SCHEMA,
            for_change=for_change,
        )
        return Conversation.replay(
            conversation_id,
            (r.event for r in stream.events),
            stream.version,
            snapshot=(stream.snapshot.version, stream.snapshot.state) if stream.snapshot else None,
        )

    async def save(self, conn: AsyncConnection, conversation: Conversation) -> list[RecordedEvent]:
        """Append the pending events (and a new snapshot when loads have grown long); raises
        `ConcurrencyConflict` if the stream moved on."""
        return await self.events.save(
            conn,
            conversation.conversation_id,
            conversation,
            snapshot_schema=CONVERSATION_SNAPSHOT_SCHEMA,
            snapshot_every=SNAPSHOT_EVERY,
        )


async def project_conversation(conn: AsyncConnection, record: RecordedEvent) -> None:
    """Keep `conversations`, `messages` and `session_notes` in step with one event (in the
    transaction of the append)."""
    event = record.event
    conversation_id = record.stream_id
    this_conversation = conversations.c.conversation_id == conversation_id
    if isinstance(event, ConversationOpened):
        await conn.execute(
            insert(conversations).values(
                conversation_id=conversation_id,
                client_id=event.client_id,
                therapist_id=event.therapist_id,
                started_at=event.started_at,
                message_count=0,
                note_count=0,
            )
        )
    elif isinstance(event, MessagePosted):
        # The client (whose key sealed the body) comes from the conversation's row.
        await conn.execute(
            insert(messages).from_select(
                [
                    "message_id",
                    "conversation_id",
                    "client_id",
                    "sender_id",
                    "sender_role",
                    "body",
                    "sent_at",
                ],
                select(
                    literal(event.message_id, Uuid),
                    literal(conversation_id, Uuid),
                    conversations.c.client_id,
                    literal(event.sender_id, Uuid),
                    literal(event.sender_role, String),
                    literal(sealed_bytes(event.sealed_body), LargeBinary),
                    literal(event.sent_at, DateTime(timezone=True)),
                ).where(this_conversation),
            )
        )
        await conn.execute(
            update(conversations)
            .where(this_conversation)
            .values(message_count=conversations.c.message_count + 1, last_message_at=event.sent_at)
        )
    elif isinstance(event, NoteRecorded):
        await conn.execute(
            insert(session_notes).from_select(
                ["note_id", "conversation_id", "client_id", "therapist_id", "body", "recorded_at"],
                select(
                    literal(event.note_id, Uuid),
                    literal(conversation_id, Uuid),
                    conversations.c.client_id,
                    conversations.c.therapist_id,
                    literal(sealed_bytes(event.sealed_body), LargeBinary),
                    literal(event.recorded_at, DateTime(timezone=True)),
                ).where(this_conversation),
            )
        )
        await conn.execute(
            update(conversations)
            .where(this_conversation)
            .values(note_count=conversations.c.note_count + 1)
        )
    elif isinstance(event, ConversationClosedForMessages):
        await conn.execute(
            update(conversations).where(this_conversation).values(closed_at=event.closed_at)
        )


def _summary(row: Any) -> ConversationSummary:
    return ConversationSummary(
        conversation_id=row.conversation_id,
        client_id=row.client_id,
        therapist_id=row.therapist_id,
        started_at=row.started_at,
        closed_at=row.closed_at,
        message_count=row.message_count,
        note_count=row.note_count,
        last_message_at=row.last_message_at,
    )


async def list_conversations(
    conn: AsyncConnection,
    *,
    participant_id: uuid.UUID | None,
    limit: int,
    after: uuid.UUID | None = None,
) -> list[ConversationSummary]:
    """Conversations newest first (ids are UUIDv7), after the cursor `after`: those
    `participant_id` takes part in, or every one when None (compliance's view)."""
    statement = select(conversations)
    if participant_id is not None:
        statement = statement.where(
            or_(
                conversations.c.client_id == participant_id,
                conversations.c.therapist_id == participant_id,
            )
        )
    if after is not None:
        statement = statement.where(conversations.c.conversation_id < after)
    rows = await conn.execute(
        statement.order_by(conversations.c.conversation_id.desc()).limit(limit)
    )
    return [_summary(row) for row in rows]


async def open_conversations_of(conn: AsyncConnection, person_id: uuid.UUID) -> list[uuid.UUID]:
    """The conversations `person_id` takes part in that still take messages."""
    rows = await conn.execute(
        select(conversations.c.conversation_id).where(
            or_(conversations.c.client_id == person_id, conversations.c.therapist_id == person_id),
            conversations.c.closed_at.is_(None),
        )
    )
    return [row.conversation_id for row in rows]


async def latest_conversation_between(
    conn: AsyncConnection, client_id: uuid.UUID, therapist_id: uuid.UUID
) -> uuid.UUID | None:
    """The newest conversation of this client with this therapist, if any."""
    found: uuid.UUID | None = await conn.scalar(
        select(conversations.c.conversation_id)
        .where(
            conversations.c.client_id == client_id,
            conversations.c.therapist_id == therapist_id,
        )
        .order_by(conversations.c.conversation_id.desc())
        .limit(1)
    )
    return found


# --- reading sealed bodies -------------------------------------------------------------------


def _open_rows(
    keyring: Keyring, rows: Sequence[Any], category: str, record_id: str
) -> list[tuple[Any, str | None]]:
    """Each row with its body opened: one `KeyOpener` per key of the query (rows carry the key
    columns of `_join_body_keys`), and None for a body whose key was shredded."""
    opened: list[tuple[Any, str | None]] = []
    opener: KeyOpener | None = None
    for row in rows:
        if opener is None or opener.key_id != row.data_key_id or opener.subject_id != row.client_id:
            opener = keyring.opener(WrappedDataKey.from_row(row), row.client_id, category)
        plaintext = opener.open(str(row._mapping[record_id]), bytes(row.body))
        opened.append((row, None if isinstance(plaintext, Erased) else plaintext.decode()))
    return opened


def _join_body_keys(
    statement: Select[Any], table: Table, category: MessagingCategory
) -> Select[Any]:
    """`statement` over `table` with the key that sealed each row's body, if it is live (the
    bodies of an erased key beside newer ones under a fresh key read as erased)."""
    return join_data_keys(statement, table.c.client_id, category, ciphertext_column=table.c.body)


def _messages_query(statement: Select[Any]) -> Select[Any]:
    return _join_body_keys(statement, messages, MESSAGES)


async def list_messages(
    conn: AsyncConnection,
    keyring: Keyring,
    conversation_id: uuid.UUID,
    *,
    limit: int,
    before: uuid.UUID | None = None,
) -> list[Message]:
    """A conversation's messages, newest first (ids are UUIDv7), older than the cursor
    `before`: a page stays the same while new messages arrive, since they sort before it."""
    statement = select(messages).where(messages.c.conversation_id == conversation_id)
    if before is not None:
        statement = statement.where(messages.c.message_id < before)
    rows = (
        await conn.execute(
            _messages_query(statement.order_by(messages.c.message_id.desc()).limit(limit))
        )
    ).all()
    return [_message(row, body) for row, body in _open_rows(keyring, rows, MESSAGES, "message_id")]


async def messages_of_client(
    conn: AsyncConnection, keyring: Keyring, client_id: uuid.UUID
) -> list[Message]:
    """Every message of the client's conversations, oldest first (for a disclosure)."""
    rows = (
        await conn.execute(
            _messages_query(
                select(messages)
                .where(messages.c.client_id == client_id)
                .order_by(messages.c.message_id)
            )
        )
    ).all()
    return [_message(row, body) for row, body in _open_rows(keyring, rows, MESSAGES, "message_id")]


def _message(row: Any, body: str | None) -> Message:
    return Message(
        message_id=row.message_id,
        conversation_id=row.conversation_id,
        sender_id=row.sender_id,
        sender_role=row.sender_role,
        body=body,
        sent_at=row.sent_at,
    )


async def list_notes(
    conn: AsyncConnection,
    keyring: Keyring,
    client_id: uuid.UUID,
    *,
    therapist_id: uuid.UUID | None,
    limit: int | None = None,
    before: uuid.UUID | None = None,
) -> list[SessionNote]:
    """A client's session notes, newest first, older than the cursor `before`: those
    `therapist_id` recorded, or all of them when None (a disclosure)."""
    statement = select(session_notes).where(session_notes.c.client_id == client_id)
    if therapist_id is not None:
        statement = statement.where(session_notes.c.therapist_id == therapist_id)
    if before is not None:
        statement = statement.where(session_notes.c.note_id < before)
    statement = statement.order_by(session_notes.c.note_id.desc())
    if limit is not None:
        statement = statement.limit(limit)
    rows = (await conn.execute(_join_body_keys(statement, session_notes, SESSION_NOTES))).all()
    return [
        SessionNote(
            note_id=row.note_id,
            conversation_id=row.conversation_id,
            client_id=row.client_id,
            therapist_id=row.therapist_id,
            body=body,
            recorded_at=row.recorded_at,
        )
        for row, body in _open_rows(keyring, rows, SESSION_NOTES, "note_id")
    ]


# --- idempotent posts ------------------------------------------------------------------------


@dataclass(frozen=True)
class EarlierPost:
    conversation_id: uuid.UUID
    message_id: uuid.UUID
    sent_at: datetime


async def find_earlier_post(
    conn: AsyncConnection, sender_id: uuid.UUID, idempotency_key: str
) -> EarlierPost | None:
    row = (
        await conn.execute(
            select(idempotent_posts).where(
                idempotent_posts.c.sender_id == sender_id,
                idempotent_posts.c.idempotency_key == idempotency_key,
            )
        )
    ).first()
    return None if row is None else EarlierPost(row.conversation_id, row.message_id, row.sent_at)


async def remember_post(
    conn: AsyncConnection, sender_id: uuid.UUID, idempotency_key: str, post: EarlierPost
) -> bool:
    """Remember the post made with this key; False when another transaction took the key
    first (posts to one conversation queue on its lock, so only a post to another
    conversation can)."""
    remembered = await conn.scalar(
        pg_insert(idempotent_posts)
        .values(
            sender_id=sender_id,
            idempotency_key=idempotency_key,
            conversation_id=post.conversation_id,
            message_id=post.message_id,
            sent_at=post.sent_at,
        )
        .on_conflict_do_nothing()
        .returning(idempotent_posts.c.message_id)
    )
    return remembered is not None


# --- disclosures -----------------------------------------------------------------------------


@dataclass(frozen=True)
class DisclosureRecord:
    disclosure_id: uuid.UUID
    subject_id: uuid.UUID
    recipient_id: uuid.UUID
    consent_id: uuid.UUID
    data_categories: tuple[str, ...]
    disclosed_at: datetime
    expires_at: datetime


async def add_disclosure(
    conn: AsyncConnection, record: DisclosureRecord, token_sha256: bytes, sealed_bundle: bytes
) -> None:
    await conn.execute(
        insert(disclosures).values(
            disclosure_id=record.disclosure_id,
            subject_id=record.subject_id,
            recipient_id=record.recipient_id,
            consent_id=record.consent_id,
            data_categories=list(record.data_categories),
            disclosed_at=record.disclosed_at,
            expires_at=record.expires_at,
            token_sha256=token_sha256,
            sealed_bundle=sealed_bundle,
        )
    )


async def take_bundle(
    conn: AsyncConnection, disclosure_id: uuid.UUID, token_sha256: bytes, now: datetime
) -> bytes | None:
    """The sealed bundle of the disclosure if the token is its own, it was not downloaded yet
    and it has not expired; it is removed in the same statement (a second download finds
    nothing)."""
    taken = (
        select(disclosures.c.disclosure_id, disclosures.c.sealed_bundle)
        .where(
            disclosures.c.disclosure_id == disclosure_id,
            disclosures.c.token_sha256 == token_sha256,
            disclosures.c.sealed_bundle.is_not(None),
            disclosures.c.expires_at > now,
        )
        .with_for_update()
        .cte("taken")
    )
    sealed: bytes | None = await conn.scalar(
        update(disclosures)
        .where(disclosures.c.disclosure_id == taken.c.disclosure_id)
        .values(sealed_bundle=None, downloaded_at=now)
        .returning(taken.c.sealed_bundle)
    )
    return None if sealed is None else bytes(sealed)


async def find_conversation(
    conn: AsyncConnection, conversation_id: uuid.UUID
) -> ConversationSummary | None:
    """One conversation's metadata from the projection, or None."""
    row = (
        await conn.execute(
            select(conversations).where(conversations.c.conversation_id == conversation_id)
        )
    ).first()
    return None if row is None else _summary(row)
