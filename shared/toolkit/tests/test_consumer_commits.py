"""What a consumer's commit waits for, against the real broker and database: a batch that only
updates what the events rebuild commits without waiting for its flush, one that emits events
waits; and a consumer whose database lost batches under it (as a crash loses commits that did
not wait) reads them again and applies each once."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest
from aiokafka import AIOKafkaProducer
from confide_events.identity import AccountClosed, UserRegistered
from confide_testing import TopicFactory, eventually
from confide_toolkit.clock import SystemClock
from confide_toolkit.inbox import ConsumedRecord, EventContext, InboxConsumer, Outcome
from confide_toolkit.outbox import Outbox
from confide_toolkit.positions import PositionWentBack
from confide_toolkit.records import RecordConsumer
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .pipeline_harness import (
    batch_subscriber,
    count_effect,
    effect_count,
    publish_registered,
    published_values,
    read_topic,
    registered,
)

pytestmark = pytest.mark.integration


async def test_a_batch_waits_for_its_flush_only_when_it_emits_events(
    engine: AsyncEngine, kafka_bootstrap: str, new_topic: TopicFactory, producer: AIOKafkaProducer
) -> None:
    topic = await new_topic(partitions=1)
    box = Outbox("identity", SystemClock(), topic=topic)
    quiet, emitting = uuid.uuid4(), uuid.uuid4()
    for value in await published_values(engine, box, [registered(quiet), registered(emitting)]):
        await producer.send_and_wait(topic, value=value, key=b"k")
    records = await read_topic(kafka_bootstrap, topic, expected=2)
    # What each batch's commit will do: the setting as its handler leaves the transaction.
    at_commit: dict[uuid.UUID, str] = {}

    async def on_registered(event: UserRegistered, ctx: EventContext) -> None:
        await count_effect(event, ctx)
        if event.subject_id == emitting:
            await ctx.emit(AccountClosed(subject_id=event.subject_id, closed_at=datetime.now(UTC)))
        at_commit[event.subject_id] = str(
            await ctx.conn.scalar(text("SELECT current_setting('synchronous_commit')"))
        )

    consumer = InboxConsumer("test", engine, box, {UserRegistered: on_registered}, producer)
    assert await consumer.consume_batch(records[:1]) == [Outcome.APPLIED]
    assert await consumer.consume_batch(records[1:]) == [Outcome.APPLIED]

    assert at_commit == {quiet: "off", emitting: "on"}
    assert [await effect_count(engine, s) for s in (quiet, emitting)] == [1, 1]
    # Only those transactions: the pooled connection is back to waiting for every flush.
    async with engine.connect() as conn:
        assert await conn.scalar(text("SHOW synchronous_commit")) == "on"


async def test_a_consumer_applies_again_what_its_database_lost_under_it(
    engine: AsyncEngine, kafka_bootstrap: str, new_topic: TopicFactory, producer: AIOKafkaProducer
) -> None:
    topic = await new_topic("went-back", partitions=2)
    group = f"went-back-{uuid.uuid4().hex[:8]}"
    inbox = InboxConsumer(
        group,
        engine,
        Outbox("identity", SystemClock(), topic="unused.events"),
        {UserRegistered: count_effect},
        producer,
    )

    async def applied_once(subjects: list[uuid.UUID]) -> bool:
        return [await effect_count(engine, s) for s in subjects] == [1] * len(subjects)

    async with batch_subscriber(kafka_bootstrap, topic, group, inbox):
        kept = [await publish_registered(producer, topic, partition=n % 2) for n in range(4)]
        await eventually(lambda: applied_once(kept))
        async with engine.connect() as conn:
            held = (
                await conn.execute(
                    text(
                        "SELECT partition, next_offset FROM consumer_positions"
                        " WHERE consumer = :consumer"
                    ),
                    {"consumer": group},
                )
            ).all()
        lost = [await publish_registered(producer, topic, partition=n % 2) for n in range(3)]
        await eventually(lambda: applied_once(kept + lost))

        # What a crash that lost the last batches leaves behind: their effects gone, and with
        # them (same transactions) the positions past them.
        async with engine.begin() as conn:
            await conn.execute(
                text("DELETE FROM effects WHERE subject_id = ANY(:lost)"), {"lost": lost}
            )
            for partition, next_offset in held:
                await conn.execute(
                    text(
                        "UPDATE consumer_positions SET next_offset = :offset"
                        " WHERE consumer = :consumer AND partition = :partition"
                    ),
                    {"offset": next_offset, "consumer": group, "partition": partition},
                )
        later = [await publish_registered(producer, topic, partition=n % 2) for n in range(2)]

        await eventually(lambda: applied_once(kept + lost + later))
        await asyncio.sleep(1)  # anything applied twice would show by now
    assert await applied_once(kept + lost + later)


async def test_a_record_consumer_whose_database_went_back_says_so_instead_of_retrying(
    engine: AsyncEngine,
) -> None:
    """The audit trail's consumer retries every failure until it succeeds; a position gone back
    is not a failure a retry can cure, so it reaches the subscriber, which reads again."""
    kept: list[int] = []

    async def keep(conn: AsyncConnection, records: Sequence[ConsumedRecord]) -> None:
        kept.extend(record.offset for record in records)

    consumer = RecordConsumer("went-back-records", engine, keep, traced=False)
    assert await consumer.consume_batch([ConsumedRecord("a", 0, n, b"k", b"v") for n in range(3)])
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE consumer_positions SET next_offset = 1 WHERE consumer = :consumer"),
            {"consumer": "went-back-records"},
        )
    with pytest.raises(PositionWentBack):
        await asyncio.wait_for(consumer.consume_batch([ConsumedRecord("a", 0, 3, b"k", b"v")]), 10)
    assert kept == [0, 1, 2]
