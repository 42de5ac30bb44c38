"""A relay activation's fences against the real broker and database: a successor drops what a
relay that died after publishing had already sent, and a superseded relay's late copy is
recognised by consumers."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from typing import Any

import psycopg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from confide_events import decode_envelope
from confide_events.identity import UserRegistered
from confide_testing import TopicFactory
from confide_toolkit.clock import SystemClock
from confide_toolkit.inbox import InboxConsumer, Outcome
from confide_toolkit.outbox import Outbox, outbox
from confide_toolkit.relay import OutboxRelay
from confide_toolkit.relay_progress import OutboxRead, Place
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from .pipeline_harness import (
    all_published,
    count_effect,
    effect_count,
    outbox_size,
    put_events,
    read_topic,
    registered,
    running,
    wait_until,
)

pytestmark = pytest.mark.integration


class RelayDyingBeforeMarking(OutboxRelay):
    """A relay process that crashes after Kafka acknowledged a batch, before deleting it."""

    async def mark_published(
        self, conn: psycopg.AsyncConnection[Any], read: OutboxRead, places: Sequence[Place]
    ) -> None:
        raise SystemExit("relay killed between publish and mark")


async def all_records(bootstrap: str, topic: str, expected: int) -> list[Any]:
    """Every record of the topic, relay markers included, in offset order per partition."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    records: list[Any] = []
    try:
        async with asyncio.timeout(20):
            while len(records) < expected:
                for batch in (await consumer.getmany(timeout_ms=500)).values():
                    records.extend(batch)
    finally:
        await consumer.stop()
    return sorted(records, key=lambda r: (r.partition, r.offset))


async def test_a_relay_dying_after_publish_is_not_published_again_by_its_successor(
    engine: AsyncEngine,
    database_url: str,
    kafka_bootstrap: str,
    new_topic: TopicFactory,
    producer: AIOKafkaProducer,
) -> None:
    topic = await new_topic()
    box = Outbox("identity", SystemClock(), topic=topic)
    subject = uuid.uuid4()
    await put_events(engine, box, [registered(subject)])

    dying = RelayDyingBeforeMarking(database_url, kafka_bootstrap)
    with pytest.raises(SystemExit):
        await dying.run(asyncio.Event())
    assert await outbox_size(engine) == 1  # nothing was marked: it is still pending
    successor = OutboxRelay(database_url, kafka_bootstrap)
    async with running(successor):
        await wait_until(lambda: all_published(engine, successor))
        # A later event still goes out, after the fence.
        await put_events(engine, box, [registered(subject)])
        await wait_until(lambda: all_published(engine, successor))

    # The successor found the row on the topic and dropped it instead of publishing it again.
    assert successor.reclaimed == 1
    assert successor.published == 1
    events = await read_topic(kafka_bootstrap, topic, expected=3, timeout=5)
    assert len(events) == 2
    consumer = InboxConsumer("test", engine, box, {UserRegistered: count_effect}, producer)
    records = await all_records(kafka_bootstrap, topic, expected=2 + 2 * 3)
    outcomes = await consumer.consume_batch(records)
    assert outcomes.count(Outcome.APPLIED) == 2
    assert await effect_count(engine, subject) == 2


async def test_a_superseded_relays_late_copy_is_recognised_by_its_fence(
    engine: AsyncEngine,
    database_url: str,
    kafka_bootstrap: str,
    new_topic: TopicFactory,
    producer: AIOKafkaProducer,
) -> None:
    """A relay that lost its database session but whose producer still sends (a network
    partition, a paused process) appends its copy after its successor's marker: consumers
    must apply the event once, whichever copy they see first."""
    topic = await new_topic(partitions=1)
    box = Outbox("identity", SystemClock(), topic=topic)
    subject = uuid.uuid4()
    await put_events(engine, box, [registered(subject)])
    async with engine.connect() as conn:
        value, key, event_id = (
            await conn.execute(select(outbox.c.value, outbox.c.partition_key, outbox.c.event_id))
        ).one()

    first = OutboxRelay(database_url, kafka_bootstrap)
    async with running(first):
        await wait_until(lambda: all_published(engine, first))
    [_marker, first_record] = await all_records(kafka_bootstrap, topic, expected=2)
    # The successor takes over: a new marker; nothing pending.
    successor = OutboxRelay(database_url, kafka_bootstrap)
    async with running(successor):
        await put_events(engine, box, [registered(subject)])
        await wait_until(lambda: all_published(engine, successor))
    # The superseded relay's producer now appends a copy of its event, with its old fence.
    await (
        await producer.send(
            topic, value=bytes(value), key=key.encode(), headers=list(first_record.headers)
        )
    )

    records = await all_records(kafka_bootstrap, topic, expected=5)
    consumer = InboxConsumer("test", engine, box, {UserRegistered: count_effect}, producer)
    outcomes = [await consumer.consume(r) for r in records]
    assert outcomes == [
        Outcome.IGNORED,  # the first relay's marker
        Outcome.APPLIED,
        Outcome.IGNORED,  # its successor's marker
        Outcome.APPLIED,  # the successor's own event
        Outcome.DUPLICATE,  # the late copy, below its source's newest fence
    ]
    assert decode_envelope(records[4].value).id == event_id
    assert await effect_count(engine, subject) == 2
