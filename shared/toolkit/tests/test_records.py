"""A subscription to every record of some topics, whatever its type, with the record's raw bytes
(`confide_toolkit.records`), against the real broker and database: every record applied once,
in partition order, with its topic, partition, offset and value as they were on the topic; a
relay's marker skipped; a restarted subscriber resumes after what it applied, never applying a
record twice; a failing apply is retried, never skipped."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence

import pytest
from confide_testing import TopicFactory, eventually
from confide_toolkit.fences import marker_headers
from confide_toolkit.inbox import ConsumedRecord
from confide_toolkit.records import RecordConsumer
from confide_toolkit.relay import idempotent_producer
from confide_toolkit.subscriptions import subscribe_batches
from confide_toolkit.telemetry import configure_telemetry, current_traceparent, kafka_trace_headers
from faststream.kafka import KafkaBroker
from opentelemetry import trace
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import BigInteger, Column, Integer, LargeBinary, MetaData, String, Table, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

pytestmark = pytest.mark.integration

kept = Table(
    "kept_records",
    MetaData(),
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("topic", String(255)),
    Column("partition", Integer),
    Column("offset", BigInteger),
    Column("value", LargeBinary),
)


@pytest.fixture
async def engine(toolkit_engine: AsyncEngine) -> AsyncEngine:
    async with toolkit_engine.begin() as conn:
        await conn.run_sync(kept.metadata.create_all)
    return toolkit_engine


async def keep(conn: AsyncConnection, records: Sequence[ConsumedRecord]) -> None:
    await conn.execute(
        kept.insert(),
        [
            {"topic": r.topic, "partition": r.partition, "offset": r.offset, "value": r.value}
            for r in records
        ],
    )


@contextlib.asynccontextmanager
async def subscribed(
    bootstrap: str, topics: list[str], group: str, consumer: RecordConsumer
) -> AsyncIterator[None]:
    broker = KafkaBroker(bootstrap)
    subscribe_batches(broker, topics, group, consumer)
    await broker.start()
    try:
        yield
    finally:
        await broker.stop()


async def rows(engine: AsyncEngine) -> list[tuple[str, int, int, bytes]]:
    async with engine.connect() as conn:
        found = await conn.execute(
            select(kept.c.topic, kept.c.partition, kept.c.offset, kept.c.value).order_by(kept.c.id)
        )
        return [(r.topic, r.partition, r.offset, r.value) for r in found]


async def until_kept(engine: AsyncEngine, count: int) -> None:
    async def enough() -> bool:
        return len(await rows(engine)) >= count

    await eventually(enough)


async def test_every_record_of_every_topic_is_kept_once_with_its_raw_bytes_and_place(
    engine: AsyncEngine, kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    first, second = await new_topic("records", 2), await new_topic("records", 1)
    producer = idempotent_producer(kafka_bootstrap)
    await producer.start()
    try:
        sent = []
        for topic, partition, value in [
            (first, 0, b'{"any": "json"}'),
            (second, 0, b"\x00not json at all"),
            (first, 1, b""),
        ]:
            meta = await producer.send_and_wait(topic, value=value, partition=partition)
            sent.append((topic, meta.partition, meta.offset, value))
        await producer.send_and_wait(
            first, value=b"", partition=1, headers=marker_headers(str(uuid.uuid4()))
        )
        consumer = RecordConsumer("keeper", engine, keep)
        async with subscribed(kafka_bootstrap, [first, second], "keeper-a", consumer):
            await until_kept(engine, 3)
            # Later records go on being kept, after the first ones.
            later = await producer.send_and_wait(second, value=b"later")
            sent.append((second, later.partition, later.offset, b"later"))
            await until_kept(engine, 4)
    finally:
        await producer.stop()

    found = await rows(engine)
    assert sorted(found) == sorted(sent)  # the marker is no record to keep
    assert found[-1] == sent[-1]


async def test_a_restarted_subscriber_resumes_after_what_it_kept_without_keeping_any_twice(
    engine: AsyncEngine, kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    topic = await new_topic("records", 1)
    producer = idempotent_producer(kafka_bootstrap)
    await producer.start()
    try:
        for n in range(5):
            await producer.send_and_wait(topic, value=f"first-{n}".encode())
        # Another group each time: Kafka's committed offsets cannot help, only the positions.
        async with subscribed(
            kafka_bootstrap, [topic], "g1", RecordConsumer("keeper", engine, keep)
        ):
            await until_kept(engine, 5)
        for n in range(3):
            await producer.send_and_wait(topic, value=f"second-{n}".encode())
        async with subscribed(
            kafka_bootstrap, [topic], "g2", RecordConsumer("keeper", engine, keep)
        ):
            await until_kept(engine, 8)
    finally:
        await producer.stop()
    values = [value for _, _, _, value in await rows(engine)]
    assert values == [f"first-{n}".encode() for n in range(5)] + [
        f"second-{n}".encode() for n in range(3)
    ]


async def test_a_failing_apply_is_tried_again_and_skips_nothing(
    engine: AsyncEngine, kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    topic = await new_topic("records", 1)
    failures = 2

    async def flaky(conn: AsyncConnection, records: Sequence[ConsumedRecord]) -> None:
        nonlocal failures
        await keep(conn, records)  # undone with the transaction when it fails
        if failures:
            failures -= 1
            raise RuntimeError("not now")

    producer = idempotent_producer(kafka_bootstrap)
    await producer.start()
    try:
        for n in range(3):
            await producer.send_and_wait(topic, value=str(n).encode())
        async with subscribed(kafka_bootstrap, [topic], "g", RecordConsumer("k", engine, flaky)):
            await until_kept(engine, 3)
    finally:
        await producer.stop()
    assert [value for _, _, _, value in await rows(engine)] == [b"0", b"1", b"2"]
    assert failures == 0


async def test_a_kept_record_has_a_consumer_span_in_its_producers_trace(
    engine: AsyncEngine, kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    provider = configure_telemetry("confide-test", "none")
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    topic = await new_topic("records", 1)
    with trace.get_tracer("test").start_as_current_span("POST /v1/messages") as request:
        traceparent = current_traceparent()
    assert traceparent is not None
    unsampled_parent = traceparent[:-2] + "00"
    producer = idempotent_producer(kafka_bootstrap)
    await producer.start()
    try:
        for headers in (
            kafka_trace_headers(traceparent),
            [],  # written by hand: a trace of no one
            kafka_trace_headers(unsampled_parent),
        ):
            await producer.send_and_wait(topic, value=b"{}", headers=headers)
    finally:
        await producer.stop()
    exporter.clear()
    async with subscribed(kafka_bootstrap, [topic], "g", RecordConsumer("keeper", engine, keep)):
        await until_kept(engine, 3)
    spans = [s for s in exporter.get_finished_spans() if s.kind is trace.SpanKind.CONSUMER]
    [span] = [s for s in spans if s.name == f"consume {topic}"]
    assert span.context.trace_id == request.get_span_context().trace_id
    assert span.parent is not None and span.parent.span_id == request.get_span_context().span_id
    assert span.attributes is not None and span.attributes["messaging.consumer.group.name"] == (
        "keeper"
    )
