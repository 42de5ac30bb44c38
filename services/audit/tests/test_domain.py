"""The trail's rules without I/O: the chain's walk names the first entry edited, removed or
moved; a disclosure's consent is judged by the history at the disclosure's time."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from confide_audit.domain import (
    CONSENT_GRANTED,
    CONSENT_REVOKED,
    GENESIS,
    RECORDS_DISCLOSED,
    ChainWalk,
    StoredEntry,
    TrailEvent,
    chain_link,
    check_disclosure,
    consent_histories,
)

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def chain(count: int) -> list[StoredEntry]:
    entries, link = [], GENESIS
    for seq in range(1, count + 1):
        value = f"value {seq}".encode()
        link = chain_link(link, "t.events", 0, seq - 1, value)
        entries.append(StoredEntry(1, seq, "t.events", 0, seq - 1, value, link))
    return entries


def walk(entries: list[StoredEntry], head: StoredEntry) -> ChainWalk:
    walker = ChainWalk(1)
    for entry in entries:
        walker.step(entry)
    walker.finish(head.seq, head.link)
    return walker


def test_an_intact_chain_has_no_broken_link() -> None:
    entries = chain(5)
    assert walk(entries, entries[-1]).broken is None


def test_an_edited_value_breaks_its_own_link() -> None:
    entries = chain(5)
    entries[2] = dataclasses.replace(entries[2], value=b"changed")
    broken = walk(entries, entries[-1]).broken
    assert broken is not None
    assert (broken.seq, broken.offset) == (3, 2)


def test_a_removed_entry_is_named_missing() -> None:
    entries = chain(5)
    head = entries[-1]
    broken = walk(entries[:1] + entries[2:], head).broken
    assert broken is not None
    assert broken.seq == 2
    assert "missing" in broken.reason


def test_two_entries_swapped_are_found_at_the_first() -> None:
    entries = chain(5)
    swapped = [
        entries[0],
        dataclasses.replace(entries[3], seq=2),
        entries[2],
        dataclasses.replace(entries[1], seq=4),
        entries[4],
    ]
    broken = walk(swapped, entries[-1]).broken
    assert broken is not None
    assert broken.seq == 2


def event(event_type: str, minutes: int, **data: Any) -> TrailEvent:
    return TrailEvent(
        seq=minutes,
        topic="t",
        partition=0,
        offset=minutes,
        event_id=None,
        event_type=event_type,
        occurred_at=T0 + timedelta(minutes=minutes),
        subject_id=None,
        data=data,
    )


def test_a_disclosure_is_valid_only_between_grant_and_revocation_for_its_recipient() -> None:
    consent, recipient, subject = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    history = consent_histories(
        [
            event(
                CONSENT_GRANTED,
                1,
                consent_id=str(consent),
                recipient_id=str(recipient),
                data_categories=["messaging.session_notes"],
                granted_at=(T0 + timedelta(minutes=10)).isoformat(),
            ),
            event(
                CONSENT_REVOKED,
                2,
                consent_id=str(consent),
                revoked_at=(T0 + timedelta(minutes=20)).isoformat(),
            ),
        ]
    )

    def verdict(minutes: int, to: uuid.UUID = recipient) -> str:
        disclosure = event(
            RECORDS_DISCLOSED,
            minutes,
            subject_id=str(subject),
            recipient_id=str(to),
            consent_id=str(consent),
            data_categories=["messaging.session_notes"],
            disclosed_at=(T0 + timedelta(minutes=minutes)).isoformat(),
        )
        return check_disclosure(disclosure, history).reason

    assert verdict(5) == "consent granted after the disclosure"
    assert verdict(15) == "consent valid at the disclosure"
    assert verdict(15, uuid.uuid4()) == "consent names another recipient"
    assert verdict(20) == "consent revoked before the disclosure"
