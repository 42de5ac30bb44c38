"""What the pipeline's tests (test_pipeline.py, test_relay*.py, test_batch_projections.py,
test_offsets.py, test_consumer_commits.py) share: events to write, the consumers' effect (a
counter per subject in `effects`, made by conftest.py's `engine`), writing to the outbox or
straight to a topic, running a relay, subscribing a consumer as a service does, and reading a
topic back."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from confide_events import CLOUDEVENTS_JSON, CONTENT_TYPE_HEADER, encode_envelope, to_envelope
from confide_events.identity import UserRegistered
from confide_toolkit.fences import is_marker
from confide_toolkit.ids import uuid7
from confide_toolkit.inbox import EventContext, InboxConsumer
from confide_toolkit.outbox import Outbox, outbox
from confide_toolkit.relay import OutboxRelay
from confide_toolkit.subscriptions import subscribe_batches
from faststream.kafka import KafkaBroker
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine


def registered(subject_id: uuid.UUID | None = None) -> UserRegistered:
    return UserRegistered(
        subject_id=subject_id or uuid.uuid4(), role="client", registered_at=datetime.now(UTC)
    )


async def publish_registered(producer: AIOKafkaProducer, topic: str, partition: int) -> uuid.UUID:
    """Publish a UserRegistered as identity would, to one partition; returns its subject."""
    event = registered()
    envelope = to_envelope(
        event, event_id=uuid7(), time=datetime.now(UTC), correlation_id=str(uuid.uuid4())
    )
    await producer.send_and_wait(
        topic,
        value=encode_envelope(envelope),
        key=envelope.subject.encode(),
        partition=partition,
        headers=[(CONTENT_TYPE_HEADER, CLOUDEVENTS_JSON.encode())],
    )
    return event.subject_id


async def count_effect(event: UserRegistered, ctx: EventContext) -> None:
    await ctx.conn.execute(
        text(
            "INSERT INTO effects (subject_id, applied) VALUES (:s, 1) "
            "ON CONFLICT (subject_id) DO UPDATE SET applied = effects.applied + 1"
        ),
        {"s": event.subject_id},
    )


async def effect_count(engine: AsyncEngine, subject_id: uuid.UUID) -> int:
    async with engine.connect() as conn:
        value = await conn.scalar(
            text("SELECT applied FROM effects WHERE subject_id = :s"), {"s": subject_id}
        )
    return int(value or 0)


async def put_events(engine: AsyncEngine, box: Outbox, events: Sequence[Any]) -> None:
    async with engine.begin() as conn:
        for event in events:
            await box.put(conn, event)


async def published_values(engine: AsyncEngine, box: Outbox, events: Sequence[Any]) -> list[bytes]:
    """Put `events` in the outbox in one transaction and return their record values, in order."""
    await put_events(engine, box, events)
    async with engine.connect() as conn:
        values = (await conn.execute(select(outbox.c.value).order_by(outbox.c.id))).scalars().all()
    return [bytes(v) for v in values]


async def read_topic(bootstrap: str, topic: str, expected: int, timeout: float = 20) -> list[Any]:
    """The events on a topic (relay markers skipped), until `expected` arrived or `timeout`."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    records: list[Any] = []
    try:
        async with asyncio.timeout(timeout):
            while len(records) < expected:
                batch = await consumer.getmany(timeout_ms=500)
                for partition_records in batch.values():
                    records.extend(r for r in partition_records if not is_marker(r.headers))
    except TimeoutError:
        pass
    finally:
        await consumer.stop()
    return records


@contextlib.asynccontextmanager
async def running(relay: OutboxRelay) -> AsyncIterator[asyncio.Event]:
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:
        yield stop
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


@contextlib.asynccontextmanager
async def batch_subscriber(
    bootstrap: str, topic: str, group: str, consumer: InboxConsumer
) -> AsyncIterator[None]:
    """A subscriber configured as `Service` configures its own
    (`subscriptions.subscribe_batches`)."""
    broker = KafkaBroker(bootstrap)
    subscribe_batches(broker, [topic], group, consumer)
    await broker.start()
    try:
        yield
    finally:
        await broker.stop()


async def wait_until(predicate: Any, timeout: float = 20) -> None:
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(0.05)


async def outbox_size(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(outbox)) or 0)


async def all_published(engine: AsyncEngine, relay: OutboxRelay) -> bool:
    """Whether the relay's progress passed every row the outbox still holds."""
    async with engine.connect() as conn:
        newest = await conn.scalar(select(func.max(outbox.c.id)))
    return newest is None or relay.progress >= newest


async def relay_active(relay: OutboxRelay) -> bool:
    return relay.is_active
