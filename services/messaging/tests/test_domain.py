"""The conversation's decisions, without I/O: who takes part, what a closed conversation still
takes, what a replay and a snapshot restore."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from confide_messaging.domain import (
    ClientNotAvailable,
    Conversation,
    ConversationClosed,
    ConversationNotFound,
    NotHeldHere,
    disclosable,
)

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
CLIENT, THERAPIST, STRANGER = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()


def opened() -> Conversation:
    conversation = Conversation.open(uuid.uuid4(), CLIENT, THERAPIST, NOW)
    conversation.version, conversation.pending = 1, []
    return conversation


def test_only_the_two_participants_post_each_in_their_role() -> None:
    conversation = opened()

    by_client = conversation.post(uuid.uuid4(), CLIENT, b"sealed", NOW)
    by_therapist = conversation.post(uuid.uuid4(), THERAPIST, b"sealed", NOW)

    assert (by_client.sender_role, by_therapist.sender_role) == ("client", "therapist")
    with pytest.raises(ConversationNotFound):
        conversation.post(uuid.uuid4(), STRANGER, b"sealed", NOW)
    assert conversation.message_count == 2


def test_a_closed_conversation_takes_no_message_but_still_takes_its_therapists_notes() -> None:
    conversation = opened()

    assert conversation.close(NOW) is True
    assert conversation.close(NOW + timedelta(days=1)) is False  # the first closure stands

    with pytest.raises(ConversationClosed):
        conversation.post(uuid.uuid4(), CLIENT, b"sealed", NOW)
    conversation.record_note(uuid.uuid4(), THERAPIST, b"sealed", NOW)
    with pytest.raises(ConversationNotFound):
        conversation.record_note(uuid.uuid4(), CLIENT, b"sealed", NOW)
    assert (conversation.closed_at, conversation.note_count) == (NOW, 1)


def test_only_an_open_conversation_keeps_what_is_written_after_an_erasure() -> None:
    conversation = opened()
    assert conversation.writes_after_erasure

    conversation.close(NOW)

    assert not conversation.writes_after_erasure
    assert not Conversation.replay(uuid.uuid4(), [], 0).writes_after_erasure


def test_an_unknown_conversation_exists_for_nobody() -> None:
    nothing = Conversation.replay(uuid.uuid4(), [], 0)

    assert not nothing.exists
    with pytest.raises(ConversationNotFound):
        nothing.check_participant(CLIENT)
    assert nothing.close(NOW) is False


def test_replay_from_a_snapshot_decides_as_replay_from_the_first_event() -> None:
    conversation = Conversation.open(uuid.uuid4(), CLIENT, THERAPIST, NOW)
    conversation.post(uuid.uuid4(), CLIENT, b"sealed", NOW)
    conversation.close(NOW)
    events = list(conversation.pending)

    replayed = Conversation.replay(conversation.conversation_id, events, len(events))
    restored = Conversation.replay(
        conversation.conversation_id,
        [],
        len(events),
        snapshot=(len(events), replayed.snapshot_state()),
    )

    for again in (replayed, restored):
        assert (again.client_id, again.therapist_id, again.closed_at) == (CLIENT, THERAPIST, NOW)
        assert (again.message_count, again.note_count) == (1, 0)


def test_a_disclosure_names_only_categories_messaging_holds() -> None:
    assert disclosable(["messaging.session_notes", "messaging.messages"]) == (
        "messaging.messages",
        "messaging.session_notes",
    )
    with pytest.raises(NotHeldHere):
        disclosable(["messaging.messages", "billing.payment_methods"])


def test_refusals_say_ids_only() -> None:
    assert (
        str(ClientNotAvailable(CLIENT)) == f"The account of {CLIENT} is not an open client account."
    )
