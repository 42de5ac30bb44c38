"""Reading the projections: conversations' metadata, and the sealed bodies of messages and
session notes opened with their client's keys (an erased key's bodies read as erased)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from confide_events.vocabulary import MessagingCategory
from confide_toolkit.keyring import Erased, KeyOpener, Keyring, WrappedDataKey, join_data_keys
from sqlalchemy import (
    Select,
    Table,
    or_,
    select,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from confide_messaging.domain import (
    MESSAGES,
    SESSION_NOTES,
    ConversationSummary,
    Message,
    SessionNote,
)
from confide_messaging.store.tables import (
    conversations,
    messages,
    session_notes,
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
