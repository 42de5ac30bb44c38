"""The transactional outbox: an integration event is written in the same database transaction
as the state change that caused it, so either both happen or neither does. The relay
(`confide_toolkit.relay`) publishes the rows to Kafka afterwards.

Each row holds the exact bytes that go on the wire (the CloudEvents envelope) with the
W3C trace context captured when the row was written, so the consumer's span continues the
request's trace even though the publish happens later, in another task.

The relay is woken by the database itself: a statement-level trigger on `outbox` sends a
NOTIFY, which PostgreSQL delivers when (and only if) the transaction commits. Whoever inserts
outbox rows wakes the relay, and writing events costs one plain INSERT.

It notifies only a relay that waits for rows (one holding `RELAY_WAITING_KEY`), not one busy
publishing, which polls: a NOTIFY holds a lock on the whole PostgreSQL cluster from before its
transaction's commit until after the commit's flush, so notifying commits, whatever database
they are in, are flushed one at a time instead of sharing a flush (8 writers of one-row
transactions committed about a quarter fewer a second with it)."""

from __future__ import annotations

import json
from collections.abc import Sequence
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
    DDL,
    BigInteger,
    Column,
    DateTime,
    Identity,
    LargeBinary,
    String,
    Table,
    event,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import UUID as PG_UUID
from sqlalchemy.ext.asyncio import AsyncConnection

from confide_toolkit.clock import Clock
from confide_toolkit.database import driver_connection, toolkit_metadata
from confide_toolkit.ids import uuid7
from confide_toolkit.telemetry import current_traceparent

OUTBOX_CHANNEL = "confide_outbox"
"""The LISTEN/NOTIFY channel that wakes the relay when a transaction with outbox rows commits."""

outbox = Table(
    "outbox",
    toolkit_metadata,
    Column("id", BigInteger, Identity(always=True), primary_key=True),
    Column("event_id", PG_UUID(as_uuid=True), nullable=False),
    Column("topic", String(255), nullable=False),
    Column("partition_key", String(128), nullable=False),
    Column("value", LargeBinary, nullable=False),
    Column("headers", JSONB, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

RELAY_WAITING_KEY = 0x72656C6179  # "relay"
"""The session advisory lock the active relay holds while it waits for a notification. A
writer's trigger tries it shared: when that fails, the relay waits, and the writer notifies;
when it succeeds, the writer holds it until its transaction ends, so the relay cannot start
waiting before the writer's rows are visible to its last read (`relay.OutboxRelay`)."""

NOTIFY_FUNCTION = f"""CREATE OR REPLACE FUNCTION confide_outbox_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('synchronous_commit') = 'off' THEN
        PERFORM set_config('synchronous_commit', 'on', true);
    END IF;
    IF NOT pg_try_advisory_xact_lock_shared({RELAY_WAITING_KEY}) THEN
        PERFORM pg_notify('{OUTBOX_CHANNEL}', '');
    END IF;
    RETURN NULL;
END
$$"""
NOTIFY_TRIGGER = """CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
FOR EACH STATEMENT EXECUTE FUNCTION confide_outbox_notify()"""
"""The relay's wake-up: one NOTIFY per INSERT statement into `outbox` while the relay waits,
delivered at commit. The same trigger makes a transaction that writes outbox rows wait for its
flush at commit even when it began without waiting (a consumer's batch, `positions.claim`):
its events leave the database, so a crash must not take them back after a relay published
them. The toolkit's migration history creates it (`core_0001`, this function since
`core_0007`) in every service's database; `create_all` (tests) creates it with the table."""

# SQLAlchemy's DDL() is not annotated.
event.listen(outbox, "after_create", DDL(NOTIFY_FUNCTION))  # type: ignore[no-untyped-call]
event.listen(outbox, "after_create", DDL(NOTIFY_TRIGGER))  # type: ignore[no-untyped-call]
event.listen(
    outbox,
    "after_drop",
    DDL("DROP FUNCTION IF EXISTS confide_outbox_notify()"),  # type: ignore[no-untyped-call]
)

_INSERT_ONE = (
    "INSERT INTO outbox (event_id, topic, partition_key, value, headers, created_at)"
    " VALUES (%b, %b, %b, %b, %b::jsonb, %b)"
)
_INSERT_MANY = (
    "INSERT INTO outbox (event_id, topic, partition_key, value, headers, created_at)"
    " SELECT event_id, %b, partition_key, value, %b::jsonb, %b"
    " FROM unnest(%b::uuid[], %b::text[], %b::bytea[]) WITH ORDINALITY"
    " AS written (event_id, partition_key, value, place)"
    " ORDER BY place"
)
"""Several events in one statement (one NOTIFY), their ids taken in the order given: the
per-event columns as arrays, the ones they share once. Parameters go in binary (`%b`): a
bytea array in text form is escaped value by value in Python, three times the CPU of the rest
of the statement."""


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

        The relay is notified when (and only if) the transaction commits."""
        traceparent, now = current_traceparent(), self._clock.now()
        envelope = _envelope(event, correlation_id, causation_id, time or now, traceparent)
        driver = await driver_connection(conn)
        await driver.execute(
            _INSERT_ONE,
            (
                envelope.id,
                self._topic,
                envelope.subject,
                encode_envelope(envelope),
                _headers(traceparent),
                now,
            ),
        )
        return envelope

    async def put_many(
        self,
        conn: AsyncConnection,
        events: Sequence[IntegrationEvent],
        *,
        correlation_id: str | None = None,
        causation_id: str | None = None,
    ) -> list[Envelope]:
        """Add several events in one INSERT (in this order), in the caller's transaction: for
        a command or a consumed event that causes many events at once."""
        if not events:
            return []
        # One span and one moment for them all: read once, not per event.
        traceparent, now = current_traceparent(), self._clock.now()
        envelopes = [
            _envelope(event, correlation_id, causation_id, now, traceparent) for event in events
        ]
        driver = await driver_connection(conn)
        await driver.execute(
            _INSERT_MANY,
            (
                self._topic,
                _headers(traceparent),
                now,
                [envelope.id for envelope in envelopes],
                [envelope.subject for envelope in envelopes],
                [encode_envelope(envelope) for envelope in envelopes],
            ),
        )
        return envelopes


def _envelope(
    event: IntegrationEvent,
    correlation_id: str | None,
    causation_id: str | None,
    time: datetime,
    traceparent: str | None,
) -> Envelope:
    event_id = uuid7()
    return to_envelope(
        event,
        event_id=event_id,
        time=time,
        correlation_id=correlation_id or str(event_id),
        causation_id=causation_id,
        traceparent=traceparent,
    )


def _headers(traceparent: str | None) -> str:
    """The outbox row's `headers` (JSON), the same for every event of one span."""
    headers = [[CONTENT_TYPE_HEADER, CLOUDEVENTS_JSON]]
    if traceparent:
        headers.append(["traceparent", traceparent])
    return json.dumps(headers)


def kafka_headers(stored: Any) -> list[tuple[str, bytes]]:
    """The Kafka record headers of an outbox row."""
    return [(str(name), str(value).encode()) for name, value in stored]
