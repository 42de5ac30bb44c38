"""The consent service's events against the real broker: another service's read model sees
grants and revocations; a closed account's consents are all withdrawn; redelivery is harmless."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime

import pytest
from aiokafka import AIOKafkaConsumer
from confide_consent.store import SNAPSHOT_EVERY
from confide_events import CLOUDEVENTS_JSON, CONTENT_TYPE_HEADER, encode_envelope, to_envelope
from confide_events.identity import AccountClosed
from confide_events.topics import CONSENT_EVENTS, IDENTITY_EVENTS
from confide_testing import eventually
from confide_toolkit.clock import SystemClock
from confide_toolkit.consents import consent_handlers, find_valid_consent
from confide_toolkit.database import create_engine, toolkit_metadata
from confide_toolkit.event_store import stored_events, stream_snapshots
from confide_toolkit.ids import uuid7
from confide_toolkit.inbox import ConsumedRecord, InboxConsumer, Outcome
from confide_toolkit.outbox import Outbox
from confide_toolkit.positions import consumer_positions
from confide_toolkit.relay import idempotent_producer
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from .conftest import ConsentService, Payloads

pytestmark = pytest.mark.integration


def _assigned(kafka: AIOKafkaConsumer) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return bool(kafka.assignment())

    return check


@contextlib.asynccontextmanager
async def consent_reader(database_url: str, kafka_bootstrap: str) -> AsyncIterator[AsyncEngine]:
    """Another service's read model of consents (the toolkit's), in its own database, fed from
    consent.events through an idempotent consumer, starting from the topic's current end."""
    engine = create_engine(database_url, pool_size=2)
    async with engine.begin() as conn:
        await conn.run_sync(toolkit_metadata.create_all)
    dead_letters = idempotent_producer(kafka_bootstrap)
    await dead_letters.start()
    consumer = InboxConsumer(
        "reader", engine, Outbox("messaging", SystemClock()), consent_handlers(), dead_letters
    )
    kafka = AIOKafkaConsumer(
        CONSENT_EVENTS,
        bootstrap_servers=kafka_bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="latest",
    )
    await kafka.start()
    await eventually(_assigned(kafka))
    for partition in kafka.assignment():
        await kafka.position(partition)  # resolve "latest" now, before the test produces

    async def feed() -> None:
        while True:
            batch = await kafka.getmany(timeout_ms=200)
            for records in batch.values():
                for record in records:
                    await consumer.consume(record)

    task = asyncio.create_task(feed())
    try:
        yield engine
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await kafka.stop()
        await dead_letters.stop()
        await engine.dispose()


async def publish_account_closed(kafka_bootstrap: str, subject_id: uuid.UUID) -> ConsumedRecord:
    """Publish AccountClosed as identity would; returns the record as the broker holds it."""
    now = datetime.now(UTC)
    envelope = to_envelope(
        AccountClosed(subject_id=subject_id, closed_at=now),
        event_id=uuid7(),
        time=now,
        correlation_id=str(uuid.uuid4()),
    )
    value = encode_envelope(envelope)
    producer = idempotent_producer(kafka_bootstrap)
    await producer.start()
    key, headers = str(subject_id).encode(), [(CONTENT_TYPE_HEADER, CLOUDEVENTS_JSON.encode())]
    try:
        placed = await producer.send_and_wait(
            IDENTITY_EVENTS, value=value, key=key, headers=headers
        )
    finally:
        await producer.stop()
    return ConsumedRecord(
        IDENTITY_EVENTS, placed.partition, placed.offset, key, value, tuple(headers)
    )
    return envelope.id, value


async def ledger_length(consent: ConsentService, subject_id: uuid.UUID) -> int:
    async with consent.service.engine.connect() as conn:
        count = await conn.scalar(
            select(func.count()).where(stored_events.c.stream_id == subject_id)
        )
    return int(count or 0)


async def test_revoked_consent_stops_next_disclosure_in_another_services_read_model(
    consent: ConsentService,
    payloads: type[Payloads],
    second_database_url: str,
    kafka_bootstrap: str,
) -> None:
    async with consent_reader(second_database_url, kafka_bootstrap) as reader:
        granted = await consent.grant(payloads.share_with_provider())
        granted_at = datetime.fromisoformat(granted["granted_at"])

        async def disclosure_allowed(at: datetime | None = None) -> bool:
            async with reader.connect() as conn:
                found = await find_valid_consent(
                    conn,
                    consent.client_id,
                    "share_with_provider",
                    payloads.northside_clinic,
                    ["messaging.session_notes"],
                    at or datetime.now(UTC),
                )
            return found is not None and str(found.consent_id) == granted["consent_id"]

        await eventually(disclosure_allowed)

        response = await consent.http.delete(
            f"/v1/consents/{granted['consent_id']}", headers=consent.as_client()
        )
        assert response.status_code == 204

        async def disclosure_refused() -> bool:
            return not await disclosure_allowed()

        await eventually(disclosure_refused)
        # The history stays: the consent was valid when it was granted.
        assert await disclosure_allowed(granted_at)


async def test_closed_account_has_every_consent_withdrawn_with_the_reason(
    consent: ConsentService, payloads: type[Payloads], kafka_bootstrap: str
) -> None:
    await consent.grant(payloads.share_with_provider())
    await consent.grant(payloads.research())

    await publish_account_closed(kafka_bootstrap, consent.client_id)

    async def all_withdrawn() -> bool:
        listed = await consent.http.get("/v1/consents", headers=consent.as_client())
        items = listed.json()["items"]
        return len(items) == 2 and all(c["revoke_reason"] == "account_closed" for c in items)

    await eventually(all_withdrawn)
    late = await consent.http.post(
        "/v1/consents", json=payloads.research(), headers=consent.as_client()
    )
    assert late.status_code == 409
    assert late.json()["type"].endswith("/account-is-closed")


async def test_a_long_ledger_is_snapshotted_and_still_withdraws_everything_on_closure(
    consent: ConsentService, payloads: type[Payloads], kafka_bootstrap: str
) -> None:
    granted = [(await consent.grant(payloads.research()))["consent_id"] for _ in range(12)]
    # 24 ledger events: loads now start from a snapshot, the earliest consents are in it.
    async with consent.service.engine.connect() as conn:
        snapshot_version = await conn.scalar(
            select(stream_snapshots.c.version).where(
                stream_snapshots.c.stream_id == consent.client_id
            )
        )
    assert snapshot_version is not None and snapshot_version >= SNAPSHOT_EVERY
    withdrawn = await consent.http.delete(f"/v1/consents/{granted[0]}", headers=consent.as_client())
    assert withdrawn.status_code == 204

    await publish_account_closed(kafka_bootstrap, consent.client_id)

    async def all_withdrawn_with_their_reason() -> bool:
        listed = await consent.http.get(
            "/v1/consents", params={"limit": 50}, headers=consent.as_client()
        )
        reasons = {c["consent_id"]: c["revoke_reason"] for c in listed.json()["items"]}
        return reasons == {
            consent_id: "subject_withdrew" if consent_id == granted[0] else "account_closed"
            for consent_id in granted
        }

    await eventually(all_withdrawn_with_their_reason)


async def test_redelivered_account_closed_has_no_second_effect(
    consent: ConsentService, payloads: type[Payloads], kafka_bootstrap: str
) -> None:
    await consent.grant(payloads.research())
    first = await publish_account_closed(kafka_bootstrap, consent.client_id)

    async def closed() -> bool:
        return (
            await ledger_length(consent, consent.client_id) == 4
        )  # grant, receipt, revoked, closed

    await eventually(closed)
    consumer = consent.service.consumer(IDENTITY_EVENTS)
    assert await consumer.consume(first) is Outcome.DUPLICATE  # delivered again

    # Identity publishing the closure again (a new event id) changes nothing either.
    second = await publish_account_closed(kafka_bootstrap, consent.client_id)

    async def both_handled() -> bool:
        async with consent.service.engine.connect() as conn:
            position = await conn.scalar(
                select(consumer_positions.c.next_offset).where(
                    consumer_positions.c.consumer == consumer.name,
                    consumer_positions.c.topic == IDENTITY_EVENTS,
                    consumer_positions.c.partition == second.partition,
                )
            )
        return position is not None and position > second.offset

    await eventually(both_handled)
    assert await ledger_length(consent, consent.client_id) == 4
