"""What a person writes stays theirs: a phrase planted in a message and in a session note is
never found in plaintext in any row of messaging's database, any record it publishes, or any
line it logs."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from .conftest import Cast, MessagingService, TopicTap

pytestmark = pytest.mark.integration

PHRASE = "my brother Zebulon hurt me in 2009"


async def test_a_planted_phrase_is_never_stored_published_or_logged_in_plaintext(
    messaging: MessagingService,
    cast: Cast,
    messaging_events: TopicTap,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    conversation_id = await messaging.open_conversation(cast)
    await messaging.post(conversation_id, cast.client, f"Today: {PHRASE}.")
    therapist = messaging.as_(cast.therapist, "therapist")
    noted = await messaging.http.post(
        f"/v1/clients/{cast.client}/notes",
        json={"body": f"Client said {PHRASE}"},
        headers=therapist,
    )
    assert noted.status_code == 201
    listed = await messaging.http.get(
        f"/v1/conversations/{conversation_id}/messages", headers=therapist
    )
    notes = await messaging.http.get(f"/v1/clients/{cast.client}/notes", headers=therapist)
    assert PHRASE in listed.text and PHRASE in notes.text  # the participants read it back
    await messaging_events.wait_for(
        "confide.messaging.RecordAccessed",
        lambda found: any(e["subject_id"] == str(cast.client) for e in found),
    )

    needles = {PHRASE.encode(), PHRASE.encode().hex().encode(), b"Zebulon"}
    async with messaging.deps.engine.connect() as conn:
        tables = (
            await conn.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'"))
        ).scalars()
        for table in list(tables):
            rows = (await conn.execute(text(f'SELECT t::text FROM "{table}" t'))).scalars()
            dumped = "\n".join(rows).encode()
            assert not any(n in dumped for n in needles), f"plaintext in table {table}"
    for record in messaging_events.records:
        assert b"Zebulon" not in (record.value or b"")
        assert all(b"Zebulon" not in value for _, value in record.headers)
    assert "Zebulon" not in caplog.text
    assert "Zebulon" not in capsys.readouterr().out
