"""The relay's progress: the outbox id up to which every row is published, and how the relay
moves it without a write per event.

An id is handed out at insert but its row becomes visible at commit, so a row may appear below
rows already published. The progress therefore passes an id only once every writer that held
the outbox when the relay read below it has ended: its lock gone from `pg_locks`, read in the
same statement as the rows, after the snapshot (a snapshot's xmax cannot tell: a writer that
took its transaction id early may still be running above it). What was published above the
progress meanwhile is remembered (`PublishedAbove`) until then. The progress is written down
now and then (`relay_progress`), so it may lag what is published, never lead it."""

from __future__ import annotations

import json
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import tuple_row
from sqlalchemy import (
    DDL,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Table,
    event,
    func,
    text,
)

from confide_toolkit.database import toolkit_metadata
from confide_toolkit.outbox import kafka_headers

relay_progress = Table(
    "relay_progress",
    toolkit_metadata,
    Column("singleton", Boolean, primary_key=True, server_default=text("true")),
    Column("published_through", BigInteger, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("singleton", name="singleton"),
)
"""One row: every outbox row with an id up to `published_through` is published (or was never
committed). Written at checkpoints, so it may lag what is published, never lead it."""

# SQLAlchemy's DDL() is not annotated.
event.listen(
    relay_progress,
    "after_create",
    DDL("INSERT INTO relay_progress (published_through) VALUES (0)"),  # type: ignore[no-untyped-call]
)


@dataclass(frozen=True)
class PendingEvent:
    id: int
    event_id: uuid.UUID
    topic: str
    partition_key: str
    value: bytes
    headers: list[tuple[str, bytes]]


@dataclass(frozen=True)
class OutboxRead:
    """The rows not published yet one statement saw, and the writers that held the outbox
    (a RowExclusiveLock, from their first outbox row to their end) once the statement's
    snapshot was taken: a row invisible to it with a lower id than a visible one is theirs."""

    pending: list[PendingEvent]
    writers: frozenset[str]
    """Their virtual transaction ids, as `pg_locks` names them."""
    complete: bool
    """Whether every visible row above the progress is in `pending` (no limit cut it short)."""


@dataclass
class _Read:
    """What one read vouches for: every row with an id up to `covered` was visible to it (and
    is published) or belongs to one of its `writers`. Once none of them holds the outbox any
    more at a later read (`writers_ended`), every read after that sees all those rows."""

    covered: int
    writers: frozenset[str]
    writers_ended: bool


Place = tuple[str, int, int]
"""Where Kafka put a record: topic, partition, offset."""


class PublishedAbove:
    """What the relay published above its progress, kept small however long the progress is
    held back (a long transaction elsewhere): the highest id published, the ids below it not
    published yet (*gaps*: a transaction still running, or one rolled back), and each
    partition's records above the progress in offset order."""

    def __init__(self, progress: int) -> None:
        self.highest = progress
        self.gaps: set[int] = set()
        self._records: dict[tuple[str, int], deque[tuple[int, int]]] = {}

    def add(self, row_id: int, place: Place) -> None:
        """Note a published row; rows come in id order within a read."""
        if row_id > self.highest:
            self.gaps.update(range(self.highest + 1, row_id))
            self.highest = row_id
        else:
            self.gaps.discard(row_id)
        topic, partition, offset = place
        self._records.setdefault((topic, partition), deque()).append((row_id, offset))

    def settle(self, progress: int) -> None:
        """Forget what the progress passed."""
        self.gaps = {gap for gap in self.gaps if gap > progress}
        for records in self._records.values():
            while records and records[0][0] <= progress:
                records.popleft()

    def first_offset(self, topic: str, partition: int) -> int | None:
        """The partition's earliest record still above the progress (records are settled from
        the front: a later one already passed does not hide an earlier one still above)."""
        records = self._records.get((topic, partition))
        return records[0][1] if records else None


class Progress:
    """How far the relay published, as one activation knows it: the progress itself
    (`through`), what it published above it (`above`), the reads that may still move it, and
    each partition's last offset (where the next activation's scan of the topic may start)."""

    def __init__(self, recorded: int) -> None:
        self.through = recorded
        self.above = PublishedAbove(recorded)
        self._reads: list[_Read] = []
        self._last_offsets: dict[tuple[str, int], int] = {}

    def note(self, read: OutboxRead, places: Sequence[Place]) -> None:
        """Remember what Kafka acknowledged of `read`, and move the progress as far as the
        reads so far allow."""
        for pending, place in zip(read.pending, places, strict=True):
            self.above.add(pending.id, place)
            topic, partition, offset = place
            self._last_offsets[(topic, partition)] = offset
        self._advance(read)

    def _advance(self, read: OutboxRead) -> None:
        """Move the progress past every id no transaction can still make visible below it."""
        covered = max((p.id for p in read.pending), default=self.through)
        if read.complete:  # every row it could see is published now
            covered = max(covered, self.above.highest)
        # An earlier read whose writers had all ended before this read's snapshot vouches that
        # every row up to its `covered` was visible to this read; this read has published (or
        # published before) every visible row up to its own `covered`.
        final = [r.covered for r in self._reads if r.writers_ended]
        if final and min(max(final), covered) > self.through:
            self.through = min(max(final), covered)
            self.above.settle(self.through)
        # This read's writers were listed after its snapshot: a writer of an earlier read not
        # among them ended before it, so before the next read's snapshot.
        for earlier in self._reads:
            earlier.writers_ended = earlier.writers_ended or not earlier.writers & read.writers
        self._reads.append(_Read(covered, read.writers, writers_ended=not read.writers))
        self._reads = [r for r in self._reads if r.covered > self.through]

    def scan_starts(self) -> list[tuple[str, int, int]]:
        """Per partition published to: its first record still above the progress (everything
        of ours before it is at or below the progress, so the next activation need not read
        it), or the one after the last."""
        starts = []
        for (topic, partition), last_offset in self._last_offsets.items():
            first_above = self.above.first_offset(topic, partition)
            starts.append(
                (topic, partition, last_offset + 1 if first_above is None else first_above)
            )
        return starts


_READ_PENDING = """SELECT w.writers, o.id, o.event_id, o.topic, o.partition_key, o.value, o.headers
FROM (
    SELECT coalesce(array_agg(virtualtransaction), '{}') AS writers FROM pg_locks
    WHERE locktype = 'relation' AND mode = 'RowExclusiveLock' AND granted
    AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
    AND relation = 'outbox'::regclass AND pid <> pg_backend_pid()
) AS w LEFT JOIN LATERAL (
    SELECT id, event_id, topic, partition_key, value, headers::text FROM outbox
    WHERE id > %s OR id = ANY(%s::bigint[]) ORDER BY id LIMIT %s
) AS o ON true ORDER BY o.id"""


async def recorded_progress(conn: psycopg.AsyncConnection[Any]) -> int:
    cursor = await conn.execute("SELECT published_through FROM relay_progress")
    row = await cursor.fetchone()
    return int(row["published_through"]) if row else 0


async def read_pending(
    conn: psycopg.AsyncConnection[Any], above: PublishedAbove, limit: int
) -> OutboxRead:
    """The oldest rows not published yet (above the highest published, or in its gaps), and the
    writers holding the outbox when they were read: one statement, so the lock table is read
    after the snapshot was taken (a writer not listed had ended by then, or had not yet taken
    an outbox id, so every id it takes is above all the read could see)."""
    cursor = conn.cursor(row_factory=tuple_row)
    await cursor.execute(_READ_PENDING, (above.highest, sorted(above.gaps), limit))
    rows = await cursor.fetchall()
    # The events of one span share their headers: each distinct text is parsed once per read
    # (the relay only reads them).
    parsed: dict[str, list[tuple[str, bytes]]] = {}
    pending = []
    for _, row_id, event_id, topic, partition_key, value, stored in rows:
        if row_id is None:  # no row pending: the statement still lists the writers
            continue
        if stored not in parsed:
            parsed[stored] = kafka_headers(json.loads(stored))
        pending.append(PendingEvent(row_id, event_id, topic, partition_key, value, parsed[stored]))
    return OutboxRead(pending, frozenset(rows[0][0]), complete=len(pending) < limit)
