"""The event pipeline against the real broker and database: outbox -> relay -> Kafka ->
idempotent consumer, including the failure paths."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from confide_events import decode_envelope
from confide_events.identity import AccountClosed, UserRegistered
from confide_testing import TopicFactory
from confide_toolkit.clock import SystemClock
from confide_toolkit.database import libpq_url
from confide_toolkit.inbox import (
    EventContext,
    InboxConsumer,
    Outcome,
    RetryPolicy,
)
from confide_toolkit.outbox import Outbox, outbox
from confide_toolkit.relay import OutboxRelay
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from .pipeline_harness import (
    count_effect,
    effect_count,
    outbox_size,
    published_values,
    put_events,
    read_topic,
    registered,
    running,
)

pytestmark = pytest.mark.integration


async def test_outbox_row_exists_only_if_the_state_change_commits(engine: AsyncEngine) -> None:
    box = Outbox("identity", SystemClock(), topic="unused.events")
    with pytest.raises(RuntimeError):
        async with engine.begin() as conn:
            await box.put(conn, registered())
            raise RuntimeError("the state change failed")
    assert await outbox_size(engine) == 0
    await put_events(engine, box, [registered()])
    assert await outbox_size(engine) == 1


async def test_events_put_before_any_other_statement_commit_with_the_callers_commit(
    engine: AsyncEngine,
) -> None:
    box = Outbox("identity", SystemClock(), topic="unused.events")
    async with engine.connect() as conn:  # commit as you go: no transaction begun yet
        await box.put(conn, registered())
        await conn.commit()
    async with engine.connect() as conn:
        await box.put_many(conn, [registered(), registered()])
        await conn.commit()
    assert await outbox_size(engine) == 3


async def test_consumer_dying_before_offset_commit_gets_redelivery_and_applies_once(
    engine: AsyncEngine,
    kafka_bootstrap: str,
    new_topic: TopicFactory,
    producer: AIOKafkaProducer,
) -> None:
    topic = await new_topic(partitions=1)
    box = Outbox("identity", SystemClock(), topic=topic)
    subject = uuid.uuid4()
    await put_events(engine, box, [registered(subject)])
    async with engine.connect() as conn:
        value, key = (await conn.execute(select(outbox.c.value, outbox.c.partition_key))).one()
    await (await producer.send(topic, value=bytes(value), key=key.encode()))
    consumer = InboxConsumer("test", engine, box, {UserRegistered: count_effect}, producer)
    group = f"group-{uuid.uuid4().hex[:8]}"

    async def consume_once(commit: bool) -> Outcome:
        kafka = AIOKafkaConsumer(
            topic,
            bootstrap_servers=kafka_bootstrap,
            group_id=group,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await kafka.start()
        try:
            record = await asyncio.wait_for(kafka.getone(), 30)
            outcome = await consumer.consume(record)
            if commit:
                await kafka.commit()
            return outcome
        finally:
            await kafka.stop()

    # The first process applies the effect and dies before committing its offset.
    assert await consume_once(commit=False) is Outcome.APPLIED
    # Its successor in the group is given the same record again; the position is past it.
    assert await consume_once(commit=True) is Outcome.DUPLICATE
    assert await effect_count(engine, subject) == 1


async def test_a_consumer_that_lost_its_partition_applies_nothing_its_successor_applied(
    engine: AsyncEngine, kafka_bootstrap: str, new_topic: TopicFactory, producer: AIOKafkaProducer
) -> None:
    """Two members of a group during a rebalance: the one that lost the partition still works
    on the batch its successor was given too. The position's row lock fences it out."""
    topic = await new_topic(partitions=1)
    box = Outbox("identity", SystemClock(), topic=topic)
    subjects = [uuid.uuid4() for _ in range(3)]
    values = await published_values(engine, box, [registered(s) for s in subjects])
    for value in values:
        await producer.send_and_wait(topic, value=value, key=b"k")
    records = await read_topic(kafka_bootstrap, topic, expected=3)
    handlers = {UserRegistered: count_effect}
    leaving = InboxConsumer("group", engine, box, handlers, producer)
    successor = InboxConsumer("group", engine, box, handlers, producer)
    assert await leaving.consume_batch(records[:1]) == [Outcome.APPLIED]
    # The partition moves to the successor, which reads the position and goes on.
    await successor.positions.read([topic])
    assert await successor.consume_batch(records[1:]) == [Outcome.APPLIED] * 2
    # The leaving member, unaware, goes on with what it had fetched.
    assert await leaving.consume_batch(records[1:]) == [Outcome.DUPLICATE] * 2
    assert [await effect_count(engine, s) for s in subjects] == [1, 1, 1]


async def test_poison_record_goes_to_the_dead_letter_topic_and_the_partition_moves_on(
    engine: AsyncEngine, kafka_bootstrap: str, new_topic: TopicFactory, producer: AIOKafkaProducer
) -> None:
    topic = await new_topic(partitions=1)
    box = Outbox("identity", SystemClock(), topic=topic)
    subject = uuid.uuid4()
    await (await producer.send(topic, value=b"{not a cloudevent", key=b"k"))
    await put_events(engine, box, [registered(subject)])
    async with engine.connect() as conn:
        value = (await conn.execute(select(outbox.c.value))).scalar_one()
    await (await producer.send(topic, value=bytes(value), key=str(subject).encode()))

    consumer = InboxConsumer("test", engine, box, {UserRegistered: count_effect}, producer)
    records = await read_topic(kafka_bootstrap, topic, expected=2)
    outcomes = [await consumer.consume(r) for r in records]
    assert outcomes == [Outcome.DEAD_LETTERED, Outcome.APPLIED]
    assert await effect_count(engine, subject) == 1

    dead = await read_topic(kafka_bootstrap, f"{topic}.dlq", expected=1)
    assert [d.value for d in dead] == [b"{not a cloudevent"]
    headers = dict(dead[0].headers)
    assert headers["dlq-error-type"] == b"MalformedEnvelope"
    assert headers["dlq-original-topic"] == topic.encode()
    assert headers["dlq-original-offset"] == b"0"


async def test_event_failing_every_retry_is_dead_lettered_with_its_error(
    engine: AsyncEngine, kafka_bootstrap: str, new_topic: TopicFactory, producer: AIOKafkaProducer
) -> None:
    topic = await new_topic(partitions=1)
    box = Outbox("identity", SystemClock(), topic=topic)
    attempts = 0

    async def always_failing(event: UserRegistered, ctx: EventContext) -> None:
        nonlocal attempts
        attempts += 1
        await count_effect(event, ctx)  # rolled back with the failure
        raise LookupError(f"no projection row for {event.subject_id}")

    subject = uuid.uuid4()
    await put_events(engine, box, [registered(subject)])
    async with engine.connect() as conn:
        value = (await conn.execute(select(outbox.c.value))).scalar_one()
    await (await producer.send(topic, value=bytes(value), key=str(subject).encode()))
    records = await read_topic(kafka_bootstrap, topic, expected=1)

    consumer = InboxConsumer(
        "test",
        engine,
        box,
        {UserRegistered: always_failing},
        producer,
        RetryPolicy(attempts=3, first_backoff=0.01),
    )
    assert await consumer.consume(records[0]) is Outcome.DEAD_LETTERED
    assert attempts == 3
    assert await effect_count(engine, subject) == 0  # no partial effect survived

    dead = await read_topic(kafka_bootstrap, f"{topic}.dlq", expected=1)
    headers = dict(dead[0].headers)
    assert headers["dlq-error-type"] == b"LookupError"
    assert headers["dlq-attempts"] == b"3"
    assert str(subject).encode() in headers["dlq-error-message"]
    # The position moved past it: the partition goes on, and the record is not tried again
    # (a fixed handler may replay it from the dead-letter topic).
    assert await consumer.consume(records[0]) is Outcome.DUPLICATE
    assert attempts == 3


async def test_events_this_consumer_does_not_handle_are_ignored(
    engine: AsyncEngine, producer: AIOKafkaProducer
) -> None:
    box = Outbox("identity", SystemClock(), topic="unused.events")
    await put_events(
        engine, box, [AccountClosed(subject_id=uuid.uuid4(), closed_at=datetime.now(UTC))]
    )
    async with engine.connect() as conn:
        value = (await conn.execute(select(outbox.c.value))).scalar_one()

    class Record:
        topic, partition, offset, key, headers = "unused.events", 0, 0, None, ()

    record = Record()
    record.value = bytes(value)  # type: ignore[attr-defined]
    consumer = InboxConsumer("test", engine, box, {UserRegistered: count_effect}, producer)
    assert await consumer.consume(record) is Outcome.IGNORED


def test_libpq_url_strips_the_driver() -> None:
    assert libpq_url("postgresql+psycopg://u:p@h:1/d") == "postgresql://u:p@h:1/d"


async def test_consumer_span_continues_the_trace_of_the_request_that_wrote_the_event(
    engine: AsyncEngine,
    database_url: str,
    kafka_bootstrap: str,
    new_topic: TopicFactory,
    producer: AIOKafkaProducer,
    finished_spans: InMemorySpanExporter,
) -> None:
    topic = await new_topic()
    box = Outbox("identity", SystemClock(), topic=topic)
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("POST /v1/accounts") as request_span:
        await put_events(engine, box, [registered()])
    trace_id = request_span.get_span_context().trace_id

    async with running(OutboxRelay(database_url, kafka_bootstrap)):
        records = await read_topic(kafka_bootstrap, topic, expected=1)
    traceparent = dict(records[0].headers)["traceparent"].decode()
    assert traceparent.split("-")[1] == format(trace_id, "032x")
    assert decode_envelope(records[0].value).traceparent == traceparent

    finished_spans.clear()
    consumer = InboxConsumer("test", engine, box, {UserRegistered: count_effect}, producer)
    assert await consumer.consume(records[0]) is Outcome.APPLIED
    [consumer_span] = [
        s for s in finished_spans.get_finished_spans() if s.kind is trace.SpanKind.CONSUMER
    ]
    assert consumer_span.context.trace_id == trace_id
    assert consumer_span.parent is not None
    assert consumer_span.parent.span_id == request_span.get_span_context().span_id


async def test_a_batch_applies_each_new_event_once_in_one_transaction(
    engine: AsyncEngine, kafka_bootstrap: str, new_topic: TopicFactory, producer: AIOKafkaProducer
) -> None:
    topic = await new_topic(partitions=1)
    box = Outbox("identity", SystemClock(), topic=topic)
    first, second = uuid.uuid4(), uuid.uuid4()
    await put_events(
        engine,
        box,
        [
            registered(first),
            AccountClosed(subject_id=first, closed_at=datetime.now(UTC)),
            registered(second),
        ],
    )
    async with engine.connect() as conn:
        values = (await conn.execute(select(outbox.c.value).order_by(outbox.c.id))).scalars().all()
    for value in values:
        await producer.send_and_wait(topic, value=bytes(value), key=b"k")
    records = await read_topic(kafka_bootstrap, topic, expected=3)

    consumer = InboxConsumer("test", engine, box, {UserRegistered: count_effect}, producer)
    outcomes = await consumer.consume_batch(records)
    assert outcomes == [Outcome.APPLIED, Outcome.IGNORED, Outcome.APPLIED]
    # The batch delivered again (a rebalance, a crash before the offset commit): the position
    # is past all of it.
    assert await consumer.consume_batch(records) == [Outcome.DUPLICATE] * 3
    assert await effect_count(engine, first) == 1
    assert await effect_count(engine, second) == 1


async def test_a_failing_batch_falls_back_to_one_by_one_and_dead_letters_only_the_culprit(
    engine: AsyncEngine, kafka_bootstrap: str, new_topic: TopicFactory, producer: AIOKafkaProducer
) -> None:
    topic = await new_topic(partitions=1)
    box = Outbox("identity", SystemClock(), topic=topic)
    good, bad = uuid.uuid4(), uuid.uuid4()

    async def fails_for_bad(event: UserRegistered, ctx: EventContext) -> None:
        await count_effect(event, ctx)
        if event.subject_id == bad:
            raise LookupError(f"cannot apply {event.subject_id}")

    await put_events(engine, box, [registered(good), registered(bad)])
    async with engine.connect() as conn:
        values = (await conn.execute(select(outbox.c.value).order_by(outbox.c.id))).scalars().all()
    await producer.send_and_wait(topic, value=b"{not a cloudevent", key=b"k")
    for value in values:
        await producer.send_and_wait(topic, value=bytes(value), key=b"k")
    records = await read_topic(kafka_bootstrap, topic, expected=3)

    consumer = InboxConsumer(
        "test",
        engine,
        box,
        {UserRegistered: fails_for_bad},
        producer,
        RetryPolicy(attempts=2, first_backoff=0.01),
    )
    outcomes = await consumer.consume_batch(records)
    assert outcomes == [Outcome.DEAD_LETTERED, Outcome.APPLIED, Outcome.DEAD_LETTERED]
    assert await effect_count(engine, good) == 1  # applied once, though its batch rolled back
    assert await effect_count(engine, bad) == 0
    dead = await read_topic(kafka_bootstrap, f"{topic}.dlq", expected=2)
    assert [dict(d.headers)["dlq-error-type"] for d in dead] == [
        b"MalformedEnvelope",
        b"LookupError",
    ]
