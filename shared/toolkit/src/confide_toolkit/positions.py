"""Where a consumer goes on reading: its position travels with the data it produced.

`consumer_positions` holds, per consumer, topic and partition, the offset of the next record to
read. `ConsumerPositions.advance` writes it in the transaction of a batch's effects, at most
once a second per partition: a position may lag what is applied (the records in between are
read again and the inbox recognises them), never lead it. When partitions are assigned,
`PositionsInDatabase` seeks each to the position the database holds (the beginning when it
holds none), not to the group's offsets in Kafka. So a database restored from an older backup
resumes where its data ends and applies again what came after, erasures included. The group's
offsets are still committed to Kafka, where tools read a consumer's lag."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection, Iterable
from typing import Any, Protocol

from aiokafka import TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from sqlalchemy import BigInteger, Column, DateTime, Integer, String, Table, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from confide_toolkit.database import toolkit_metadata

logger = logging.getLogger(__name__)

consumer_positions = Table(
    "consumer_positions",
    toolkit_metadata,
    Column("consumer", String(128), primary_key=True),
    Column("topic", String(255), primary_key=True),
    Column("partition", Integer, primary_key=True),
    Column("next_offset", BigInteger, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)
"""Where each consumer of this database goes on reading each partition."""

POSITION_READ_ATTEMPTS = 10
"""Tries, a second apart, to read the positions when partitions are assigned (the database may
be restarting); a rebalance must not wait much longer."""

POSITION_INTERVAL = 1.0
"""Seconds between two writes of a partition's position: after a restart or a restore, at most
about this much of the history is read again (and recognised by the inbox)."""

_proposed = insert(consumer_positions)
# A position only moves forward: a batch replayed after a restore never moves it back.
_ADVANCE = _proposed.on_conflict_do_update(
    index_elements=[
        consumer_positions.c.consumer,
        consumer_positions.c.topic,
        consumer_positions.c.partition,
    ],
    set_={"next_offset": _proposed.excluded.next_offset, "updated_at": func.now()},
    where=consumer_positions.c.next_offset < _proposed.excluded.next_offset,
)


class ConsumedOffset(Protocol):
    """What a position is taken from: a consumed record's place in its topic."""

    @property
    def topic(self) -> str: ...

    @property
    def partition(self) -> int: ...

    @property
    def offset(self) -> int: ...


class ConsumerPositions:
    """One consumer's positions in its own database."""

    def __init__(self, consumer: str, engine: AsyncEngine) -> None:
        self.consumer = consumer
        self._engine = engine
        self._written_at: dict[tuple[str, int], float] = {}

    async def read(self, topics: Collection[str]) -> dict[tuple[str, int], int]:
        """The offset of the next record to read, per (topic, partition) of `topics` (partitions
        the consumer never read are absent)."""
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                select(
                    consumer_positions.c.topic,
                    consumer_positions.c.partition,
                    consumer_positions.c.next_offset,
                ).where(
                    consumer_positions.c.consumer == self.consumer,
                    consumer_positions.c.topic.in_(list(topics)),
                )
            )
            return {(row.topic, row.partition): row.next_offset for row in rows}

    async def advance(self, conn: AsyncConnection, records: Iterable[ConsumedOffset]) -> None:
        """Move the positions past `records`, in the caller's transaction (the one of their
        effects), for the partitions whose position was not written in the last
        `POSITION_INTERVAL`."""
        now = time.monotonic()
        next_offsets: dict[tuple[str, int], int] = {}
        for record in records:
            key = (record.topic, record.partition)
            if now - self._written_at.get(key, -POSITION_INTERVAL) >= POSITION_INTERVAL:
                next_offsets[key] = max(next_offsets.get(key, 0), record.offset + 1)
        if not next_offsets:
            return
        self._written_at.update(dict.fromkeys(next_offsets, now))
        await conn.execute(
            _ADVANCE,
            [
                {"consumer": self.consumer, "topic": t, "partition": p, "next_offset": o}
                for (t, p), o in next_offsets.items()
            ],
        )


class PositionsInDatabase(ConsumerRebalanceListener):  # type: ignore[misc]
    """Seeks each partition assigned to the subscriber to the position the consumer's database
    holds, or to the beginning when it holds none: what the database has applied, not the
    group's offsets in Kafka, says where to go on reading."""

    def __init__(self, positions: ConsumerPositions) -> None:
        self._positions = positions
        self.subscriber: Any = None  # the FastStream subscriber, once created

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        return None

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        kafka_consumer = self.subscriber.consumer
        topics = {tp.topic for tp in assigned}
        for attempt in range(1, POSITION_READ_ATTEMPTS + 1):
            try:
                positions = await self._positions.read(topics)
                break
            except Exception as error:
                if attempt == POSITION_READ_ATTEMPTS:
                    # The group's offsets in Kafka then say where to read: nothing is lost,
                    # only a restored database would not re-apply what came after its backup.
                    logger.error(
                        "consumer positions unreadable; reading from the group's offsets",
                        extra={
                            "consumer": self._positions.consumer,
                            "error": type(error).__name__,
                        },
                    )
                    return
                await asyncio.sleep(1.0)
        for partition in assigned:
            position = positions.get((partition.topic, partition.partition))
            if position is None:
                await kafka_consumer.seek_to_beginning(partition)
            else:
                kafka_consumer.seek(partition, position)
