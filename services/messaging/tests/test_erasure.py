"""Erasure: a RetentionExpired for one of messaging's categories shreds the client's key for it
and is answered; what was written under the key then reads as erased, for everyone, with no
error; an expiry for a person messaging never saw is answered "nothing held"."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from confide_events.retention import RetentionExpired
from confide_events.topics import RETENTION_EVENTS

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
    [answer] = [
        e
        for e in await messaging_events.wait_for(
            SHREDDED, _answers(cast.client, "messaging.messages")
        )
        if e["subject_id"] == str(cast.client)
    ]

    assert answer["outcome"] == "shredded" and answer["key_id"] is not None
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
    # The keyring refuses a new key for an erased person's category (see the report): a clear
    # refusal, never a 500.
    refused = await messaging.http.post(
        f"/v1/conversations/{conversation_id}/messages",
        json={"body": "after"},
        headers=messaging.as_(cast.client),
    )
    assert refused.status_code == 409
    assert refused.json()["type"].endswith("/records-erased")

    await _expire(messaging, cast.client, "messaging.session_notes")
    await messaging_events.wait_for(SHREDDED, _answers(cast.client, "messaging.session_notes"))
    notes = await messaging.http.get(f"/v1/clients/{cast.client}/notes", headers=therapist)
    assert [(n["body"], n["erased"]) for n in notes.json()["items"]] == [(None, True)]


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
