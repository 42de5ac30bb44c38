"""Idempotent consumers: a batch's effects and the consumer's position past it commit in one
transaction (`confide_toolkit.positions`), and the Kafka offset is committed only afterwards.
A redelivered record is below the position and has no second effect; a relay's re-published
copy is recognised by its fence (`confide_toolkit.fences`). No row per event is written for
either. A failing event is retried with backoff, then goes to the dead-letter topic with the
error in its headers, so a partition is never blocked forever and nothing is dropped.

Each partition is read from the position the consumer's own database holds, so a database
restored from a backup re-applies, exactly once, what came after it.

A batch's commit does not wait for PostgreSQL to flush it to disk (`synchronous_commit = off`
for that transaction): what it wrote is rebuilt from the events it consumed, and the position
commits or is lost with it, so a crash that loses the batch makes the consumer read it again
(`positions.PositionWentBack`). A transaction that writes to the outbox waits for its flush
(the outbox's trigger turns it back on): its events leave the database, and a relay must never
publish what a crash then takes back. Any later commit that waits flushes the earlier ones with
it (the log is written in order), so nothing that waited can depend on a batch that was lost.
On a disk whose flushes stall for tenths of a second, this is what keeps them off the
consumer's latency.

How a consumer is subscribed to Kafka (FastStream, offsets) is `confide_toolkit.subscriptions`.

(The module keeps its name from the inbox table it used to write: it is where consumed events
come in.)"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaProducer
from confide_events import (
    REGISTRY,
    Envelope,
    IntegrationEvent,
    MalformedEnvelope,
    UnknownEventType,
    decode_envelope,
    from_envelope,
)
from confide_events.topics import dead_letter_topic
from opentelemetry import trace
from opentelemetry.context import Context
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from confide_toolkit.availability import database_outage
from confide_toolkit.fences import Admission
from confide_toolkit.outbox import Outbox
from confide_toolkit.positions import ConsumerPositions, PositionWentBack
from confide_toolkit.telemetry import trace_parent, traceparent_sampled

logger = logging.getLogger(__name__)
tracer = trace.get_tracer("confide_toolkit.inbox")

DEAD_LETTERS_SUFFIX = ".dead-letters"
"""A consumer's dead-letter replay keeps its positions under the consumer's name with this."""

DEAD_LETTER_CONSUMER_HEADER = "dlq-consumer"
"""The dead-letter header naming the consumer that failed the record."""

DEAD_LETTER_GROUP_HEADER = "dlq-consumer-group"
"""The dead-letter header naming that consumer's group: the deployment the record waits for."""

_CATALOGUE_TYPES = frozenset(event_type for event_type, _ in REGISTRY.models)
"""Every event type of the contract: one a consumer does not handle is ignored unread."""


class Outcome(enum.Enum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"
    IGNORED = "ignored"
    DEAD_LETTERED = "dead_lettered"


@dataclass(frozen=True)
class EventContext:
    """What a handler of a consumed event gets besides the event: the transaction its effect
    must use, the envelope, and a way to emit follow-up events caused by this one."""

    conn: AsyncConnection
    envelope: Envelope
    outbox: Outbox

    async def emit(self, event: IntegrationEvent) -> Envelope:
        """Write a follow-up event to the outbox, in this transaction, caused by this event."""
        return await self.outbox.put(
            self.conn,
            event,
            correlation_id=self.envelope.correlationid,
            causation_id=str(self.envelope.id),
        )


EventHandler = Callable[[Any, EventContext], Awaitable[None]]


@dataclass(frozen=True)
class BatchProjection:
    """A read model's update that takes several events of one type at once: `apply(events,
    conn)` gets each run of consecutive new events of its type in a consumed batch, in order, in
    the batch's transaction (one event at a time when the batch fell back to one by one).

    For effects that are one statement for many events (an `executemany`): a handler's own
    statement per event is most of a consumer's cost. A projection emits no events; each event
    still gets its consumer span in its producer's trace, though none is current while `apply`
    runs."""

    apply: Callable[[Sequence[Any], AsyncConnection], Awaitable[None]]


Handler = EventHandler | BatchProjection
"""What `InboxConsumer` (and `Service.subscribe`) accept for an event type."""


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    first_backoff: float = 0.2
    max_backoff: float = 5.0

    def backoff(self, attempt: int) -> float:
        return float(min(self.max_backoff, self.first_backoff * 2 ** (attempt - 1)))


@dataclass(frozen=True)
class ConsumedRecord:
    """The parts of a Kafka record a consumer needs (aiokafka's ConsumerRecord has them)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = field(default_factory=tuple)

    @classmethod
    def of(cls, record: Any) -> ConsumedRecord:
        return cls(
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            key=record.key,
            value=record.value or b"",
            headers=tuple(record.headers or ()),
        )


class Unreadable(Exception):
    """A record that is not a readable event of the catalogue: no retry can help it."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


class InboxConsumer:
    """Applies consumed events through handlers, exactly once in effect."""

    def __init__(
        self,
        name: str,
        engine: AsyncEngine,
        outbox: Outbox,
        handlers: Mapping[type[IntegrationEvent], Handler],
        dead_letters: AIOKafkaProducer,
        retry: RetryPolicy | None = None,
        group: str | None = None,
    ) -> None:
        self.name = name
        # The Kafka consumer group: the deployment whose dead letters are its own.
        self.group = group or name
        self._engine = engine
        self._outbox = outbox
        self._handlers = dict(handlers)
        self._handled_types = frozenset(cls.event_type for cls in self._handlers)
        self._dead_letters = dead_letters
        self._retry = retry or RetryPolicy()
        self.positions = ConsumerPositions(name, engine)

    @property
    def event_types(self) -> list[type[IntegrationEvent]]:
        return list(self._handlers)

    async def consume(self, raw: Any) -> Outcome:
        """Handle one Kafka record; returns once its outcome is durable (applied in the
        database, or published to the dead-letter topic and passed), so the offset may be
        committed."""
        record = raw if isinstance(raw, ConsumedRecord) else ConsumedRecord.of(raw)
        attempt = 0
        while True:
            attempt += 1
            try:
                [outcome] = await self._apply([record])
                return outcome
            except PositionWentBack:
                raise  # not the event's fault: the subscriber reads again from the database
            except Unreadable as unreadable:
                # Retrying cannot fix a record we cannot read: dead-letter it at once.
                await self._dead_letter(record, unreadable.error, attempts=0)
                await self._pass(record)
                return Outcome.DEAD_LETTERED
            except Exception as error:
                if database_outage(error):
                    # Not the event's fault: it waits for the database however long that takes,
                    # and never reaches the dead-letter topic for it.
                    logger.warning(
                        "database unavailable; the event waits for it",
                        extra=self._log_fields(record, attempt, error),
                    )
                    attempt -= 1
                    await asyncio.sleep(self._retry.max_backoff)
                    continue
                if attempt >= self._retry.attempts:
                    logger.error(
                        "event failed every attempt; sending it to the dead-letter topic",
                        extra=self._log_fields(record, attempt, error),
                    )
                    await self._dead_letter(record, error, attempts=attempt)
                    await self._pass(record)
                    return Outcome.DEAD_LETTERED
                logger.warning(
                    "event failed; retrying", extra=self._log_fields(record, attempt, error)
                )
                await asyncio.sleep(self._retry.backoff(attempt))

    async def consume_batch(self, raws: Sequence[Any]) -> list[Outcome]:
        """Handle a poll's worth of records in ONE transaction (the position moved once per
        partition, each handler in record order, one commit): the per-record transaction and
        round trips dominate the consumer's cost otherwise. If anything in the batch fails, the
        transaction rolls back and the records go through `consume` one by one, with its
        retries and dead letters, so a poison record still blocks nothing."""
        records = [r if isinstance(r, ConsumedRecord) else ConsumedRecord.of(r) for r in raws]
        try:
            return await self._apply(records)
        except PositionWentBack:
            raise
        except Exception:
            logger.warning(
                "batch failed; handling its records one by one",
                extra={"consumer": self.name, "records": len(records)},
            )
            return [await self.consume(record) for record in records]

    def for_dead_letters(self) -> InboxConsumer:
        """A consumer of this one's dead letters, with the same handlers and positions of its
        own (on the dead-letter topic), so an operator's replay applies each record once
        (`confide_toolkit.dead_letters`)."""
        return InboxConsumer(
            f"{self.name}{DEAD_LETTERS_SUFFIX}",
            self._engine,
            self._outbox,
            self._handlers,
            self._dead_letters,
            self._retry,
            self.group,
        )

    async def replay(self, record: ConsumedRecord) -> Outcome:
        """Apply one record in one transaction with its position, with no retry and no dead
        letter: a failure raises, and the position stays before the record."""
        [outcome] = await self._apply([record])
        return outcome

    async def pass_over(self, records: Sequence[ConsumedRecord]) -> None:
        """Move the position past `records` without applying them, in one transaction."""
        if not records:
            return
        async with self._engine.begin() as conn:
            _, moved = await self.positions.claim(conn, records)
        self.positions.remember(moved)

    async def _apply(self, records: Sequence[ConsumedRecord]) -> list[Outcome]:
        """Apply the new records among `records` in one transaction, with the positions."""
        async with self._engine.begin() as conn:
            outcomes, moved = await self._claim_and_apply(conn, records)
        self.positions.remember(moved)
        return outcomes

    async def _pass(self, record: ConsumedRecord) -> None:
        """Move the position past a dead-lettered record, without applying it; waits out a
        database outage as an event does."""
        while True:
            try:
                async with self._engine.begin() as conn:
                    _, moved = await self.positions.claim(conn, [record])
            except Exception as error:
                if not database_outage(error):
                    raise
                await asyncio.sleep(self._retry.max_backoff)
                continue
            self.positions.remember(moved)
            return

    async def _claim_and_apply(
        self, conn: AsyncConnection, records: Sequence[ConsumedRecord]
    ) -> tuple[list[Outcome], dict[Any, Any]]:
        """Move the positions past `records` and apply each new event among them, in order,
        in the caller's transaction, whose commit does not wait for its flush unless it wrote
        to the outbox (see the module's documentation)."""
        admissions, moved = await self.positions.claim(conn, records, await_flush=False)
        outcomes: list[Outcome] = []
        run: list[tuple[ConsumedRecord, Envelope, IntegrationEvent]] = []
        for record, admission in zip(records, admissions, strict=True):
            if admission is None or admission is Admission.STALE:
                outcomes.append(Outcome.DUPLICATE)
                continue
            if admission is Admission.MARKER:
                outcomes.append(Outcome.IGNORED)
                continue
            try:
                envelope = decode_envelope(record.value)
                if envelope.type not in self._handled_types and envelope.type in _CATALOGUE_TYPES:
                    # Not this consumer's business: validating its data would only cost.
                    outcomes.append(Outcome.IGNORED)
                    continue
                event = from_envelope(envelope)
            except (MalformedEnvelope, UnknownEventType, ValueError) as error:
                raise Unreadable(error) from error
            handler = self._handlers.get(type(event))
            if handler is None:
                outcomes.append(Outcome.IGNORED)
                continue
            outcomes.append(Outcome.APPLIED)
            if run and type(run[0][2]) is not type(event):
                await self._project(conn, run)
                run = []
            if isinstance(handler, BatchProjection):
                run.append((record, envelope, event))
                continue
            # Started even when not sampled: the handler's follow-up events carry its trace on.
            parent, _ = trace_parent(envelope.traceparent)
            with self._consumer_span(record, envelope, parent):
                await handler(event, EventContext(conn, envelope, self._outbox))
        if run:
            await self._project(conn, run)
        return outcomes, moved

    async def _project(
        self,
        conn: AsyncConnection,
        run: Sequence[tuple[ConsumedRecord, Envelope, IntegrationEvent]],
    ) -> None:
        """Apply a run of consecutive events of one type through its `BatchProjection`."""
        projection = self._handlers[type(run[0][2])]
        assert isinstance(projection, BatchProjection)
        # A span whose parent was not sampled records nothing (the sampler is parent-based),
        # and a projection emits nothing that would carry it on: such spans are not started.
        spans = []
        for record, envelope, _ in run:
            if traceparent_sampled(envelope.traceparent):
                parent, _ = trace_parent(envelope.traceparent)
                spans.append(self._consumer_span(record, envelope, parent, current=False))
        try:
            await projection.apply([event for _, _, event in run], conn)
        finally:
            for span in spans:
                span.end()

    def _consumer_span(
        self, record: ConsumedRecord, envelope: Envelope, parent: Context, *, current: bool = True
    ) -> Any:
        """The event's CONSUMER span in its producer's trace (`parent`, from `trace_parent`): a
        context manager that makes it current, or (`current=False`) a started span for the
        caller to end."""
        start = tracer.start_as_current_span if current else tracer.start_span
        return start(
            f"consume {envelope.type}",
            context=parent,
            kind=trace.SpanKind.CONSUMER,
            attributes={
                "messaging.system": "kafka",
                "messaging.destination.name": record.topic,
                "messaging.message.id": str(envelope.id),
                "messaging.consumer.group.name": self.name,
            },
        )

    async def _dead_letter(
        self, record: ConsumedRecord, error: BaseException, attempts: int
    ) -> None:
        headers = [
            *record.headers,
            (DEAD_LETTER_CONSUMER_HEADER, self.name.encode()),
            (DEAD_LETTER_GROUP_HEADER, self.group.encode()),
            ("dlq-error-type", type(error).__name__.encode()),
            # Errors name ids, never personal data (rule 5); the message is bounded anyway.
            ("dlq-error-message", str(error)[:1000].encode()),
            ("dlq-attempts", str(attempts).encode()),
            ("dlq-original-topic", record.topic.encode()),
            ("dlq-original-partition", str(record.partition).encode()),
            ("dlq-original-offset", str(record.offset).encode()),
        ]
        delivery = await self._dead_letters.send(
            dead_letter_topic(record.topic), value=record.value, key=record.key, headers=headers
        )
        await delivery

    def _log_fields(
        self, record: ConsumedRecord, attempt: int, error: BaseException
    ) -> dict[str, Any]:
        try:
            envelope = decode_envelope(record.value)
            event_id, event_type = str(envelope.id), envelope.type
        except (MalformedEnvelope, ValueError):
            event_id = event_type = "unreadable"
        return {
            "consumer": self.name,
            "event_id": event_id,
            "event_type": event_type,
            "topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
            "attempt": attempt,
            "error": type(error).__name__,
        }
