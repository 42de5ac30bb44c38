"""The consent read model every consuming service shares, against the real broker and database:
grants and revocations arrive through Kafka and an idempotent consumer."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from confide_events import CLOUDEVENTS_JSON, CONTENT_TYPE_HEADER, encode_envelope, to_envelope
from confide_events.base import IntegrationEvent
from confide_events.consent import ConsentGranted, ConsentRevoked
from confide_testing import TopicFactory
from confide_toolkit.clock import SystemClock
from confide_toolkit.consents import consent_handlers, find_consent, find_valid_consent
from confide_toolkit.ids import uuid7
from confide_toolkit.inbox import ConsumedRecord, InboxConsumer, Outcome
from confide_toolkit.outbox import Outbox
from confide_toolkit.relay import idempotent_producer
from sqlalchemy.ext.asyncio import AsyncEngine

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
CLINIC = uuid.uuid4()


def granted(subject_id: uuid.UUID, **overrides: object) -> ConsentGranted:
    fields: dict[str, object] = {
        "consent_id": uuid7(),
        "subject_id": subject_id,
        "purpose": "share_with_provider",
        "recipient_id": CLINIC,
        "data_categories": ("messaging.messages", "messaging.session_notes"),
        "policy_version": "2026-01",
        "policy_hash": "a" * 64,
        "method": "web_form",
        "granted_at": T0,
        **overrides,
    }
    return ConsentGranted(**fields)  # type: ignore[arg-type]


def revoked(grant: ConsentGranted, at: datetime) -> ConsentRevoked:
    return ConsentRevoked(
        consent_id=grant.consent_id,
        subject_id=grant.subject_id,
        revoked_at=at,
        reason="subject_withdrew",
    )


_offsets = itertools.count()


def record(event: IntegrationEvent) -> ConsumedRecord:
    """A record of the consent topic, each at the next offset (as the broker would place it)."""
    offset = next(_offsets)
    envelope = to_envelope(event, event_id=uuid7(), time=T0, correlation_id=str(uuid.uuid4()))
    return ConsumedRecord("consent.events", 0, offset, None, encode_envelope(envelope))


@pytest.fixture
async def dead_letters(kafka_bootstrap: str) -> AsyncIterator[AIOKafkaProducer]:
    producer = idempotent_producer(kafka_bootstrap)
    await producer.start()
    yield producer
    await producer.stop()


@pytest.fixture
def reader(toolkit_engine: AsyncEngine, dead_letters: AIOKafkaProducer) -> InboxConsumer:
    """A consuming service's consumer of consent events, keeping `consent_view`."""
    return InboxConsumer(
        "messaging",
        toolkit_engine,
        Outbox("messaging", SystemClock()),
        consent_handlers(),
        dead_letters,
    )


async def valid(
    engine: AsyncEngine,
    grant: ConsentGranted,
    at: datetime,
    categories: list[str] | None = None,
    recipient_id: uuid.UUID | None = CLINIC,
    purpose: str = "share_with_provider",
) -> bool:
    async with engine.connect() as conn:
        found = await find_valid_consent(
            conn,
            grant.subject_id,
            purpose,
            recipient_id,
            categories or ["messaging.session_notes"],
            at,
        )
    return found is not None and found.consent_id == grant.consent_id


async def test_revoked_consent_stops_next_disclosure(
    toolkit_engine: AsyncEngine,
    reader: InboxConsumer,
    kafka_bootstrap: str,
    new_topic: TopicFactory,
    dead_letters: AIOKafkaProducer,
) -> None:
    topic = await new_topic("consent")
    grant = granted(uuid.uuid4())
    revocation_time = T0 + timedelta(hours=2)
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()

    async def deliver(event: IntegrationEvent) -> None:
        envelope = to_envelope(event, event_id=uuid7(), time=T0, correlation_id=str(uuid.uuid4()))
        await dead_letters.send_and_wait(
            topic,
            value=encode_envelope(envelope),
            key=str(grant.subject_id).encode(),
            headers=[(CONTENT_TYPE_HEADER, CLOUDEVENTS_JSON.encode())],
        )
        message = await asyncio.wait_for(consumer.getone(), 30)
        assert await reader.consume(message) is Outcome.APPLIED

    try:
        await deliver(grant)
        assert await valid(toolkit_engine, grant, T0 + timedelta(hours=1))

        await deliver(revoked(grant, revocation_time))
    finally:
        await consumer.stop()

    assert not await valid(toolkit_engine, grant, revocation_time)
    assert not await valid(toolkit_engine, grant, datetime.now(UTC))
    # What was allowed before the revocation stays answerable.
    assert await valid(toolkit_engine, grant, revocation_time - timedelta(seconds=1))
    assert not await valid(toolkit_engine, grant, T0 - timedelta(seconds=1))


async def test_the_rule_in_sql_and_the_record_agree_at_the_edges_of_the_interval(
    toolkit_engine: AsyncEngine, reader: InboxConsumer
) -> None:
    grant = granted(uuid.uuid4())
    revoked_at = T0 + timedelta(hours=1)
    await reader.consume(record(grant))
    await reader.consume(record(revoked(grant, revoked_at)))
    async with toolkit_engine.connect() as conn:
        stored = await find_consent(conn, grant.consent_id)
    assert stored is not None

    tick = timedelta(microseconds=1)
    expected = {
        T0 - tick: False,
        T0: True,  # valid from the moment of the grant
        revoked_at - tick: True,
        revoked_at: False,  # and no longer at the moment of the revocation
        revoked_at + tick: False,
    }
    for at, answer in expected.items():
        assert stored.valid_at(at) is answer, at
        assert await valid(toolkit_engine, grant, at) is answer, at


async def test_redelivered_consent_events_have_no_second_effect(
    toolkit_engine: AsyncEngine, reader: InboxConsumer
) -> None:
    grant = granted(uuid.uuid4())
    granting = record(grant)
    first_revocation = record(revoked(grant, T0 + timedelta(hours=1)))
    assert await reader.consume(granting) is Outcome.APPLIED
    assert await reader.consume(first_revocation) is Outcome.APPLIED

    assert await reader.consume(first_revocation) is Outcome.DUPLICATE
    # A second revocation (another event) does not move the end of the consent.
    assert await reader.consume(record(revoked(grant, T0 + timedelta(days=9)))) is Outcome.APPLIED
    async with toolkit_engine.connect() as conn:
        stored = await find_consent(conn, grant.consent_id)
    assert stored is not None and stored.revoked_at == T0 + timedelta(hours=1)


async def test_revocation_arriving_before_its_grant_keeps_the_consent_ended(
    toolkit_engine: AsyncEngine, reader: InboxConsumer
) -> None:
    grant = granted(uuid.uuid4())
    await reader.consume(record(revoked(grant, T0 + timedelta(hours=1))))
    assert not await valid(toolkit_engine, grant, T0 + timedelta(minutes=1))

    await reader.consume(record(grant))  # e.g. replayed late from the dead-letter topic

    assert await valid(toolkit_engine, grant, T0 + timedelta(minutes=1))
    assert not await valid(toolkit_engine, grant, T0 + timedelta(hours=1))


async def test_consent_counts_only_for_its_recipient_purpose_and_categories(
    toolkit_engine: AsyncEngine, reader: InboxConsumer
) -> None:
    grant = granted(uuid.uuid4())
    research = granted(
        grant.subject_id,
        purpose="research",
        recipient_id=None,
        data_categories=("messaging.messages",),
    )
    await reader.consume(record(grant))
    await reader.consume(record(research))
    at = T0 + timedelta(minutes=1)

    assert await valid(toolkit_engine, grant, at, ["messaging.messages", "messaging.session_notes"])
    assert not await valid(toolkit_engine, grant, at, ["identity.profile"])
    assert not await valid(
        toolkit_engine, grant, at, ["messaging.session_notes", "identity.profile"]
    )
    assert not await valid(toolkit_engine, grant, at, recipient_id=uuid.uuid4())
    assert not await valid(toolkit_engine, grant, at, recipient_id=None)
    assert await valid(
        toolkit_engine, research, at, ["messaging.messages"], recipient_id=None, purpose="research"
    )
    async with toolkit_engine.connect() as conn:
        with pytest.raises(ValueError):
            await find_valid_consent(conn, grant.subject_id, "research", None, [], at)
