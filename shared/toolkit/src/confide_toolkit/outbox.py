"""The transactional outbox: an integration event is written in the same database transaction
as the state change that caused it, so either both happen or neither does. The relay
(`confide_toolkit.relay`) publishes the rows to Kafka afterwards.

Each row holds the exact bytes that go on the wire (the CloudEvents envelope) with the
W3C trace context captured when the row was written, so the consumer's span continues the
request's trace even though the publish happens later, in another task."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from confide_events import (
    CLOUDEVENTS_JSON,
    CONTENT_TYPE_HEADER,
    Envelope,
    IntegrationEvent,
    encode_envelope,
    to_envelope,
)
from confide_events.topics import TOPIC_BY_PRODUCER
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Identity,
    LargeBinary,
    String,
    Table,
    func,
    select,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import UUID as PG_UUID
from sqlalchemy.ext.asyncio import AsyncConnection

from confide_toolkit.clock import Clock
from confide_toolkit.database import toolkit_metadata
from confide_toolkit.ids import uuid7
from confide_toolkit.telemetry import current_traceparent

OUTBOX_CHANNEL = "confide_outbox"
"""The LISTEN/NOTIFY channel that wakes the relay when a transaction with outbox rows commits."""

outbox = Table(
    "outbox",
    toolkit_metadata,
    Column("id", BigInteger, Identity(always=True), primary_key=True),
    Column("event_id", PG_UUID(as_uuid=True), nullable=False, unique=True),
    Column("topic", String(255), nullable=False),
    Column("partition_key", String(128), nullable=False),
    Column("value", LargeBinary, nullable=False),
    Column("headers", JSONB, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)


class Outbox:
    """Writes a service's integration events into its outbox, inside the caller's transaction."""

    def __init__(self, producer: str, clock: Clock, topic: str | None = None) -> None:
        self._producer = producer
        self._clock = clock
        # A service that publishes nothing (audit) still has a topic name; it is never written.
        self._topic = topic or TOPIC_BY_PRODUCER.get(producer, f"{producer}.events")

    @property
    def topic(self) -> str:
        return self._topic

    async def put(
        self,
        conn: AsyncConnection,
        event: IntegrationEvent,
        *,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        time: datetime | None = None,
    ) -> Envelope:
        """Add one event to the outbox in the caller's transaction and return its envelope.

        The relay is notified when (and only if) the transaction commits: PostgreSQL delivers
        NOTIFY at commit time."""
        event_id = uuid7()
        traceparent = current_traceparent()
        envelope = to_envelope(
            event,
            event_id=event_id,
            time=time or self._clock.now(),
            correlation_id=correlation_id or str(event_id),
            causation_id=causation_id,
            traceparent=traceparent,
        )
        headers: list[list[str]] = [[CONTENT_TYPE_HEADER, CLOUDEVENTS_JSON]]
        if traceparent:
            headers.append(["traceparent", traceparent])
        row = outbox.insert().values(
            event_id=event_id,
            topic=self._topic,
            partition_key=envelope.subject,
            value=encode_envelope(envelope),
            headers=headers,
            created_at=self._clock.now(),
        )
        # One round trip: the insert rides as a data-modifying CTE of the NOTIFY.
        await conn.execute(select(func.pg_notify(OUTBOX_CHANNEL, "")).add_cte(row.cte("row")))
        return envelope


def kafka_headers(stored: Any) -> list[tuple[str, bytes]]:
    """The Kafka record headers of an outbox row."""
    return [(str(name), str(value).encode()) for name, value in stored]
