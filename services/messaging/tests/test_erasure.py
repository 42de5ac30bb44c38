"""Erasure: a RetentionExpired for one of messaging's categories shreds the client's key for it
and is answered; what was written under the key then reads as erased, for everyone, with no
error, while what is written next in a conversation still open goes under a fresh key (and a
closed conversation takes nothing new); an expiry for a person messaging never saw is answered
"nothing held"."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from confide_events.identity import AccountClosed
from confide_events.retention import RetentionExpired
from confide_events.topics import IDENTITY_EVENTS, RETENTION_EVENTS
from confide_messaging.store import messages
from confide_testing import eventually
from confide_toolkit.keyring import (
    ERASED,
    CiphertextContextMismatch,
    WrappedDataKey,
    data_keys,
)
from sqlalchemy import select

from .conftest import Cast, MessagingService, TopicTap

pytestmark = pytest.mark.integration

SHREDDED = "confide.messaging.SubjectDataShredded"


async def _expire(messaging: MessagingService, subject_id: uuid.UUID, category: str) -> None:
    await messaging.publish(
        RETENTION_EVENTS,
        RetentionExpired(
            subject_id=subject_id,
            category=category,  # type: ignore[arg-type]
            policy="messaging.default",
            due_at=datetime.now(UTC),
        ),
    )


def _answers(subject_id: uuid.UUID, category: str) -> Any:
    def answered(found: list[dict[str, Any]]) -> bool:
        return any(e["subject_id"] == str(subject_id) and e["category"] == category for e in found)

    return answered


async def _live_key(
    messaging: MessagingService, client: uuid.UUID, category: str
) -> WrappedDataKey | None:
    async with messaging.deps.engine.connect() as conn:
        row = (
            await conn.execute(
                select(data_keys.c.key_id, data_keys.c.kek_version, data_keys.c.wrapped_key).where(
                    data_keys.c.subject_id == client, data_keys.c.category == category
                )
            )
        ).first()
    return None if row is None else WrappedDataKey(row[0], row[1], bytes(row[2]))


async def _sealed_bodies(messaging: MessagingService, conversation_id: str) -> list[bytes]:
    """The stored bodies of a conversation's messages, oldest first."""
    async with messaging.deps.engine.connect() as conn:
        rows = await conn.execute(
            select(messages.c.body)
            .where(messages.c.conversation_id == uuid.UUID(conversation_id))
            .order_by(messages.c.message_id)
        )
        return [bytes(body) for (body,) in rows]


async def _bodies(messaging: MessagingService, path: str, reader: dict[str, str]) -> list[Any]:
    listed = await messaging.http.get(path, headers=reader)
    assert listed.status_code == 200, listed.text
    return [(item["body"], item["erased"]) for item in listed.json()["items"]]


async def test_shredded_messages_and_notes_read_as_erased_and_metadata_stays(
    messaging: MessagingService, cast: Cast, messaging_events: TopicTap
) -> None:
    conversation_id = await messaging.open_conversation(cast)
    await messaging.post(conversation_id, cast.client, "soon gone")
    therapist = messaging.as_(cast.therapist, "therapist")
    noted = await messaging.http.post(
        f"/v1/clients/{cast.client}/notes", json={"body": "kept longer"}, headers=therapist
    )
    assert noted.status_code == 201

    await _expire(messaging, cast.client, "messaging.messages")

    def shredded(category: str) -> Any:
        # Every messaging deployment on the broker answers (the dev stack's "nothing held", for
        # a client it never saw): this messaging's answer is the one that shredded.
        def answers(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return [
                e
                for e in found
                if e["subject_id"] == str(cast.client)
                and e["category"] == category
                and e["outcome"] == "shredded"
            ]

        return answers

    mine = shredded("messaging.messages")
    [answer] = mine(await messaging_events.wait_for(SHREDDED, lambda f: bool(mine(f))))
    assert answer["key_id"] is not None
    for reader in (messaging.as_(cast.client), therapist):
        listed = await messaging.http.get(
            f"/v1/conversations/{conversation_id}/messages", headers=reader
        )
        assert listed.status_code == 200
        assert [(m["body"], m["erased"]) for m in listed.json()["items"]] == [(None, True)]
    notes = await messaging.http.get(f"/v1/clients/{cast.client}/notes", headers=therapist)
    assert [(n["body"], n["erased"]) for n in notes.json()["items"]] == [("kept longer", False)]
    metadata = await messaging.http.get(
        "/v1/compliance/conversations",
        params={"participant_id": str(cast.client)},
        headers=messaging.as_(cast.compliance, "compliance"),
    )
    assert metadata.json()["items"][0]["message_count"] == 1

    await _expire(messaging, cast.client, "messaging.session_notes")
    notes_shredded = shredded("messaging.session_notes")
    await messaging_events.wait_for(SHREDDED, lambda f: bool(notes_shredded(f)))
    notes = await messaging.http.get(f"/v1/clients/{cast.client}/notes", headers=therapist)
    assert [(n["body"], n["erased"]) for n in notes.json()["items"]] == [(None, True)]


async def test_the_conversation_goes_on_under_a_fresh_key_after_an_erasure(
    messaging: MessagingService, cast: Cast, messaging_events: TopicTap
) -> None:
    conversation_id = await messaging.open_conversation(cast)
    await messaging.post(conversation_id, cast.client, "before the erasure")
    client, therapist = messaging.as_(cast.client), messaging.as_(cast.therapist, "therapist")
    notes_path = f"/v1/clients/{cast.client}/notes"
    noted = await messaging.http.post(notes_path, json={"body": "old note"}, headers=therapist)
    assert noted.status_code == 201
    old_key = await _live_key(messaging, cast.client, "messaging.messages")
    assert old_key is not None

    await _expire(messaging, cast.client, "messaging.messages")
    await _expire(messaging, cast.client, "messaging.session_notes")
    await messaging_events.wait_for(SHREDDED, _answers(cast.client, "messaging.session_notes"))
    await messaging.post(conversation_id, cast.client, "after the erasure")
    reply = await messaging.post(conversation_id, cast.therapist, "welcome back", "therapist")
    noted = await messaging.http.post(notes_path, json={"body": "new note"}, headers=therapist)
    assert noted.status_code == 201

    messages_path = f"/v1/conversations/{conversation_id}/messages"
    for reader in (client, therapist):
        assert await _bodies(messaging, messages_path, reader) == [
            ("welcome back", False),
            ("after the erasure", False),
            (None, True),
        ]
    assert await _bodies(messaging, notes_path, therapist) == [("new note", False), (None, True)]
    metadata = await messaging.http.get(
        "/v1/compliance/conversations",
        params={"participant_id": str(cast.client)},
        headers=messaging.as_(cast.compliance, "compliance"),
    )
    [summary] = metadata.json()["items"]
    assert (summary["message_count"], summary["note_count"]) == (3, 2)
    assert summary["last_message_at"] == reply["sent_at"]

    # The fresh key sealed only the new messages; neither key opens the other's, and the old
    # message still reads as erased when asked for alone.
    new_key = await _live_key(messaging, cast.client, "messaging.messages")
    assert new_key is not None and new_key.key_id != old_key.key_id
    before, after, _ = await _sealed_bodies(messaging, conversation_id)
    assert uuid.UUID(bytes=before[1:17]) == old_key.key_id
    assert uuid.UUID(bytes=after[1:17]) == new_key.key_id
    keyring = messaging.deps.keyring
    with pytest.raises(CiphertextContextMismatch):
        keyring.opener(new_key, cast.client, "messaging.messages").open("m", before)
    async with messaging.deps.engine.connect() as conn:
        items = (await messaging.http.get(messages_path, headers=client)).json()["items"]
        old_id, new_id = items[2]["message_id"], items[1]["message_id"]
        with pytest.raises(CiphertextContextMismatch):
            keyring.opener(old_key, cast.client, "messaging.messages").open(new_id, after)
        assert (
            await keyring.decrypt(conn, cast.client, "messaging.messages", old_id, before) is ERASED
        )
        assert (
            await keyring.decrypt(conn, cast.client, "messaging.messages", new_id, after)
            == b"after the erasure"
        )


async def test_a_closed_conversation_takes_no_new_note_after_an_erasure(
    messaging: MessagingService, cast: Cast, messaging_events: TopicTap
) -> None:
    conversation_id = await messaging.open_conversation(cast)
    therapist = messaging.as_(cast.therapist, "therapist")
    notes_path = f"/v1/clients/{cast.client}/notes"
    noted = await messaging.http.post(notes_path, json={"body": "old note"}, headers=therapist)
    assert noted.status_code == 201
    await messaging.publish(
        IDENTITY_EVENTS, AccountClosed(subject_id=cast.client, closed_at=datetime.now(UTC))
    )

    async def closed() -> bool:
        async with messaging.deps.engine.connect() as conn:
            conversation = await messaging.deps.conversations.load(conn, uuid.UUID(conversation_id))
        return conversation.closed_at is not None

    await eventually(closed)
    await _expire(messaging, cast.client, "messaging.session_notes")
    await messaging_events.wait_for(SHREDDED, _answers(cast.client, "messaging.session_notes"))

    refused = await messaging.http.post(notes_path, json={"body": "anew"}, headers=therapist)

    assert refused.status_code == 409
    assert refused.json()["type"].endswith("/records-erased")
    assert await _bodies(messaging, notes_path, therapist) == [(None, True)]
    assert await _live_key(messaging, cast.client, "messaging.session_notes") is None


async def test_an_expiry_for_a_person_messaging_never_saw_is_answered_nothing_held(
    messaging: MessagingService, messaging_events: TopicTap
) -> None:
    stranger = uuid.uuid4()

    # Not messaging's: no answer (handled first, the stranger's expiries share a partition).
    await _expire(messaging, stranger, "identity.profile")
    await _expire(messaging, stranger, "messaging.session_notes")

    found = await messaging_events.wait_for(SHREDDED, _answers(stranger, "messaging.session_notes"))
    mine = [e for e in found if e["subject_id"] == str(stranger)]
    assert [(e["category"], e["outcome"], e["key_id"]) for e in mine] == [
        ("messaging.session_notes", "nothing_held", None)
    ]


async def test_an_expiry_re_emitted_after_the_conversation_went_on_is_answered_again_harmlessly(
    messaging: MessagingService, cast: Cast, messaging_events: TopicTap
) -> None:
    conversation_id = await messaging.open_conversation(cast)
    await messaging.post(conversation_id, cast.client, "before the erasure")
    expiry = RetentionExpired(
        subject_id=cast.client,
        category="messaging.messages",
        policy="messaging.default",
        due_at=datetime.now(UTC),
        erasure_case_id=uuid.uuid4(),
    )

    def shredded_answers(count: int) -> Any:
        def enough(found: list[dict[str, Any]]) -> bool:
            return len(_mine(found)) >= count

        return enough

    def _mine(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
        # Every messaging deployment on the broker answers (the dev stack's "nothing held", for
        # a client it never saw): this messaging's answers are the ones that shredded.
        return [
            e
            for e in found
            if e["subject_id"] == str(cast.client)
            and e["category"] == "messaging.messages"
            and e["outcome"] == "shredded"
        ]

    await messaging.publish(RETENTION_EVENTS, expiry)
    [first] = _mine(await messaging_events.wait_for(SHREDDED, shredded_answers(1)))
    assert first["key_id"] is not None
    await messaging.post(conversation_id, cast.client, "after the erasure")
    fresh_key = await _live_key(messaging, cast.client, "messaging.messages")
    assert fresh_key is not None

    # Retention did not see the answer in time and emits the same expiry again (a new event):
    # it is answered again with the same key and time, and the messages written since under
    # the fresh key are not shredded with it.
    await messaging.publish(RETENTION_EVENTS, expiry)
    first_again, second = _mine(await messaging_events.wait_for(SHREDDED, shredded_answers(2)))
    assert first_again == first
    assert second == first
    assert await _live_key(messaging, cast.client, "messaging.messages") == fresh_key
    path = f"/v1/conversations/{conversation_id}/messages"
    for reader in (messaging.as_(cast.client), messaging.as_(cast.therapist, "therapist")):
        assert await _bodies(messaging, path, reader) == [
            ("after the erasure", False),
            (None, True),
        ]
