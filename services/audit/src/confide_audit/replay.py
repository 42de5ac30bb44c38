"""Rebuilding the trail from offset 0 while the service serves: a new generation is built beside
the one that answers, from every record of the event topics, and switched in once it holds
exactly what the live consumer has appended (`python -m confide_audit replay`).

The new generation never goes past the live consumer's positions: whatever the live consumer
appends after the switch goes to the new generation (a live append share-locks the state row
that the switch updates), so the records up to its positions must be in the new generation and
nothing beyond them, else the live consumer would append them a second time. A replay run
while the service is stopped therefore rebuilds up to where the service stopped, and the
service goes on from there when it starts."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from aiokafka import AIOKafkaConsumer, TopicPartition
from confide_toolkit.database import create_engine
from confide_toolkit.inbox import ConsumedRecord
from confide_toolkit.positions import consumer_positions
from confide_toolkit.records import RecordConsumer
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from confide_audit import store
from confide_audit.settings import AuditSettings

MIGRATIONS = Path(__file__).parent / "migrations"

FETCH_RECORDS = 5000
"""Records a replay fetches and appends in one transaction at most."""

READ_AHEAD = 1
"""Batches read and prepared ahead of the one being written: the database's work on a batch
(most of a replay's time) overlaps this process's reading and decoding of the next one, and
memory stays bounded (at most this many batches wait; 2 were no faster, and 15 MiB more)."""


@dataclass(frozen=True)
class ReplayOutcome:
    generation: int
    replaced: int
    events: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


class Progress:
    """A progress line (events done, rate, time left), rewritten in place."""

    def __init__(self, out: TextIO | None = sys.stderr, every: float = 0.5) -> None:
        self._out = out
        self._every = every
        self._started = time.monotonic()
        self._shown = 0.0

    def show(self, done: int, total: int, *, final: bool = False) -> None:
        now = time.monotonic()
        if self._out is None or (not final and now - self._shown < self._every):
            return
        self._shown = now
        elapsed = max(now - self._started, 1e-9)
        rate = done / elapsed
        left = (total - done) / rate if rate > 0 and total > done else 0.0
        share = done / total if total else 1.0
        bar = "#" * int(share * 30)
        self._out.write(
            f"\r[{bar:<30}] {done:,}/{total:,} events  {rate:,.0f} events/s  {left:,.0f} s left "
        )
        if final:
            self._out.write("\n")
        self._out.flush()


async def _live_positions(conn: AsyncConnection, topics: Sequence[str]) -> dict[Any, int]:
    rows = await conn.execute(
        select(
            consumer_positions.c.topic,
            consumer_positions.c.partition,
            consumer_positions.c.next_offset,
        ).where(
            consumer_positions.c.consumer == store.LIVE_CONSUMER,
            consumer_positions.c.topic.in_(list(topics)),
        )
    )
    return {TopicPartition(r.topic, r.partition): r.next_offset for r in rows}


class _Reader:
    """Reads the topics' partitions from offset 0, each up to a limit (the live positions)."""

    def __init__(self, kafka: AIOKafkaConsumer, partitions: list[TopicPartition]) -> None:
        self.kafka = kafka
        self.partitions = partitions
        self.next: dict[TopicPartition, int] = {tp: 0 for tp in partitions}
        self.limits: dict[TopicPartition, int] = {}
        self.read_total = 0

    def behind(self, limits: dict[TopicPartition, int]) -> int:
        return sum(max(0, limits.get(tp, 0) - self.next[tp]) for tp in self.partitions)

    def total(self) -> int:
        """Records read so far and those left below the last limits seen."""
        return self.read_total + self.behind(self.limits)

    async def read(self, limits: dict[TopicPartition, int]) -> list[Any]:
        """The next records below each partition's limit (in partition order)."""
        self.limits = limits
        wanted = [tp for tp in self.partitions if self.next[tp] < limits.get(tp, 0)]
        done = [tp for tp in self.partitions if tp not in wanted]
        if done:
            self.kafka.pause(*done)
        if wanted:
            self.kafka.resume(*wanted)
        else:
            return []
        records: list[Any] = []
        wait_ms = 200
        # A poll hands over what one fetch brought (a few hundred records): several polls make
        # one transaction, whose fixed cost (locks, positions, head) is then shared by more.
        while len(records) < FETCH_RECORDS:
            fetched = await self.kafka.getmany(
                timeout_ms=wait_ms, max_records=FETCH_RECORDS - len(records)
            )
            if not fetched:
                break
            wait_ms = 0
            for tp, batch in fetched.items():
                limit = limits.get(tp, 0)
                kept = [record for record in batch if record.offset < limit]
                if kept:
                    self.next[tp] = kept[-1].offset + 1
                    self.read_total += len(kept)
                    records.extend(kept)
                if len(kept) < len(batch):
                    # Past the limit: read again from it once the limit moves.
                    self.kafka.seek(tp, limit)
                    self.kafka.pause(tp)
        return records


async def replay(
    settings: AuditSettings,
    *,
    engine: AsyncEngine | None = None,
    progress: Progress | None = None,
    close_enough: int = 2000,
) -> ReplayOutcome:
    """Build a new generation of the trail from offset 0 and switch it in once caught up with
    the live consumer; returns what was done. The service may serve meanwhile."""
    own_engine = engine is None
    engine = engine or create_engine(settings.database_url)
    progress = progress or Progress()
    started = time.monotonic()
    kafka = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=4 * 1024 * 1024,
        fetch_max_bytes=16 * 1024 * 1024,
    )
    await kafka.start()
    try:
        async with engine.begin() as conn:
            generation = await store.start_generation(conn)

        async def append(conn: AsyncConnection, records: Sequence[ConsumedRecord]) -> None:
            await store.append_records(conn, records, generation)

        # History already has its traces: a replay adds no span to them.
        consumer = RecordConsumer(store.replay_consumer(generation), engine, append, traced=False)
        partitions = [
            TopicPartition(topic, partition)
            for topic in settings.trail_topics
            for partition in sorted(await _partitions_of(kafka, topic))
        ]
        kafka.assign(partitions)
        await kafka.seek_to_beginning(*partitions)
        reader = _Reader(kafka, partitions)
        batches: asyncio.Queue[list[store.TrailRecord] | None] = asyncio.Queue(READ_AHEAD)
        done = 0

        async def read_ahead() -> None:
            """Read and prepare batches up to the live positions as they move, until close."""
            while True:
                async with engine.connect() as conn:
                    limits = await _live_positions(conn, settings.trail_topics)
                if reader.behind(limits) <= close_enough:
                    reader.limits = limits
                    await batches.put(None)
                    return
                await batches.put(_prepared(await reader.read(limits)))

        async def write() -> None:
            nonlocal done
            while (batch := await batches.get()) is not None:
                done += await _append(consumer, batch)
                progress.show(done, reader.total())

        # Build beside the live generation, writing one batch while the next are read.
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(read_ahead())
            tasks.create_task(write())
        # Switch: live appends wait on the state row while the last records are appended.
        async with engine.begin() as conn:
            await store.lock_state(conn)
            limits = await _live_positions(conn, settings.trail_topics)
            total = done + reader.behind(limits)
            while reader.behind(limits) > 0:
                done += await _append(consumer, _prepared(await reader.read(limits)))
                progress.show(done, total)
            replaced = await store.switch_generation(conn, generation)
        progress.show(done, done, final=True)
        return ReplayOutcome(generation, replaced, done, time.monotonic() - started)
    finally:
        await kafka.stop()
        if own_engine:
            await engine.dispose()


def _prepared(records: list[Any]) -> list[store.TrailRecord]:
    return [store.trail_record(record) for record in records]


async def _append(consumer: RecordConsumer, records: list[store.TrailRecord]) -> int:
    if not records:
        return 0
    await consumer.consume_batch(records)
    return len(records)


async def _partitions_of(kafka: AIOKafkaConsumer, topic: str) -> set[int]:
    for _ in range(50):
        found = kafka.partitions_for_topic(topic)
        if found:
            return set(found)
        await kafka._client.force_metadata_update()
        await asyncio.sleep(0.1)
    raise RuntimeError(f"topic {topic} not found on the broker")
