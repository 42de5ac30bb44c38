"""Where a consumer goes on reading, and how it knows what it already applied: its position
travels with the data it produced.

`consumer_positions` holds, per consumer, topic and partition, the offset of the next record to
read and the relay fences seen so far (`confide_toolkit.fences`). `ConsumerPositions.claim`
moves it past a batch in the transaction of the batch's effects, under the row's lock, so it
is exact: a record below the position was applied (or passed) and is not applied again, a
record at or above it is new. No row per event: one row per partition, updated once per batch.

The row lock also fences out a consumer that lost its partitions in a rebalance but still works
on a batch: its conditional update finds the position moved, it reads the row under the lock,
and skips what its successor applied.

When partitions are assigned, `PositionsInDatabase` seeks each to the position the database
holds (the beginning when it holds none), not to the group's offsets in Kafka. So a database
restored from an older backup resumes where its data ends and applies again what came after,
erasures included. The group's offsets are still committed to Kafka, where tools read a
consumer's lag.

A database can also go back under a running consumer: restored while the service runs, or a
crash that lost the last batches an inbox committed without waiting for their flush
(`claim(..., await_flush=False)`). The consumer then finds its row behind where it left it,
raises `PositionWentBack`, and its subscriber seeks every partition back to the positions the
database holds (`seek_to_database_positions`), so what was lost is applied again."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from aiokafka import TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from sqlalchemy import BigInteger, Column, DateTime, Integer, String, Table, func, select, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from confide_toolkit.database import driver_connection, toolkit_metadata
from confide_toolkit.fences import Admission, RelayFences

logger = logging.getLogger(__name__)

consumer_positions = Table(
    "consumer_positions",
    toolkit_metadata,
    Column("consumer", String(128), primary_key=True),
    Column("topic", String(255), primary_key=True),
    Column("partition", Integer, primary_key=True),
    Column("next_offset", BigInteger, nullable=False),
    Column("fences", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)
"""Where each consumer of this database goes on reading each partition, and the highest relay
fence per source seen before that offset."""

POSITION_READ_ATTEMPTS = 10
"""Tries, a second apart, to read the positions when partitions are assigned (the database may
be restarting); a rebalance must not wait much longer."""

_MOVE = """UPDATE consumer_positions AS p
    SET next_offset = v.next_offset, fences = v.fences, updated_at = now()
    FROM jsonb_to_recordset(CAST(%(moves)s AS jsonb))
        AS v(topic text, partition integer, expected bigint, next_offset bigint, fences jsonb)
    WHERE p.consumer = %(consumer)s AND p.topic = v.topic AND p.partition = v.partition
        AND p.next_offset = v.expected
    RETURNING p.topic, p.partition"""
"""Moves the positions that are still where this consumer last left them, locking their rows.
Run on the psycopg connection underneath (`database.driver_connection`): it is the one statement
of the toolkit's own in every batch, and SQLAlchemy's statement path added about 70 us of CPU
to each."""
_MOVE_WITHOUT_WAITING_FOR_FLUSH = _MOVE + ", set_config('synchronous_commit', 'off', true)"
"""The same, and the transaction's commit does not wait for its WAL flush: set in the statement
that every batch runs anyway, so it costs no round trip."""
_ENSURE = text(
    "INSERT INTO consumer_positions (consumer, topic, partition, next_offset)"
    " VALUES (:consumer, :topic, :partition, 0) ON CONFLICT DO NOTHING"
)
_LOCK = text(
    "SELECT next_offset, fences FROM consumer_positions"
    " WHERE consumer = :consumer AND topic = :topic AND partition = :partition FOR UPDATE"
)


class PositionWentBack(Exception):
    """The database holds a position behind where this consumer left the partition: batches
    whose commit it saw succeed are gone from it (a crash lost commits that did not wait for
    their flush, or the database was restored under the running consumer). Reading on from
    Kafka's position would skip them: the subscriber must seek back to the database's
    positions and apply them again."""

    def __init__(self, place: Place, held: int, left: int) -> None:
        super().__init__(
            f"{place[0]}[{place[1]}]: the database holds offset {held}, the consumer left {left}"
        )


class ConsumedOffset(Protocol):
    """What a position is taken from: a consumed record's place in its topic and its headers."""

    @property
    def topic(self) -> str: ...

    @property
    def partition(self) -> int: ...

    @property
    def offset(self) -> int: ...

    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...


@dataclass(frozen=True)
class Position:
    """The offset of the next record to read in a partition, and the relay fences seen before."""

    next_offset: int
    fences: dict[str, int]


Place = tuple[str, int]
"""A topic partition."""


class ConsumerPositions:
    """One consumer's positions in its own database."""

    def __init__(self, consumer: str, engine: AsyncEngine) -> None:
        self.consumer = consumer
        self._engine = engine
        # Where this consumer last left each partition (read at assignment, or written by a
        # committed batch): what the fast path expects the row to still say.
        self._known: dict[Place, Position] = {}
        # Partitions read from the group's offsets because the database did not answer at
        # assignment: Kafka's offsets may be ahead of what the database holds.
        self._unchecked: set[Place] = set()

    async def read(self, topics: Collection[str]) -> dict[Place, Position]:
        """The position per (topic, partition) of `topics` (partitions the consumer never read
        are absent); also what the next batches expect to find."""
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                select(
                    consumer_positions.c.topic,
                    consumer_positions.c.partition,
                    consumer_positions.c.next_offset,
                    consumer_positions.c.fences,
                ).where(
                    consumer_positions.c.consumer == self.consumer,
                    consumer_positions.c.topic.in_(list(topics)),
                )
            )
            read = {
                (row.topic, row.partition): Position(row.next_offset, dict(row.fences))
                for row in rows
            }
        # A partition without a row now has none to expect, whatever this consumer wrote.
        self._known = {place: at for place, at in self._known.items() if place[0] not in topics}
        self._known.update(read)
        self._unchecked = {place for place in self._unchecked if place[0] not in topics}
        return read

    def read_without_database(self, places: Collection[Place]) -> None:
        """Note that `places` are read from the group's offsets in Kafka, the database being
        unreadable: their first batch checks that the database holds nothing older than it."""
        self._unchecked.update(places)

    async def claim(
        self,
        conn: AsyncConnection,
        records: Sequence[ConsumedOffset],
        *,
        await_flush: bool = True,
    ) -> tuple[list[Admission | None], dict[Place, Position]]:
        """Move the positions past `records` in the caller's transaction (the one of their
        effects), and say for each record whether it is new: its `Admission`, or None when the
        position is already past it (applied before). Returns the moved positions, for
        `remember` once the transaction committed.

        `await_flush=False`: the transaction's commit returns without waiting for its WAL
        flush (`synchronous_commit = off` for this transaction only), for effects that the
        consumed records themselves can rebuild: a crash may lose the transaction, but then
        it loses the position with it, and the records are applied again. A transaction that
        writes to the outbox still waits: the outbox's trigger turns the flush back on
        (`outbox.NOTIFY_FUNCTION`). Raises `PositionWentBack` when the database holds a
        position behind where this consumer left it."""
        by_place: dict[Place, list[int]] = {}
        for index, record in enumerate(records):
            by_place.setdefault((record.topic, record.partition), []).append(index)
        admissions: list[Admission | None] = [None] * len(records)
        moved: dict[Place, Position] = {}
        for place, indexes in by_place.items():
            known = self._known.get(place)
            if known is not None:
                moved[place] = _decide(known, [records[i] for i in indexes], indexes, admissions)
        move = _MOVE if await_flush else _MOVE_WITHOUT_WAITING_FOR_FLUSH
        confirmed = await self._move(conn, move, moved, self._known) if moved else set()
        for place, indexes in by_place.items():
            if place not in confirmed:
                moved[place] = await self._claim_under_lock(
                    conn, move, place, [records[i] for i in indexes], indexes, admissions
                )
        return admissions, moved

    async def _move(
        self,
        conn: AsyncConnection,
        move: str,
        moved: dict[Place, Position],
        expected: dict[Place, Position],
    ) -> set[Place]:
        """Write the moved positions whose rows still say `expected`; returns those written."""
        driver = await driver_connection(conn)
        cursor = await driver.execute(
            move,
            {
                "consumer": self.consumer,
                "moves": json.dumps(
                    [
                        {
                            "topic": topic,
                            "partition": partition,
                            "expected": expected[(topic, partition)].next_offset,
                            "next_offset": position.next_offset,
                            "fences": position.fences,
                        }
                        for (topic, partition), position in moved.items()
                    ]
                ),
            },
        )
        return {(row[0], row[1]) for row in await cursor.fetchall()}

    def remember(self, moved: dict[Place, Position]) -> None:
        """Record where a committed transaction left the positions."""
        self._known.update(moved)

    async def _claim_under_lock(
        self,
        conn: AsyncConnection,
        move: str,
        place: Place,
        records: Sequence[ConsumedOffset],
        indexes: Sequence[int],
        admissions: list[Admission | None],
    ) -> Position:
        """The slow path: the partition's first batch, or its row moved under this consumer
        (another member of the group applied some of these records, or the database went
        back)."""
        key = {"consumer": self.consumer, "topic": place[0], "partition": place[1]}
        await conn.execute(_ENSURE, key)
        row = (await conn.execute(_LOCK, key)).one()
        stored = Position(row.next_offset, dict(row.fences))
        left = self._known.get(place)
        # Positions only move forward while the database keeps what it committed; another
        # member's batches move them ahead, never back.
        if left is not None and stored.next_offset < left.next_offset:
            raise PositionWentBack(place, stored.next_offset, left.next_offset)
        if place in self._unchecked and stored.next_offset < records[0].offset:
            raise PositionWentBack(place, stored.next_offset, records[0].offset)
        self._unchecked.discard(place)
        for index in indexes:
            admissions[index] = None
        position = _decide(stored, records, indexes, admissions)
        # Under the lock the row says `stored`: the move cannot miss.
        await self._move(conn, move, {place: position}, {place: stored})
        return position


def _decide(
    start: Position,
    records: Sequence[ConsumedOffset],
    indexes: Sequence[int],
    admissions: list[Admission | None],
) -> Position:
    """Admit the records of one partition (in offset order) from the position `start`."""
    fences = RelayFences.of(start.fences)
    next_offset = start.next_offset
    for index, record in zip(indexes, records, strict=True):
        if record.offset < next_offset:
            admissions[index] = None
            continue
        admissions[index] = fences.admit(record.headers, record.offset)
        next_offset = record.offset + 1
    return Position(next_offset, fences.snapshot())


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
        for attempt in range(1, POSITION_READ_ATTEMPTS + 1):
            try:
                positions = await self._positions.read({tp.topic for tp in assigned})
                break
            except Exception as error:
                if attempt == POSITION_READ_ATTEMPTS:
                    # The group's offsets in Kafka then say where to read, until the first
                    # batch finds the database holding an older position (`PositionWentBack`).
                    logger.error(
                        "consumer positions unreadable; reading from the group's offsets",
                        extra={
                            "consumer": self._positions.consumer,
                            "error": type(error).__name__,
                        },
                    )
                    self._positions.read_without_database(
                        {(tp.topic, tp.partition) for tp in assigned}
                    )
                    return
                await asyncio.sleep(1.0)
        await _seek(self.subscriber.consumer, assigned, positions)


async def seek_to_database_positions(
    positions: ConsumerPositions, kafka_consumer: Any, partitions: Collection[TopicPartition]
) -> None:
    """Seek each of `partitions` to the position the consumer's database holds, or to the
    beginning when it holds none: after `PositionWentBack`, what the database lost is read
    again."""
    await _seek(kafka_consumer, partitions, await positions.read({tp.topic for tp in partitions}))


async def _seek(
    kafka_consumer: Any, partitions: Collection[TopicPartition], positions: dict[Place, Position]
) -> None:
    for partition in partitions:
        position = positions.get((partition.topic, partition.partition))
        if position is None:
            await kafka_consumer.seek_to_beginning(partition)
        else:
            kafka_consumer.seek(partition, position.next_offset)
