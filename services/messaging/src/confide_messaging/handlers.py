"""The messaging service's commands, consumed events and reads, one function each.

Each command loads the conversation, lets the domain decide, and in one transaction appends
the conversation's new events (the projections follow) and puts the integration events in the
outbox; `run_command` runs it again when another writer got there first. Bodies are sealed by
the keyring under the client's key for their category, bound to the record id, before the
domain sees them; plaintext exists only in memory, for the request.

Reads answer from the projections. A read of session notes is audited: one `RecordAccessed`
per note, in the outbox, in the transaction of the read; if it cannot be written the read
fails and nothing is answered.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from confide_events import messaging as published
from confide_events.identity import AccountClosed, UserRegistered
from confide_events.retention import RetentionExpired
from confide_events.vocabulary import MessagingCategory
from confide_toolkit.clock import Clock
from confide_toolkit.commands import run_command
from confide_toolkit.consents import find_valid_consent
from confide_toolkit.ids import uuid7
from confide_toolkit.inbox import EventContext
from confide_toolkit.keyring import DataKeyShredded, Keyring
from confide_toolkit.outbox import Outbox
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from confide_messaging import store
from confide_messaging.bundles import open_bundle, seal_bundle, token_digest, token_key
from confide_messaging.domain import (
    MESSAGES,
    SESSION_NOTES,
    ClientNotAvailable,
    ClientNotFound,
    ConsentRequired,
    Conversation,
    ConversationNotFound,
    ConversationSummary,
    DownloadNotAvailable,
    IdempotencyKeyReused,
    Message,
    RecordsErased,
    SessionNote,
    TherapistNotAvailable,
    disclosable,
    messaging_category,
)
from confide_messaging.store import Conversations, DisclosureRecord, EarlierPost

SHARE_WITH_PROVIDER = "share_with_provider"
"""The purpose a consent must have for a disclosure to a provider."""


@dataclass(frozen=True)
class Dependencies:
    """What the handlers are wired with (built once, in app.py)."""

    engine: AsyncEngine
    conversations: Conversations
    keyring: Keyring
    outbox: Outbox
    clock: Clock
    disclosure_lifetime: timedelta


@dataclass(frozen=True)
class PostMessage:
    conversation_id: UUID
    sender_id: UUID
    body: str
    idempotency_key: str | None = None


@dataclass(frozen=True)
class Disclose:
    subject_id: UUID
    recipient_id: UUID
    data_categories: Sequence[str]


@dataclass(frozen=True)
class Disclosure:
    """A disclosure as its client sees it once: the token is never shown again."""

    record: DisclosureRecord
    download_token: str


# --- commands --------------------------------------------------------------------------------


async def open_conversation(
    deps: Dependencies, client_id: UUID, therapist_id: UUID
) -> ConversationSummary:
    """A client opens a conversation with a registered therapist; publishes
    `ConversationStarted`. Refuses a therapist who is unknown or closed their account."""

    async def work(conn: AsyncConnection) -> ConversationSummary:
        therapist = await store.find_person(conn, therapist_id)
        if therapist is None or not therapist.is_open("therapist"):
            raise TherapistNotAvailable(therapist_id)
        client = await store.find_person(conn, client_id)
        if client is None or not client.is_open("client"):
            raise ClientNotAvailable(client_id)
        now = deps.clock.now()
        conversation = Conversation.open(uuid7(), client_id, therapist_id, now)
        await deps.conversations.save(conn, conversation)
        await deps.outbox.put(
            conn,
            published.ConversationStarted(
                conversation_id=conversation.conversation_id,
                subject_id=client_id,
                therapist_id=therapist_id,
                started_at=now,
            ),
        )
        return ConversationSummary(
            conversation_id=conversation.conversation_id,
            client_id=client_id,
            therapist_id=therapist_id,
            started_at=now,
            closed_at=None,
            message_count=0,
            note_count=0,
            last_message_at=None,
        )

    return await run_command(deps.engine, work)


async def post_message(deps: Dependencies, command: PostMessage) -> EarlierPost:
    """A participant posts a message; publishes `MessageSent` (ids and time only).

    With an `idempotency_key`, a retried post answers the first post's result and stores
    nothing again; the same key for another conversation is refused."""

    async def work(conn: AsyncConnection) -> EarlierPost:
        conversation = await deps.conversations.load_for_change(conn, command.conversation_id)
        # Existence is checked before the key: a stranger learns nothing from a key.
        conversation.check_participant(command.sender_id)
        if command.idempotency_key is not None:
            earlier = await store.find_earlier_post(
                conn, command.sender_id, command.idempotency_key
            )
            if earlier is not None:
                if earlier.conversation_id != command.conversation_id:
                    raise IdempotencyKeyReused()
                return earlier
        conversation.check_open()
        assert conversation.client_id is not None
        message_id = uuid7()
        sealed = await _seal(deps, conn, conversation, MESSAGES, message_id, command.body)
        posted = conversation.post(message_id, command.sender_id, sealed, deps.clock.now())
        await deps.conversations.save(conn, conversation)
        await deps.outbox.put(
            conn,
            published.MessageSent(
                message_id=message_id,
                conversation_id=conversation.conversation_id,
                subject_id=conversation.client_id,
                sender_id=command.sender_id,
                sender_role=posted.sender_role,
                sent_at=posted.sent_at,
            ),
        )
        post = EarlierPost(conversation.conversation_id, message_id, posted.sent_at)
        if command.idempotency_key is not None and not await store.remember_post(
            conn, command.sender_id, command.idempotency_key, post
        ):
            raise IdempotencyKeyReused()  # rolls the message back: nothing stored twice
        return post

    return await run_command(deps.engine, work)


async def record_note(
    deps: Dependencies, therapist_id: UUID, client_id: UUID, body: str
) -> tuple[UUID, datetime]:
    """The client's therapist records a session note in their newest conversation with the
    client; publishes `SessionNoteRecorded`. Anyone else finds no such client."""

    async def work(conn: AsyncConnection) -> tuple[UUID, datetime]:
        conversation_id = await store.latest_conversation_between(conn, client_id, therapist_id)
        if conversation_id is None:
            raise ClientNotFound(client_id)
        conversation = await deps.conversations.load_for_change(conn, conversation_id)
        note_id = uuid7()
        sealed = await _seal(deps, conn, conversation, SESSION_NOTES, note_id, body)
        recorded = conversation.record_note(note_id, therapist_id, sealed, deps.clock.now())
        await deps.conversations.save(conn, conversation)
        await deps.outbox.put(
            conn,
            published.SessionNoteRecorded(
                note_id=note_id,
                conversation_id=conversation_id,
                subject_id=client_id,
                therapist_id=therapist_id,
                recorded_at=recorded.recorded_at,
            ),
        )
        return note_id, recorded.recorded_at

    return await run_command(deps.engine, work)


async def _seal(
    deps: Dependencies,
    conn: AsyncConnection,
    conversation: Conversation,
    category: str,
    record_id: UUID,
    body: str,
) -> bytes:
    """`body` sealed under the client's key for `category`, bound to `record_id`; after an
    erasure of the category, under a fresh key while the conversation is open (the erased
    records stay erased: they name the shredded key), refused once it is closed."""
    assert conversation.client_id is not None
    try:
        return await deps.keyring.encrypt(
            conn,
            conversation.client_id,
            category,
            str(record_id),
            body.encode(),
            new_key_after_shredding=conversation.writes_after_erasure,
        )
    except DataKeyShredded:
        raise RecordsErased(category) from None


async def disclose(deps: Dependencies, command: Disclose) -> Disclosure:
    """Disclose the client's records of `data_categories` to a recipient, only under a
    `share_with_provider` consent valid now that names the recipient and covers the
    categories (else `ConsentRequired`, and nothing leaves). The records are sealed in a
    bundle under a one-time key; publishes `RecordsDisclosed` citing the consent."""
    categories = disclosable(command.data_categories)
    async with deps.engine.begin() as conn:
        now = deps.clock.now()
        consent = await find_valid_consent(
            conn, command.subject_id, SHARE_WITH_PROVIDER, command.recipient_id, categories, now
        )
        if consent is None:
            raise ConsentRequired(command.recipient_id)
        record = DisclosureRecord(
            disclosure_id=uuid7(),
            subject_id=command.subject_id,
            recipient_id=command.recipient_id,
            consent_id=consent.consent_id,
            data_categories=categories,
            disclosed_at=now,
            expires_at=now + deps.disclosure_lifetime,
        )
        bundle = await _bundle(deps, conn, record)
        sealed = seal_bundle(record.disclosure_id, json.dumps(bundle).encode())
        await store.add_disclosure(conn, record, sealed.token_sha256, sealed.sealed)
        await deps.outbox.put(
            conn,
            published.RecordsDisclosed(
                disclosure_id=record.disclosure_id,
                subject_id=record.subject_id,
                recipient_id=record.recipient_id,
                consent_id=record.consent_id,
                legal_basis=None,
                data_categories=categories,
                disclosed_at=now,
            ),
        )
        return Disclosure(record, sealed.token)


async def _bundle(
    deps: Dependencies, conn: AsyncConnection, record: DisclosureRecord
) -> dict[str, Any]:
    bundle: dict[str, Any] = {
        "disclosure_id": str(record.disclosure_id),
        "subject_id": str(record.subject_id),
        "recipient_id": str(record.recipient_id),
        "consent_id": str(record.consent_id),
        "disclosed_at": record.disclosed_at.isoformat(),
    }
    if MESSAGES in record.data_categories:
        found = await store.messages_of_client(conn, deps.keyring, record.subject_id)
        bundle["messages"] = [_message_json(m) for m in found]
    if SESSION_NOTES in record.data_categories:
        notes = await store.list_notes(conn, deps.keyring, record.subject_id, therapist_id=None)
        # Reading notes to disclose them is a read like any other: audited, by the client.
        await _audit_note_reads(deps, conn, notes, record.subject_id, "client", record.disclosed_at)
        bundle["session_notes"] = [_note_json(n) for n in reversed(notes)]
    return bundle


def _message_json(message: Message) -> dict[str, Any]:
    return {
        "message_id": str(message.message_id),
        "conversation_id": str(message.conversation_id),
        "sender_id": str(message.sender_id),
        "sender_role": message.sender_role,
        "body": message.body,
        "erased": message.erased,
        "sent_at": message.sent_at.isoformat(),
    }


def _note_json(note: SessionNote) -> dict[str, Any]:
    return {
        "note_id": str(note.note_id),
        "conversation_id": str(note.conversation_id),
        "therapist_id": str(note.therapist_id),
        "body": note.body,
        "erased": note.erased,
        "recorded_at": note.recorded_at.isoformat(),
    }


async def download_bundle(deps: Dependencies, disclosure_id: UUID, token: str) -> bytes:
    """The disclosure's bundle (JSON), once: the token must be the disclosure's own, unused and
    unexpired; the sealed bundle is removed as it is handed out."""
    key = token_key(token)
    if key is None:
        raise DownloadNotAvailable(disclosure_id)
    async with deps.engine.begin() as conn:
        sealed = await store.take_bundle(conn, disclosure_id, token_digest(key), deps.clock.now())
    bundle = None if sealed is None else open_bundle(disclosure_id, key, sealed)
    if bundle is None:
        raise DownloadNotAvailable(disclosure_id)
    return bundle


# --- consumed events -------------------------------------------------------------------------


async def record_person(deps: Dependencies, event: UserRegistered, ctx: EventContext) -> None:
    """A person registered: remember their role (who may open a conversation with whom)."""
    await store.record_registered(ctx.conn, event.subject_id, event.role, event.registered_at)


async def close_conversations_on_account_closed(
    deps: Dependencies, event: AccountClosed, ctx: EventContext
) -> None:
    """A person closed their account: their conversations take no new messages from then on.
    A redelivered `AccountClosed` closes nothing more."""
    await store.record_closed(ctx.conn, event.subject_id, event.closed_at)
    for conversation_id in await store.open_conversations_of(ctx.conn, event.subject_id):
        conversation = await deps.conversations.load_for_change(ctx.conn, conversation_id)
        if conversation.close(event.closed_at):
            await deps.conversations.save(ctx.conn, conversation)


async def shred_on_retention_expired(
    deps: Dependencies, event: RetentionExpired, ctx: EventContext
) -> None:
    """RetentionExpired for messaging.messages or messaging.session_notes: destroy the
    client's key for that category (every message or note under it reads as erased from the
    commit on) and answer, shredded with the key's id or nothing held when messaging never had
    a key for them. Retention counts on an answer to every expiry of a category messaging owns;
    a redelivered or re-emitted expiry answers the same tombstone again. What is written
    afterwards in a conversation still open goes under a fresh key (see `_seal`); the consumer's
    exact positions keep an applied expiry from running twice, and an expiry re-emitted by
    retention (a new event, the same `due_at`) finds the shredding it caused and leaves that
    key alone."""
    category = messaging_category(event.category)
    if category is None:
        return
    # An expiry emitted again (its answer came late) is answered by the shredding it caused,
    # not by shredding the fresh key of what the conversation said since.
    tombstone = await deps.keyring.shred(
        ctx.conn, event.subject_id, category, unless_shredded_since=event.due_at
    )
    await ctx.emit(
        published.SubjectDataShredded(
            subject_id=event.subject_id,
            category=category,
            outcome="nothing_held" if tombstone is None else "shredded",
            key_id=None if tombstone is None else tombstone.key_id,
            answered_at=deps.clock.now() if tombstone is None else tombstone.shredded_at,
            erasure_case_id=event.erasure_case_id,
        )
    )


# --- reads -----------------------------------------------------------------------------------


async def list_conversations(
    deps: Dependencies, participant_id: UUID | None, *, limit: int, after: UUID | None
) -> list[ConversationSummary]:
    """Conversations newest first: those `participant_id` takes part in, or all (None)."""
    async with deps.engine.connect() as conn:
        return await store.list_conversations(
            conn, participant_id=participant_id, limit=limit, after=after
        )


async def list_messages(
    deps: Dependencies,
    reader_id: UUID,
    conversation_id: UUID,
    *,
    limit: int,
    before: UUID | None,
) -> list[Message]:
    """A page of the conversation's messages, newest first, for one of its two participants;
    anyone else finds no such conversation. A shredded key's messages read as erased."""
    async with deps.engine.connect() as conn:
        conversation = await store.find_conversation(conn, conversation_id)
        if conversation is None or reader_id not in (
            conversation.client_id,
            conversation.therapist_id,
        ):
            raise ConversationNotFound(conversation_id)
        return await store.list_messages(
            conn, deps.keyring, conversation_id, limit=limit, before=before
        )


async def read_notes(
    deps: Dependencies,
    therapist_id: UUID,
    client_id: UUID,
    *,
    limit: int,
    before: UUID | None,
) -> list[SessionNote]:
    """A page of at most `limit` notes the therapist recorded about the client, newest first,
    and one more when a next page exists (it says so, and is neither shown nor audited); each
    note read writes one `RecordAccessed` in the same transaction, or nothing is read."""
    async with deps.engine.begin() as conn:
        if await store.latest_conversation_between(conn, client_id, therapist_id) is None:
            raise ClientNotFound(client_id)
        notes = await store.list_notes(
            conn,
            deps.keyring,
            client_id,
            therapist_id=therapist_id,
            limit=limit + 1,
            before=before,
        )
        await _audit_note_reads(
            deps, conn, notes[:limit], therapist_id, "therapist", deps.clock.now()
        )
        return notes


async def _audit_note_reads(
    deps: Dependencies,
    conn: AsyncConnection,
    notes: Sequence[SessionNote],
    accessor_id: UUID,
    accessor_role: published.ParticipantRole,
    at: datetime,
) -> None:
    category: MessagingCategory = SESSION_NOTES
    await deps.outbox.put_many(
        conn,
        [
            published.RecordAccessed(
                subject_id=note.client_id,
                accessor_id=accessor_id,
                accessor_role=accessor_role,
                category=category,
                record_id=note.note_id,
                accessed_at=at,
            )
            for note in notes
        ],
    )
