"""Batch projections against the real broker and database: a read model's runs of events in one
statement each, applied once, falling back to one by one when a run fails, each event keeping
its consumer span in its producer's trace."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from confide_events import decode_envelope
from confide_events.identity import AccountClosed, UserRegistered
from confide_testing import TopicFactory
from confide_toolkit.clock import SystemClock
from confide_toolkit.inbox import (
    BatchProjection,
    EventContext,
    InboxConsumer,
    Outcome,
    RetryPolicy,
)
from confide_toolkit.outbox import Outbox, outbox
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from .pipeline_harness import (
    effect_count,
    published_values,
    put_events,
    read_topic,
    registered,
)

pytestmark = pytest.mark.integration


class ProjectionLog:
    """A BatchProjection of UserRegistered that counts effects with one statement per run and
    remembers the runs it was given."""

    def __init__(self, fail_for: uuid.UUID | None = None) -> None:
        self.runs: list[list[uuid.UUID]] = []
        self._fail_for = fail_for
        self.projection = BatchProjection(self.apply)

    async def apply(self, events: Sequence[UserRegistered], conn: Any) -> None:
        self.runs.append([e.subject_id for e in events])
        await conn.execute(
            text(
                "INSERT INTO effects (subject_id, applied) VALUES (:s, 1) "
                "ON CONFLICT (subject_id) DO UPDATE SET applied = effects.applied + 1"
            ),
            [{"s": e.subject_id} for e in events],
        )
        if any(e.subject_id == self._fail_for for e in events):
            raise LookupError("cannot project this one")


async def test_a_batch_projection_gets_each_run_of_its_events_in_order_and_once(
    engine: AsyncEngine, kafka_bootstrap: str, new_topic: TopicFactory, producer: AIOKafkaProducer
) -> None:
    topic = await new_topic(partitions=1)
    box = Outbox("identity", SystemClock(), topic=topic)
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    closed = AccountClosed(subject_id=a, closed_at=datetime.now(UTC))
    values = await published_values(
        engine, box, [registered(a), registered(b), closed, registered(c)]
    )
    # One run of two, then the per-event handler, then c.
    for value in values:
        await producer.send_and_wait(topic, value=value, key=b"k")
    records = await read_topic(kafka_bootstrap, topic, expected=4)
    log = ProjectionLog()
    order: list[str] = []

    async def on_closed(event: AccountClosed, ctx: EventContext) -> None:
        order.append(f"closed after {len(log.runs)} run(s)")

    consumer = InboxConsumer(
        "test", engine, box, {UserRegistered: log.projection, AccountClosed: on_closed}, producer
    )
    outcomes = await consumer.consume_batch(records)

    assert outcomes == [Outcome.APPLIED] * 4
    assert log.runs == [[a, b], [c]]
    assert order == ["closed after 1 run(s)"]
    assert [await effect_count(engine, s) for s in (a, b, c)] == [1, 1, 1]
    # Redelivered: nothing is projected again.
    assert set(await consumer.consume_batch(records)) == {Outcome.DUPLICATE}
    assert log.runs == [[a, b], [c]]


async def test_a_failing_batch_projection_falls_back_and_dead_letters_only_the_culprit(
    engine: AsyncEngine, kafka_bootstrap: str, new_topic: TopicFactory, producer: AIOKafkaProducer
) -> None:
    topic = await new_topic(partitions=1)
    box = Outbox("identity", SystemClock(), topic=topic)
    good, bad, later = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    values = await published_values(
        engine, box, [registered(good), registered(bad), registered(later)]
    )
    for value in values:
        await producer.send_and_wait(topic, value=value, key=b"k")
    records = await read_topic(kafka_bootstrap, topic, expected=3)
    log = ProjectionLog(fail_for=bad)
    consumer = InboxConsumer(
        "test",
        engine,
        box,
        {UserRegistered: log.projection},
        producer,
        RetryPolicy(attempts=2, first_backoff=0.01),
    )

    outcomes = await consumer.consume_batch(records)

    assert outcomes == [Outcome.APPLIED, Outcome.DEAD_LETTERED, Outcome.APPLIED]
    assert [await effect_count(engine, s) for s in (good, bad, later)] == [1, 0, 1]
    [dead] = await read_topic(kafka_bootstrap, f"{topic}.dlq", expected=1)
    assert decode_envelope(dead.value).subject == str(bad)


async def test_each_projected_event_keeps_its_consumer_span_in_its_producers_trace(
    engine: AsyncEngine,
    kafka_bootstrap: str,
    new_topic: TopicFactory,
    producer: AIOKafkaProducer,
    finished_spans: InMemorySpanExporter,
) -> None:
    topic = await new_topic(partitions=1)
    box = Outbox("identity", SystemClock(), topic=topic)
    tracer = trace.get_tracer("test")
    requests = []
    for _ in range(2):
        with tracer.start_as_current_span("POST /v1/accounts") as request_span:
            await put_events(engine, box, [registered()])
        requests.append(request_span.get_span_context())
    async with engine.connect() as conn:
        values = (await conn.execute(select(outbox.c.value).order_by(outbox.c.id))).scalars().all()
    for value in values:
        await producer.send_and_wait(topic, value=bytes(value), key=b"k")
    records = await read_topic(kafka_bootstrap, topic, expected=2)
    finished_spans.clear()
    log = ProjectionLog()
    consumer = InboxConsumer("test", engine, box, {UserRegistered: log.projection}, producer)

    assert await consumer.consume_batch(records) == [Outcome.APPLIED, Outcome.APPLIED]

    assert len(log.runs) == 1  # one call for both
    spans = [s for s in finished_spans.get_finished_spans() if s.kind is trace.SpanKind.CONSUMER]
    assert [(s.context.trace_id, s.parent.span_id if s.parent else None) for s in spans] == [
        (request.trace_id, request.span_id) for request in requests
    ]
