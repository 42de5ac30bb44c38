"""Reading and writing real topics in services' tests: a tap that collects what a service
publishes from the moment it was opened, and publishing integration events as their owners do
(so a service under test consumes them exactly as it would in production)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from confide_events import (
    CLOUDEVENTS_JSON,
    CONTENT_TYPE_HEADER,
    IntegrationEvent,
    decode_envelope,
    encode_envelope,
    to_envelope,
)
from confide_toolkit.fences import is_marker
from confide_toolkit.ids import uuid7

from confide_testing import eventually


@dataclass
class TopicTap:
    """The records published on a topic since the tap was opened."""

    consumer: AIOKafkaConsumer
    records: list[Any] = field(default_factory=list)

    async def drain(self) -> None:
        batch = await self.consumer.getmany(timeout_ms=100)
        for records in batch.values():
            self.records.extend(records)

    def events(self, event_type: str) -> list[dict[str, Any]]:
        """The `data` of each record of `event_type` tapped so far."""
        found = []
        for record in self.records:
            if is_marker(record.headers):  # a relay's fencing marker carries no event
                continue
            envelope = decode_envelope(record.value)
            if envelope.type == event_type:
                found.append(envelope.data)
        return found

    async def wait_for(
        self,
        event_type: str,
        predicate: Callable[[list[dict[str, Any]]], bool],
        timeout: float = 30,
    ) -> list[dict[str, Any]]:
        """Tap until the events of `event_type` satisfy `predicate`; returns them."""

        async def seen() -> bool:
            await self.drain()
            return predicate(self.events(event_type))

        await eventually(seen, timeout=timeout)
        return self.events(event_type)

    async def quiet_for(self, seconds: float) -> None:
        """Keep tapping for a while (to see that nothing more comes)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while loop.time() < end:
            await self.drain()


def assigned(consumer: AIOKafkaConsumer) -> Callable[[], Awaitable[bool]]:
    """A check for `eventually`: the consumer was given its partitions."""

    async def check() -> bool:
        return bool(consumer.assignment())

    return check


@contextlib.asynccontextmanager
async def tap(kafka_bootstrap: str, topic: str) -> AsyncIterator[TopicTap]:
    """A tap on `topic` from its current end: it sees only what is published once it is open."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="latest",
    )
    await consumer.start()
    try:
        await eventually(assigned(consumer))
        for partition in consumer.assignment():
            await consumer.position(partition)  # resolve "latest" before the test produces
        yield TopicTap(consumer)
    finally:
        with contextlib.suppress(asyncio.CancelledError):
            await consumer.stop()


async def publish_events(
    producer: AIOKafkaProducer,
    topic: str,
    *events: IntegrationEvent,
    at: datetime | None = None,
) -> list[Any]:
    """Publish events on `topic` as their owners do (CloudEvents, keyed by subject), stamped
    `at` (default: now); returns each record's metadata (topic, partition, offset)."""
    sent = []
    for event in events:
        envelope = to_envelope(
            event,
            event_id=uuid7(),
            time=at or datetime.now(UTC),
            correlation_id=str(uuid.uuid4()),
        )
        sent.append(
            await producer.send_and_wait(
                topic,
                value=encode_envelope(envelope),
                key=envelope.subject.encode(),
                headers=[(CONTENT_TYPE_HEADER, CLOUDEVENTS_JSON.encode())],
            )
        )
    return sent
