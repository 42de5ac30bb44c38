"""The conversation streams: the repository over the toolkit's event store, and the projection
of their events into `conversations`, `messages` and `session_notes`."""

from __future__ import annotations

import uuid
from typing import Final

from confide_toolkit.clock import Clock
from confide_toolkit.event_store import EventStore, RecordedEvent
from sqlalchemy import (
    DateTime,
    LargeBinary,
    String,
    Uuid,
    bindparam,
    insert,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from confide_messaging.domain import (
    CONVERSATION_EVENTS,
    Conversation,
    ConversationClosedForMessages,
    ConversationOpened,
    MessagePosted,
    NoteRecorded,
    sealed_bytes,
)
from confide_messaging.store.tables import (
    conversations,
    messages,
    session_notes,
)

CONVERSATION_SNAPSHOT_SCHEMA: Final = 1
"""The shape of `Conversation.snapshot_state`; a new shape needs a new number."""
SNAPSHOT_EVERY: Final = 50
"""Events a load may replay on top of the newest snapshot before a new one is saved: every
message is an event, so a long conversation still loads in two short queries."""


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


# Built once, as consent's projection: a statement built per event cost the projection more
# CPU than running it. The conversation is `of_conversation`; the other parameters are named
# after the event's fields.
_THIS_CONVERSATION = conversations.c.conversation_id == bindparam("of_conversation", type_=Uuid)
_OPEN_CONVERSATION = insert(conversations).values(message_count=0, note_count=0)
# The client (whose key sealed the body) comes from the conversation's row.
_INSERT_MESSAGE = insert(messages).from_select(
    ["message_id", "conversation_id", "client_id", "sender_id", "sender_role", "body", "sent_at"],
    select(
        bindparam("message_id", type_=Uuid),
        conversations.c.conversation_id,
        conversations.c.client_id,
        bindparam("sender_id", type_=Uuid),
        bindparam("sender_role", type_=String),
        bindparam("body", type_=LargeBinary),
        bindparam("sent_at", type_=DateTime(timezone=True)),
    ).where(_THIS_CONVERSATION),
)
_COUNT_MESSAGE = (
    update(conversations)
    .where(_THIS_CONVERSATION)
    .values(
        message_count=conversations.c.message_count + 1,
        last_message_at=bindparam("sent_at", type_=DateTime(timezone=True)),
    )
)
_INSERT_NOTE = insert(session_notes).from_select(
    ["note_id", "conversation_id", "client_id", "therapist_id", "body", "recorded_at"],
    select(
        bindparam("note_id", type_=Uuid),
        conversations.c.conversation_id,
        conversations.c.client_id,
        conversations.c.therapist_id,
        bindparam("body", type_=LargeBinary),
        bindparam("recorded_at", type_=DateTime(timezone=True)),
    ).where(_THIS_CONVERSATION),
)
_COUNT_NOTE = (
    update(conversations)
    .where(_THIS_CONVERSATION)
    .values(note_count=conversations.c.note_count + 1)
)
# The SET column is the parameter's name.
_CLOSE_FOR_MESSAGES = update(conversations).where(_THIS_CONVERSATION)


async def project_conversation(conn: AsyncConnection, record: RecordedEvent) -> None:
    """Keep `conversations`, `messages` and `session_notes` in step with one event (in the
    transaction of the append)."""
    event = record.event
    this = {"of_conversation": record.stream_id}
    if isinstance(event, ConversationOpened):
        await conn.execute(
            _OPEN_CONVERSATION,
            {
                "conversation_id": record.stream_id,
                "client_id": event.client_id,
                "therapist_id": event.therapist_id,
                "started_at": event.started_at,
            },
        )
    elif isinstance(event, MessagePosted):
        await conn.execute(
            _INSERT_MESSAGE,
            {
                **this,
                "message_id": event.message_id,
                "sender_id": event.sender_id,
                "sender_role": event.sender_role,
                "body": sealed_bytes(event.sealed_body),
                "sent_at": event.sent_at,
            },
        )
        await conn.execute(_COUNT_MESSAGE, {**this, "sent_at": event.sent_at})
    elif isinstance(event, NoteRecorded):
        await conn.execute(
            _INSERT_NOTE,
            {
                **this,
                "note_id": event.note_id,
                "body": sealed_bytes(event.sealed_body),
                "recorded_at": event.recorded_at,
            },
        )
        await conn.execute(_COUNT_NOTE, this)
    elif isinstance(event, ConversationClosedForMessages):
        await conn.execute(_CLOSE_FOR_MESSAGES, {**this, "closed_at": event.closed_at})
