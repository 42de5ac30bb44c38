"""Consuming every record of some topics, whatever its event type, as raw bytes: for a reader
that keeps the records themselves (the audit trail hashes each record's value as it was on the
topic), where `InboxConsumer` decodes each record and hands typed events to handlers.

The exactly-once guarantee is the inbox's: a batch's records are applied and the positions
moved past them in ONE transaction (`confide_toolkit.positions`), so a redelivered record is
below the position and is not applied again, a relay's superseded copy is recognised by its
fence and a relay's marker (no event) is skipped. Each partition is read from the position the
consumer's own database holds. A `RecordConsumer` is subscribed as the inbox is
(`subscriptions.subscribe_batches`).

Each applied record that carries its producer's `traceparent` header gets a CONSUMER span in
that trace, as an event the inbox applies does, so a trace shows every consumer that handled
it (a replay of history, which would add a span to old traces, asks for none).

Unlike the inbox, nothing is dead-lettered: a reader of raw records has no record it "cannot
read", so a failing batch (the database, most likely) is tried again until it succeeds; never
skipped, since a keeper of every record must not have gaps."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from opentelemetry import trace
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from confide_toolkit.availability import database_outage
from confide_toolkit.fences import Admission
from confide_toolkit.inbox import ConsumedRecord
from confide_toolkit.positions import ConsumerPositions, PositionWentBack
from confide_toolkit.telemetry import trace_parent, traceparent_from_kafka_headers

logger = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)

ApplyRecords = Callable[[AsyncConnection, Sequence[ConsumedRecord]], Awaitable[None]]
"""Applies new records (in their consumed order) in the caller's transaction."""

FIRST_BACKOFF = 0.2
MAX_BACKOFF = 5.0


class RecordConsumer:
    """Applies every new record of its topics through `apply`, exactly once in effect, with
    the record's topic, partition, offset, key, headers and raw value (`ConsumedRecord`)."""

    def __init__(
        self, name: str, engine: AsyncEngine, apply: ApplyRecords, *, traced: bool = True
    ) -> None:
        self.name = name
        self._engine = engine
        self._apply = apply
        self._traced = traced
        self.positions = ConsumerPositions(name, engine)

    async def consume_batch(self, raws: Sequence[Any]) -> int:
        """Apply the new records among `raws` and move the positions past all of them in one
        transaction; returns how many were applied. Waits out failures (retrying with backoff)
        rather than skip anything."""
        records = [r if isinstance(r, ConsumedRecord) else ConsumedRecord.of(r) for r in raws]
        attempt = 0
        while True:
            attempt += 1
            started = time.time_ns()
            try:
                async with self._engine.begin() as conn:
                    admissions, moved = await self.positions.claim(conn, records)
                    new = [
                        record
                        for record, admission in zip(records, admissions, strict=True)
                        if admission is Admission.EVENT
                    ]
                    if new:
                        await self._apply(conn, new)
            except PositionWentBack:
                raise  # the subscriber reads again from the database's positions
            except Exception as error:
                backoff = min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** min(attempt - 1, 8))
                level = logging.WARNING if database_outage(error) else logging.ERROR
                logger.log(
                    level,
                    "records not applied; trying again",
                    extra={
                        "consumer": self.name,
                        "records": len(records),
                        "attempt": attempt,
                        "error": type(error).__name__,
                    },
                )
                await asyncio.sleep(backoff)
                continue
            self.positions.remember(moved)
            if self._traced:
                self._record_spans(new, started)
            return len(new)

    def _record_spans(self, applied: Sequence[ConsumedRecord], started: int) -> None:
        """A CONSUMER span per applied record in its producer's trace, spanning the batch's
        transaction. A record whose producer's span was not sampled gets none (the sampler is
        parent-based: it would record nothing)."""
        for record in applied:
            traceparent = traceparent_from_kafka_headers(record.headers)
            if traceparent is None:
                continue
            parent, sampled = trace_parent(traceparent)
            if not sampled:
                continue
            tracer.start_span(
                f"consume {record.topic}",
                context=parent,
                kind=trace.SpanKind.CONSUMER,
                start_time=started,
                attributes={
                    "messaging.system": "kafka",
                    "messaging.destination.name": record.topic,
                    "messaging.destination.partition.id": str(record.partition),
                    "messaging.kafka.offset": record.offset,
                    "messaging.consumer.group.name": self.name,
                },
            ).end()
