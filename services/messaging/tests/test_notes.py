"""Session notes: written and read only by the client's therapist, every read audited with one
`RecordAccessed` per note, in the read's transaction (no audit, no read)."""

from __future__ import annotations

import asyncio
from typing import Any, NoReturn

import pytest
from confide_messaging.store import session_notes
from sqlalchemy import select

from .conftest import Cast, MessagingService, TopicTap

pytestmark = pytest.mark.integration

RECORD_ACCESSED = "confide.messaging.RecordAccessed"


async def _record(messaging: MessagingService, cast: Cast, body: str) -> str:
    response = await messaging.http.post(
        f"/v1/clients/{cast.client}/notes",
        json={"body": body},
        headers=messaging.as_(cast.therapist, "therapist"),
    )
    assert response.status_code == 201, response.text
    note_id: str = response.json()["note_id"]
    return note_id


async def test_every_note_read_leaves_exactly_one_record_accessed(
    messaging: MessagingService, cast: Cast, messaging_events: TopicTap
) -> None:
    conversation_id = await messaging.open_conversation(cast)
    notes = [await _record(messaging, cast, f"session {i}") for i in range(3)]
    path = f"/v1/clients/{cast.client}/notes"
    therapist = messaging.as_(cast.therapist, "therapist")

    first_page = await messaging.http.get(path, params={"limit": "2"}, headers=therapist)
    rest = await messaging.http.get(
        path,
        params={"limit": "2", "cursor": first_page.json()["next_cursor"]},
        headers=therapist,
    )
    again = await messaging.http.get(path, params={"limit": "1"}, headers=therapist)

    read = [n["note_id"] for page in (first_page, rest, again) for n in page.json()["items"]]
    assert read == [notes[2], notes[1], notes[0], notes[2]]
    assert [n["body"] for n in first_page.json()["items"]] == ["session 2", "session 1"]
    assert {n["conversation_id"] for n in first_page.json()["items"]} == {conversation_id}

    def mine(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [e for e in found if e["subject_id"] == str(cast.client)]

    await messaging_events.wait_for(RECORD_ACCESSED, lambda f: len(mine(f)) >= 4)
    await asyncio.sleep(0.5)  # a fifth one would have arrived by now
    await messaging_events.drain()
    audited = mine(messaging_events.events(RECORD_ACCESSED))
    assert sorted(e["record_id"] for e in audited) == sorted(read)
    assert {(e["accessor_id"], e["accessor_role"], e["category"]) for e in audited} == {
        (str(cast.therapist), "therapist", "messaging.session_notes")
    }


async def test_a_read_whose_audit_cannot_be_written_fails_and_shows_nothing(
    messaging: MessagingService, cast: Cast, monkeypatch: pytest.MonkeyPatch
) -> None:
    await messaging.open_conversation(cast)
    await _record(messaging, cast, "what the client said about their family")

    async def outbox_unavailable(*args: Any, **kwargs: Any) -> NoReturn:
        raise RuntimeError("the outbox is unavailable")

    monkeypatch.setattr(messaging.deps.outbox, "put_many", outbox_unavailable)
    response = await messaging.http.get(
        f"/v1/clients/{cast.client}/notes", headers=messaging.as_(cast.therapist, "therapist")
    )

    assert response.status_code == 500
    assert "family" not in response.text


async def test_notes_are_sealed_under_the_clients_session_notes_key(
    messaging: MessagingService, cast: Cast
) -> None:
    await messaging.open_conversation(cast)
    note_id = await _record(messaging, cast, "sealed words")

    async with messaging.deps.engine.connect() as conn:
        body = await conn.scalar(
            select(session_notes.c.body).where(session_notes.c.note_id == note_id)
        )
        opened = await messaging.deps.keyring.decrypt(
            conn, cast.client, "messaging.session_notes", note_id, bytes(body)
        )

    assert opened == b"sealed words"
