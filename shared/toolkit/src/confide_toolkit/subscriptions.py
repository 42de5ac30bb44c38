"""How an `InboxConsumer` is subscribed to Kafka: FastStream batch subscribers that hand a
poll's records to the consumer, commit the group's offsets only once the records' outcome is
durable, and read each partition from the position the consumer's database holds."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from aiokafka import TopicPartition
from faststream.kafka import KafkaBroker
from faststream.middlewares import AckPolicy

from confide_toolkit.inbox import InboxConsumer
from confide_toolkit.positions import (
    ConsumerPositions,
    PositionsInDatabase,
    PositionWentBack,
    seek_to_database_positions,
)

logger = logging.getLogger(__name__)

BATCH_MAX_RECORDS = 500
"""Records a batch subscriber hands to `InboxConsumer.consume_batch` at most (one poll)."""
BATCH_TIMEOUT_MS = 5
"""How long a batch subscriber's poll waits for records. A poll returns as soon as records
arrive, but after an empty one FastStream sleeps this long again before the next poll, so an
event arriving then waits up to this much: short keeps an idle service's latency low (25 ms
gave a light load a p50 of 20-30 ms instead of about 10 ms), at the price of ~100 idle polls
per second and subscriber."""


def kafka_record_handler(consumer: InboxConsumer) -> Callable[[Any], Awaitable[None]]:
    """A FastStream subscriber body (with `AckPolicy.MANUAL`, decoder `whole_message`) that
    hands each record to the inbox consumer and commits the offset only once the outcome is
    durable."""

    async def on_record(message: Any) -> None:
        await consumer.consume(message.raw_message)
        await message.ack()

    return on_record


class DeferredOffsetCommits:
    """Commits the Kafka offsets of applied records in the background, at most `interval`
    after they were applied, instead of waiting for a commit after every batch.

    An offset commit takes several milliseconds (Kafka 4.1's group coordinator lingers 5 ms
    before appending it); awaiting one per batch kept a consumer busy ~9 ms per event at a
    light load of 100 events/s, so events queued behind each other. Deferring it is safe
    because only offsets of records whose effect already committed are ever committed: a
    crash, a rebalance or a shutdown inside the interval redelivers a few applied records,
    which their positions recognise (DUPLICATE)."""

    def __init__(self, interval: float = 0.05) -> None:
        self._interval = interval
        self._pending: dict[TopicPartition, int] = {}
        self._flush: asyncio.Task[None] | None = None

    def applied(self, kafka_consumer: Any, records: Sequence[Any]) -> None:
        """Note that `records` are applied; their offsets go out with the next flush."""
        for record in records:
            partition = TopicPartition(record.topic, record.partition)
            self._pending[partition] = max(self._pending.get(partition, 0), record.offset + 1)
        if self._flush is None or self._flush.done():
            self._flush = asyncio.create_task(self._flush_later(kafka_consumer))

    async def _flush_later(self, kafka_consumer: Any) -> None:
        # Records applied while a commit is on its way go out with the next round, so that an
        # idle partition does not keep its last offsets uncommitted.
        while self._pending:
            await asyncio.sleep(self._interval)
            offsets, self._pending = self._pending, {}
            try:
                await kafka_consumer.commit(offsets)
            except Exception as error:  # the broker client raises its own error classes
                # After a rebalance a partition may be another member's: it redelivers from
                # its last committed offset, and the positions make that harmless.
                logger.info("offset commit skipped", extra={"error": type(error).__name__})


class BatchConsumer(Protocol):
    """What a batch subscriber hands its polls to: an `InboxConsumer`, or a
    `records.RecordConsumer`, each with its positions in its own database."""

    positions: ConsumerPositions

    async def consume_batch(self, raws: Sequence[Any]) -> Any: ...


def kafka_batch_handler(
    consumer: BatchConsumer, offsets: DeferredOffsetCommits | None = None
) -> Callable[[Any], Awaitable[None]]:
    """A FastStream batch subscriber body (`batch=True`, `AckPolicy.MANUAL`, decoder
    `whole_message`): the poll's records in one transaction, then their offsets committed in
    the background (`DeferredOffsetCommits`), never before their effect committed. When the
    database holds an older position than the consumer left (`PositionWentBack`), every
    assigned partition seeks back to the database's positions instead."""
    commits = offsets or DeferredOffsetCommits()

    async def on_batch(batch: Any) -> None:
        records = list(batch.raw_message)
        try:
            await consumer.consume_batch(records)
        except PositionWentBack as went_back:
            # The batch rolled back; every partition reads again from what the database holds.
            logger.warning(
                "the database holds an older position; reading again from it",
                extra={"consumer": consumer.positions.consumer, "position": str(went_back)},
            )
            await seek_to_database_positions(
                consumer.positions, batch.consumer, batch.consumer.assignment()
            )
            return
        commits.applied(batch.consumer, records)

    return on_batch


def subscribe_batches(
    broker: KafkaBroker,
    topics: Sequence[str],
    group: str,
    consumer: BatchConsumer,
    *,
    offsets: DeferredOffsetCommits | None = None,
    **documentation: Any,
) -> Any:
    """Subscribe `consumer` to `topics` the way every service consumes: one subscriber (one
    ordered stream of polls across them) in `group`, a poll's records at a time in one
    transaction (`kafka_batch_handler`), each partition read from the position the consumer's
    database holds (`PositionsInDatabase`), the record values left as bytes for the consumer
    to decode. `documentation` (title, description) goes to the AsyncAPI document. Returns the
    subscriber."""
    positions = PositionsInDatabase(consumer.positions)
    subscriber = broker.subscriber(
        *topics,
        group_id=group,
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.MANUAL,
        decoder=whole_message,
        batch=True,
        max_records=BATCH_MAX_RECORDS,
        batch_timeout_ms=BATCH_TIMEOUT_MS,
        listener=positions,
        **documentation,
    )
    subscriber(kafka_batch_handler(consumer, offsets))
    positions.subscriber = subscriber
    return subscriber


async def whole_message(message: Any) -> Any:
    """A FastStream decoder that makes a subscriber's body the whole message: the records as
    the broker returned them (topic, partition, offset, headers, the value as bytes) and the
    consumer that polled them. The inbox decodes each CloudEvents envelope itself, so a record
    it cannot read goes to the dead-letter topic instead of failing inside the framework.

    The body, not FastStream's `KafkaMessage` annotation: FastDepends resolves that
    annotation with a plain function, which it runs in a worker thread, a thread hop per
    batch. A coroutine function for the same reason: FastStream runs a plain function decoder
    in a worker thread too (that hop cost a batch consumer a tenth of its CPU)."""
    return message
