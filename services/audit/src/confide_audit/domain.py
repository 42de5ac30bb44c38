"""The audit trail's rules, with no I/O: how an entry is chained to the one before it, what a
broken chain looks like, whether a disclosure's consent was valid at that moment, and what an
erasure case is made of.

The trail keeps every record of every event topic as it was on the topic (its raw value, which
carries no personal data: ids, codes and times only) and chains each to the one before it:

    link = SHA-256(previous link || topic || 0x00 || partition (4 bytes) || offset (8 bytes)
                   || value)

so changing, removing or reordering any stored entry changes every link after it, and the
first link that does not match names the entry that was tampered with."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

GENESIS = bytes(32)
"""The link before a chain's first entry."""

QUERIES_TOPIC = "audit.queries"
"""The topic name the trail's own entries carry: each compliance query, recorded where it is
asked (audit publishes nothing on Kafka), chained in the queries chain."""

QUERIES_GENERATION = 0
"""The chain of the trail's own entries; the chains of the topics' records are generations
1, 2, ... (a replay builds the next one)."""

CONSENT_GRANTED = "confide.consent.ConsentGranted"
CONSENT_REVOKED = "confide.consent.ConsentRevoked"
RECORDS_DISCLOSED = "confide.messaging.RecordsDisclosed"
RECORD_ACCESSED = "confide.messaging.RecordAccessed"
ERASURE_REQUESTED = "confide.retention.ErasureRequested"
RETENTION_EXPIRED = "confide.retention.RetentionExpired"
ERASURE_COMPLETED = "confide.retention.ErasureCompleted"
SHREDDED_SUFFIX = ".SubjectDataShredded"
"""Every owner answers an expiry with its own `confide.<owner>.SubjectDataShredded`."""


class AuditError(Exception):
    """A refusal of the audit service."""


class SubjectNotFound(AuditError):
    """The trail holds nothing about this person."""

    def __init__(self, subject_id: UUID) -> None:
        super().__init__(f"The trail holds no event about subject {subject_id}.")
        self.subject_id = subject_id


def chain_link(previous: bytes, topic: str, partition: int, offset: int, value: bytes) -> bytes:
    """The link of an entry: SHA-256 over the previous link and the record's place and bytes."""
    digest = hashlib.sha256(previous)
    digest.update(topic.encode())
    digest.update(b"\x00")
    digest.update(partition.to_bytes(4, "big", signed=True))
    digest.update(offset.to_bytes(8, "big", signed=True))
    digest.update(value)
    return digest.digest()


@dataclass(frozen=True)
class StoredEntry:
    """An entry as the trail holds it, for verification."""

    generation: int
    seq: int
    topic: str
    partition: int
    offset: int
    value: bytes
    link: bytes


@dataclass(frozen=True)
class BrokenLink:
    """The first entry of a chain whose stored link does not follow from what is before it."""

    generation: int
    seq: int
    reason: str
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None

    def describe(self) -> str:
        place = f" ({self.topic}[{self.partition}]@{self.offset})" if self.topic is not None else ""
        return f"chain {self.generation}: entry {self.seq}{place}: {self.reason}"


@dataclass
class ChainWalk:
    """Walks one chain entry by entry (in `seq` order) and remembers the first break."""

    generation: int
    link: bytes = GENESIS
    next_seq: int = 1
    entries: int = 0
    broken: BrokenLink | None = None

    def step(self, entry: StoredEntry) -> None:
        if self.broken is not None:
            return
        if entry.seq != self.next_seq:
            # A missing seq is an entry deleted; a seq seen again out of turn, one moved.
            self.broken = BrokenLink(
                self.generation,
                self.next_seq,
                f"missing (the next stored entry is {entry.seq})",
            )
            return
        expected = chain_link(self.link, entry.topic, entry.partition, entry.offset, entry.value)
        if expected != entry.link:
            self.broken = BrokenLink(
                self.generation,
                entry.seq,
                "its link does not match its content and the link before it",
                entry.topic,
                entry.partition,
                entry.offset,
            )
            return
        self.link = entry.link
        self.next_seq += 1
        self.entries += 1

    def finish(self, head_seq: int, head_link: bytes) -> None:
        """Check the chain's recorded head: entries removed at the end leave it unmatched."""
        if self.broken is not None:
            return
        if self.next_seq - 1 != head_seq or self.link != head_link:
            self.broken = BrokenLink(
                self.generation,
                self.next_seq,
                f"missing (the chain's head says {head_seq} entries)",
            )


# --- what the trail's records say ------------------------------------------------------------


@dataclass(frozen=True)
class TrailEvent:
    """A decoded event of the trail, in a person's timeline and the answers."""

    seq: int
    topic: str
    partition: int
    offset: int
    event_id: str | None
    event_type: str | None
    occurred_at: datetime | None
    subject_id: UUID | None
    data: dict[str, Any]


@dataclass(frozen=True)
class ConsentHistory:
    """What the history says of one consent: when granted (for whom, which categories), when
    revoked."""

    consent_id: UUID
    granted_at: datetime | None = None
    recipient_id: UUID | None = None
    purpose: str | None = None
    data_categories: tuple[str, ...] = ()
    revoked_at: datetime | None = None


def consent_histories(events: Iterable[TrailEvent]) -> dict[UUID, ConsentHistory]:
    """Each consent's history from its `ConsentGranted` and `ConsentRevoked` events."""
    found: dict[UUID, ConsentHistory] = {}
    for event in events:
        if event.event_type not in (CONSENT_GRANTED, CONSENT_REVOKED):
            continue
        consent_id = UUID(event.data["consent_id"])
        known = found.get(consent_id, ConsentHistory(consent_id))
        if event.event_type == CONSENT_GRANTED:
            recipient = event.data.get("recipient_id")
            known = ConsentHistory(
                consent_id,
                granted_at=_time(event.data["granted_at"]),
                recipient_id=UUID(recipient) if recipient else None,
                purpose=event.data.get("purpose"),
                data_categories=tuple(event.data.get("data_categories", ())),
                revoked_at=known.revoked_at,
            )
        else:
            revoked_at = _time(event.data["revoked_at"])
            earliest = min(revoked_at, known.revoked_at) if known.revoked_at else revoked_at
            known = ConsentHistory(
                consent_id,
                known.granted_at,
                known.recipient_id,
                known.purpose,
                known.data_categories,
                earliest,
            )
        found[consent_id] = known
    return found


@dataclass(frozen=True)
class DisclosureCheck:
    """A disclosure, the consent it relied on, and whether that consent was valid then."""

    disclosure: TrailEvent
    consent: ConsentHistory | None
    valid: bool
    reason: str

    @property
    def flagged(self) -> bool:
        return not self.valid


def check_disclosure(
    disclosure: TrailEvent, consents: dict[UUID, ConsentHistory]
) -> DisclosureCheck:
    """Whether the consent a disclosure relied on was valid at its time, per the history:
    granted before, not revoked before, to that recipient (or any), covering the categories."""
    data = disclosure.data
    at = _time(data["disclosed_at"])
    consent_id = data.get("consent_id")
    if consent_id is None:
        if data.get("legal_basis"):
            return DisclosureCheck(disclosure, None, True, f"legal basis {data['legal_basis']}")
        return DisclosureCheck(disclosure, None, False, "no consent and no legal basis")
    consent = consents.get(UUID(consent_id))
    if consent is None or consent.granted_at is None:
        return DisclosureCheck(disclosure, consent, False, "consent never granted")
    if consent.granted_at > at:
        return DisclosureCheck(disclosure, consent, False, "consent granted after the disclosure")
    if consent.revoked_at is not None and consent.revoked_at <= at:
        return DisclosureCheck(disclosure, consent, False, "consent revoked before the disclosure")
    recipient = UUID(data["recipient_id"])
    if consent.recipient_id is not None and consent.recipient_id != recipient:
        return DisclosureCheck(disclosure, consent, False, "consent names another recipient")
    missing = set(data.get("data_categories", ())) - set(consent.data_categories)
    if missing:
        return DisclosureCheck(
            disclosure, consent, False, f"consent does not cover {', '.join(sorted(missing))}"
        )
    return DisclosureCheck(disclosure, consent, True, "consent valid at the disclosure")


@dataclass(frozen=True)
class Expiry:
    """One category of an erasure case expired at its owner, and the owner's answer."""

    category: str
    owner: str
    expired_at: datetime | None
    answer: str | None = None
    answered_at: datetime | None = None
    overdue: bool = False


@dataclass
class ErasureCase:
    """An erasure case as the history tells it."""

    erasure_case_id: UUID
    subject_id: UUID
    requested_at: datetime | None = None
    origin: str | None = None
    data_categories: tuple[str, ...] = ()
    expiries: list[Expiry] = field(default_factory=list)
    certificate_id: UUID | None = None
    completed_at: datetime | None = None
    outcomes: list[dict[str, Any]] = field(default_factory=list)

    @property
    def open(self) -> bool:
        return self.completed_at is None

    @property
    def unacknowledged(self) -> list[Expiry]:
        return [expiry for expiry in self.expiries if expiry.overdue]


def erasure_cases(
    events: Sequence[TrailEvent], now: datetime, acknowledgement_timeout: timedelta
) -> list[ErasureCase]:
    """The erasure cases among `events` (in trail order): each request, every expiry it caused
    with the owner's `SubjectDataShredded` answer, and the certificate once completed. An
    expiry without an answer after `acknowledgement_timeout` is overdue."""
    cases: dict[UUID, ErasureCase] = {}
    answers: dict[tuple[UUID, str], TrailEvent] = {}
    for event in events:
        if event.event_type and event.event_type.endswith(SHREDDED_SUFFIX):
            answers.setdefault((UUID(event.data["subject_id"]), event.data["category"]), event)

    def case_of(event: TrailEvent) -> ErasureCase:
        case_id = UUID(event.data["erasure_case_id"])
        return cases.setdefault(case_id, ErasureCase(case_id, UUID(event.data["subject_id"])))

    for event in events:
        if event.event_type == ERASURE_REQUESTED:
            case = case_of(event)
            case.requested_at = _time(event.data["requested_at"])
            case.origin = event.data.get("origin")
            case.data_categories = tuple(event.data.get("data_categories", ()))
        elif event.event_type == RETENTION_EXPIRED and event.data.get("erasure_case_id"):
            case = case_of(event)
            category = event.data["category"]
            answer = answers.get((case.subject_id, category))
            expired_at = event.occurred_at
            if answer is not None:
                expiry = Expiry(
                    category,
                    category.split(".")[0],
                    expired_at,
                    answer.data.get("outcome", "shredded"),
                    _time(answer.data.get("answered_at") or answer.data["shredded_at"]),
                )
            else:
                overdue = expired_at is not None and now - expired_at > acknowledgement_timeout
                expiry = Expiry(category, category.split(".")[0], expired_at, overdue=overdue)
            case.expiries.append(expiry)
        elif event.event_type == ERASURE_COMPLETED:
            case = case_of(event)
            case.certificate_id = UUID(event.data["certificate_id"])
            case.completed_at = _time(event.data["completed_at"])
            case.outcomes = list(event.data.get("outcomes", ()))
    return list(cases.values())


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))
