"""Offsets of consumed events: a batch subscriber commits them in the background shortly after
the batch's transaction committed, never before, so a restarted consumer resumes after what it
applied without the cost of a synchronous commit per batch."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import CommitFailedError
from confide_events.identity import UserRegistered
from confide_testing import TopicFactory, eventually
from confide_toolkit.clock import SystemClock
from confide_toolkit.inbox import ConsumedRecord, EventContext, InboxConsumer
from confide_toolkit.outbox import Outbox
from confide_toolkit.positions import Position, PositionsInDatabase
from confide_toolkit.subscriptions import (
    DeferredOffsetCommits,
    kafka_batch_handler,
)
from sqlalchemy import Column, MetaData, Table, func, select
from sqlalchemy.dialects.postgresql import UUID as PG_UUID
from sqlalchemy.ext.asyncio import AsyncEngine

from .pipeline_harness import batch_subscriber, publish_registered

pytestmark = pytest.mark.integration

INTERVAL = 0.01
"""The flush interval of the unit tests: short, so that waiting for a flush is quick."""

# --- DeferredOffsetCommits with a stand-in for the Kafka consumer -----------------------------


@dataclass
class FakeKafkaConsumer:
    """Records the offsets it is asked to commit. The first `failures` commits raise; while
    `held` is set, a commit waits until it is released."""

    commits: list[dict[TopicPartition, int]] = field(default_factory=list)
    failures: int = 0
    held: asyncio.Event | None = None

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))
        if self.held is not None:
            await self.held.wait()
        if len(self.commits) <= self.failures:
            raise CommitFailedError("the group rebalanced")


def records(topic: str, partition: int, *offsets: int) -> list[ConsumedRecord]:
    return [ConsumedRecord(topic, partition, offset, key=None, value=b"") for offset in offsets]


async def commits_made(kafka: FakeKafkaConsumer, count: int) -> None:
    async def made() -> bool:
        return len(kafka.commits) >= count

    await eventually(made, timeout=5)


async def test_records_applied_within_an_interval_are_committed_once_past_the_highest() -> None:
    kafka = FakeKafkaConsumer()
    commits = DeferredOffsetCommits(interval=INTERVAL)
    # Three batches in a row, as a busy subscriber applies them, out of order per partition.
    commits.applied(kafka, records("a.events", 0, 3, 4))
    commits.applied(kafka, records("a.events", 1, 10) + records("a.events", 0, 7))
    commits.applied(kafka, records("a.events", 0, 5) + records("b.events", 0, 0))
    assert kafka.commits == []  # in the background, not inside `applied`

    await commits_made(kafka, 1)
    assert kafka.commits == [
        {
            TopicPartition("a.events", 0): 8,
            TopicPartition("a.events", 1): 11,
            TopicPartition("b.events", 0): 1,
        }
    ]


async def test_a_failed_commit_is_logged_and_the_next_records_are_still_committed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="confide_toolkit.subscriptions")
    kafka = FakeKafkaConsumer(failures=1)
    commits = DeferredOffsetCommits(interval=INTERVAL)
    commits.applied(kafka, records("a.events", 0, 0))

    async def failure_logged() -> bool:
        return any(r.getMessage() == "offset commit skipped" for r in caplog.records)

    await eventually(failure_logged, timeout=5)
    commits.applied(kafka, records("a.events", 0, 1))
    await commits_made(kafka, 2)
    assert kafka.commits == [
        {TopicPartition("a.events", 0): 1},
        {TopicPartition("a.events", 0): 2},
    ]


async def test_records_applied_while_a_commit_is_in_flight_are_committed_too() -> None:
    held = asyncio.Event()
    kafka = FakeKafkaConsumer(held=held)
    commits = DeferredOffsetCommits(interval=INTERVAL)
    commits.applied(kafka, records("a.events", 0, 0))
    await commits_made(kafka, 1)  # the broker has not answered this commit yet
    commits.applied(kafka, records("a.events", 0, 1))
    held.set()
    # No further batch comes: the last one's offset must not wait for one.
    await commits_made(kafka, 2)
    assert kafka.commits == [
        {TopicPartition("a.events", 0): 1},
        {TopicPartition("a.events", 0): 2},
    ]


@dataclass
class SlowInbox:
    """Stands in for the InboxConsumer: its batch transaction ends when `done` is set."""

    done: asyncio.Event = field(default_factory=asyncio.Event)

    async def consume_batch(self, raws: Sequence[Any]) -> list[Any]:
        await self.done.wait()
        return []


@dataclass
class BatchMessage:
    """The parts of FastStream's KafkaMessage that a batch handler uses."""

    raw_message: tuple[ConsumedRecord, ...]
    consumer: FakeKafkaConsumer


async def test_offsets_of_a_batch_are_committed_only_after_its_transaction_committed() -> None:
    kafka = FakeKafkaConsumer()
    inbox = SlowInbox()
    on_batch = kafka_batch_handler(inbox, DeferredOffsetCommits(interval=INTERVAL))  # type: ignore[arg-type]
    message = BatchMessage(tuple(records("a.events", 0, 0, 1)), kafka)
    handling: asyncio.Task[None] = asyncio.create_task(on_batch(message))  # type: ignore[arg-type]
    await asyncio.sleep(10 * INTERVAL)  # many flush intervals, the transaction still open
    assert kafka.commits == []
    inbox.done.set()
    await handling
    await commits_made(kafka, 1)
    assert kafka.commits == [{TopicPartition("a.events", 0): 2}]


# --- a FastStream batch subscriber on the real broker -------------------------------------------

applied_metadata = MetaData()
applied = Table(
    "applied", applied_metadata, Column("subject_id", PG_UUID(as_uuid=True), primary_key=True)
)


@pytest.fixture
async def engine(toolkit_engine: AsyncEngine) -> AsyncEngine:
    async with toolkit_engine.begin() as conn:
        await conn.run_sync(applied_metadata.create_all)
    return toolkit_engine


async def record_applied(event: UserRegistered, ctx: EventContext) -> None:
    await ctx.conn.execute(applied.insert().values(subject_id=event.subject_id))


async def applied_count(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(applied)) or 0)


async def committed_offsets(bootstrap: str, group: str, topic: str) -> dict[TopicPartition, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {tp: meta.offset for tp, meta in offsets.items() if tp.topic == topic}


async def test_a_batch_subscriber_commits_what_it_applied_and_its_successor_starts_after_it(
    engine: AsyncEngine, kafka_bootstrap: str, new_topic: TopicFactory, producer: AIOKafkaProducer
) -> None:
    topic = await new_topic("offsets", partitions=3)
    group = f"offsets-{uuid.uuid4().hex[:8]}"
    for n in range(30):
        await publish_registered(producer, topic, partition=n % 3)
    ends = {TopicPartition(topic, p): 10 for p in range(3)}
    inbox = InboxConsumer(
        group,
        engine,
        Outbox("identity", SystemClock(), topic="unused.events"),
        {UserRegistered: record_applied},
        producer,
    )

    async def all_committed() -> bool:
        return await committed_offsets(kafka_bootstrap, group, topic) == ends

    async with batch_subscriber(kafka_bootstrap, topic, group, inbox):
        # The handler never acks: the offsets go out in the background.
        await eventually(all_committed)
        assert await applied_count(engine) == 30

    # A successor in the group: a new event on each partition, and nothing before it.
    fresh = [TopicPartition(topic, p) for p in range(3)]
    for tp in fresh:
        await publish_registered(producer, topic, partition=tp.partition)
    successor = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await successor.start()
    received: list[Any] = []
    try:

        async def fresh_events_arrived() -> bool:
            batch = await successor.getmany(timeout_ms=200)
            for partition_records in batch.values():
                received.extend(partition_records)
            return len(received) >= len(fresh)

        await eventually(fresh_events_arrived)
    finally:
        await successor.stop()
    # Each partition delivers in order from the committed offset: an old record would have
    # come before the new one of its partition.
    assert sorted((r.partition, r.offset) for r in received) == sorted(
        (tp.partition, ends[tp]) for tp in fresh
    )


class SeekingKafkaConsumer:
    """Records the seeks a rebalance listener makes."""

    def __init__(self) -> None:
        self.seeks: dict[TopicPartition, int | str] = {}

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self.seeks[partition] = offset

    async def seek_to_beginning(self, partition: TopicPartition) -> None:
        self.seeks[partition] = "beginning"


class RestartingDatabasePositions:
    """A consumer's positions whose database answers only after `failures` refusals."""

    consumer = "test"

    def __init__(self, failures: int, held: dict[tuple[str, int], Position]) -> None:
        self.failures = failures
        self.held = held

    async def read(self, topics: Any) -> dict[tuple[str, int], Position]:
        if self.failures:
            self.failures -= 1
            raise ConnectionRefusedError("the database is restarting")
        return self.held


async def test_assigned_partitions_seek_to_the_database_positions_once_it_answers() -> None:
    positions = RestartingDatabasePositions(failures=2, held={("a.events", 0): Position(42, {})})
    listener = PositionsInDatabase(positions)  # type: ignore[arg-type]
    kafka = SeekingKafkaConsumer()
    listener.subscriber = type("Subscriber", (), {"consumer": kafka})()
    assigned = {TopicPartition("a.events", 0), TopicPartition("a.events", 1)}
    await listener.on_partitions_assigned(assigned)
    assert kafka.seeks == {
        TopicPartition("a.events", 0): 42,
        # A partition the database never read starts from the beginning, not from Kafka's
        # group offsets: they may be ahead of what a restored database holds.
        TopicPartition("a.events", 1): "beginning",
    }
