"""The event store: each aggregate is the stream of its domain events, appended with optimistic
concurrency on the stream version; read models are projections applied in the same transaction
and can be rebuilt from the store at any time.

Snapshots bound the cost of loading a long stream: an aggregate may save its state at a version
and later load that state plus only the events recorded after it. A snapshot is a cache of what
the events say, never a second truth: deleting every snapshot changes no answer, and a snapshot
whose `schema_version` is not the one the aggregate asks for is ignored (so changing the shape
of an aggregate's state needs no migration of old snapshots). Like domain events, snapshots hold
ciphertext at most, never plaintext personal data.

What a domain event is, and how its stored versions are read, is `confide_toolkit.domain_events`;
events already stored are never rewritten, they are upcast each time they are read, so `load`
and `rebuild` still replay them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol
from uuid import UUID

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Identity,
    Integer,
    String,
    Table,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import UUID as PG_UUID
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from confide_toolkit.clock import Clock
from confide_toolkit.database import driver_connection, toolkit_metadata
from confide_toolkit.domain_events import DomainEvent, DomainEventTypes, DomainUpcasters
from confide_toolkit.ids import uuid7

stored_events = Table(
    "stored_events",
    toolkit_metadata,
    Column("position", BigInteger, Identity(always=True), primary_key=True),
    Column("stream_id", PG_UUID(as_uuid=True), nullable=False),
    Column("stream_type", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("event_id", PG_UUID(as_uuid=True), nullable=False, unique=True),
    Column("event_type", String(128), nullable=False),
    # Rows recorded before events were versioned are version 1.
    Column("schema_version", Integer, nullable=False, server_default=text("1")),
    Column("data", JSONB, nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("stream_id", "version", name="uq_stored_events_stream_version"),
)

stream_snapshots = Table(
    "stream_snapshots",
    toolkit_metadata,
    Column("stream_id", PG_UUID(as_uuid=True), primary_key=True),
    Column("version", Integer, nullable=False),
    Column("schema_version", Integer, nullable=False),
    Column("state", JSONB, nullable=False),
    Column("taken_at", DateTime(timezone=True), nullable=False),
)
"""The newest snapshot of each stream that has one (see the module's docstring)."""

# The statements of every command (lock, load, append) and a rebuild's reads go to psycopg directly
# (`database.driver_connection`): through SQLAlchemy, building, caching and adapting them cost
# a command more CPU than its round trips.

_LOCK_STREAM = "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))"

_LOAD = (
    "SELECT position, version, event_id, event_type, schema_version, data, recorded_at"
    " FROM stored_events WHERE stream_id = %s ORDER BY version"
)
"""A stream's events, their columns in the order `EventStore._recorded` reads them."""

_LOAD_FROM_SNAPSHOT = """
SELECT 0 AS kind, NULL::bigint, version, NULL::uuid, NULL::text, schema_version, state, taken_at
  FROM stream_snapshots
 WHERE stream_id = %(stream)s AND schema_version = %(schema)s
UNION ALL
SELECT 1 AS kind, position, version, event_id, event_type, schema_version, data, recorded_at
  FROM stored_events
 WHERE stream_id = %(stream)s
   AND version > COALESCE((SELECT version FROM stream_snapshots
                            WHERE stream_id = %(stream)s AND schema_version = %(schema)s), 0)
 ORDER BY kind, version"""
"""The usable snapshot (kind 0), if any, and the events after it (kind 1), in one query."""

_READ_ALL = (
    "SELECT stream_id, position, version, event_id, event_type, schema_version, data, recorded_at"
    " FROM stored_events WHERE position > %s ORDER BY position LIMIT %s"
)
"""Every stream's events after a position: the stream, then the columns of `_LOAD`."""

_APPEND = """
INSERT INTO stored_events
       (stream_id, stream_type, version, event_id, event_type, schema_version, data, recorded_at)
SELECT %(stream)b, stream_type, version, event_id, event_type, schema_version, data::jsonb,
       %(now)b
  FROM unnest(%(stream_types)b::text[], %(versions)b::int[], %(event_ids)b::uuid[],
              %(event_types)b::text[], %(schema_versions)b::int[], %(data)b::text[])
       AS appended (stream_type, version, event_id, event_type, schema_version, data)
    ON CONFLICT ON CONSTRAINT uq_stored_events_stream_version DO NOTHING
RETURNING position, event_id"""
"""The events' columns as arrays, sent in binary (`%b`): in text form each array is quoted and
escaped element by element in Python, which made the append of a grant's two events about a
tenth dearer and one of twenty events two and a half times."""

_TAKE_BACK = "DELETE FROM stored_events WHERE event_id = ANY(%s::uuid[])"


class ConcurrencyConflict(Exception):
    """Another writer appended to the stream since it was loaded: reload and decide again."""

    def __init__(self, stream_id: UUID, expected_version: int) -> None:
        super().__init__(f"stream {stream_id} is no longer at version {expected_version}")
        self.stream_id = stream_id
        self.expected_version = expected_version


@dataclass(frozen=True)
class RecordedEvent:
    """A domain event as the store holds it: its place in the stream and in the whole store."""

    position: int
    stream_id: UUID
    version: int
    event_id: UUID
    recorded_at: datetime
    event: DomainEvent


@dataclass(frozen=True)
class Snapshot:
    """An aggregate's state as its events left it at stream `version` (JSON-ready)."""

    version: int
    state: dict[str, Any]


@dataclass(frozen=True)
class LoadedStream:
    """A stream as `EventStore.load_stream` reads it: the usable snapshot, if any, and the
    events recorded after it (every event when there is no snapshot)."""

    snapshot: Snapshot | None
    events: list[RecordedEvent]

    @property
    def version(self) -> int:
        """The stream's version: what the next append must name as `expected_version`."""
        if self.events:
            return self.events[-1].version
        return self.snapshot.version if self.snapshot else 0

    @property
    def since_snapshot(self) -> int:
        """How many events a load replays on top of the snapshot: when an aggregate sees this
        grow past its threshold, it saves a new snapshot."""
        return self.version - (self.snapshot.version if self.snapshot else 0)


class SnapshottedAggregate(Protocol):
    """An aggregate loaded from its snapshot and the events after it, with new events to
    append (consent's ledger, messaging's conversation)."""

    version: int
    """The stream's version it was loaded at (and, once saved, moved to)."""
    snapshot_version: int
    """The version of the snapshot it was restored from (0: from the first event)."""
    pending: list[DomainEvent]

    def snapshot_state(self) -> dict[str, Any]: ...


Projection = Callable[[AsyncConnection, RecordedEvent], Awaitable[None]]
"""A read model's update for one event; it runs in the transaction of the append."""


@dataclass(frozen=True)
class AppendProjection:
    """A read model's update that sees each append whole: `apply(conn, records)` gets every
    event one `append` recorded, in order, in its transaction, so that a row the append creates
    and then changes (a consent and its receipt) is written once. A rebuild hands it the stored
    events of every stream a batch at a time, in the order they were recorded: it must give the
    same rows whatever the batches."""

    apply: Callable[[AsyncConnection, Sequence[RecordedEvent]], Awaitable[None]]


ReadModelUpdate = Projection | AppendProjection
"""What an `EventStore` (and a rebuild) accepts as a projection."""


class EventStore:
    """The operations the store needs, and no more: append, load a stream (whole, or from its
    snapshot), keep a snapshot, read all from a position (for rebuilding projections)."""

    def __init__(
        self,
        event_types: Iterable[type[DomainEvent]],
        clock: Clock,
        projections: Sequence[ReadModelUpdate] = (),
        upcasters: DomainUpcasters | None = None,
    ) -> None:
        """Raises TypeError when an event type lacks its name or version, two types share a
        name, or an upcaster from an older version of a type is missing."""
        self._types = DomainEventTypes(event_types, upcasters)
        self._clock = clock
        self._projections = tuple(projections)

    async def append(
        self,
        conn: AsyncConnection,
        stream_id: UUID,
        expected_version: int,
        events: Sequence[DomainEvent],
    ) -> list[RecordedEvent]:
        """Append events after `expected_version` (0 for a new stream), then apply each
        projection in turn to all of them, all in the caller's transaction.

        Raises ConcurrencyConflict when the stream moved on, having written nothing; the caller
        reloads and decides again. `expected_version` is the version the stream was loaded at
        (`LoadedStream.version`), never a number made up by the caller."""
        if not events:
            return []
        now = self._clock.now()
        for event in events:
            self._types.check(event)
        versions = [expected_version + offset for offset in range(1, len(events) + 1)]
        event_ids = [uuid7() for _ in events]
        driver = await driver_connection(conn)
        # One round trip: a stale `expected_version` collides with a version already recorded
        # and inserts nothing for that row (whoever appended first wins, even concurrently:
        # the unique index makes the later writer wait for the earlier one's commit).
        cursor = await driver.execute(
            _APPEND,
            {
                "stream": stream_id,
                "now": now,
                "stream_types": [type(e).stream_type or type(e).__name__ for e in events],
                "versions": versions,
                "event_ids": event_ids,
                "event_types": [type(e).event_type for e in events],
                "schema_versions": [type(e).schema_version for e in events],
                "data": [e.model_dump_json() for e in events],
            },
        )
        position_of = dict((event_id, position) for position, event_id in await cursor.fetchall())
        if len(position_of) != len(events):
            # Later events of the batch may have landed past the collision: take them back, so
            # the stream is as it was even if the caller goes on with the transaction.
            if position_of:
                await driver.execute(_TAKE_BACK, (list(position_of),))
            raise ConcurrencyConflict(stream_id, expected_version)
        positions = [position_of[event_id] for event_id in event_ids]
        recorded = [
            RecordedEvent(
                position=position,
                stream_id=stream_id,
                version=version,
                event_id=event_id,
                recorded_at=now,
                event=event,
            )
            for position, version, event_id, event in zip(
                positions, versions, event_ids, events, strict=True
            )
        ]
        for projection in self._projections:
            await _project(conn, projection, recorded)
        return recorded

    async def save(
        self,
        conn: AsyncConnection,
        stream_id: UUID,
        aggregate: SnapshottedAggregate,
        *,
        snapshot_schema: int,
        snapshot_every: int,
    ) -> list[RecordedEvent]:
        """Append the aggregate's pending events and move it to its new version; once
        `snapshot_every` events have piled on its snapshot, keep a new one (so that its loads
        stay two short queries). Raises ConcurrencyConflict if the stream moved on."""
        recorded = await self.append(conn, stream_id, aggregate.version, aggregate.pending)
        aggregate.version += len(recorded)
        aggregate.pending.clear()
        if aggregate.version - aggregate.snapshot_version >= snapshot_every:
            await self.save_snapshot(
                conn,
                stream_id,
                Snapshot(aggregate.version, aggregate.snapshot_state()),
                schema_version=snapshot_schema,
            )
            aggregate.snapshot_version = aggregate.version
        return recorded

    async def load(
        self, conn: AsyncConnection, stream_id: UUID, *, for_change: bool = False
    ) -> list[RecordedEvent]:
        """Every event of one stream, in version order (empty for an unknown stream).

        `for_change`: lock the stream until the transaction ends first, so that commands on
        one aggregate queue up instead of racing (optimistic concurrency still guards the
        append)."""
        rows = await self._query(conn, _LOAD, (stream_id,), stream_id, for_change)
        return [self._recorded(stream_id, row) for row in rows]

    async def load_stream(
        self,
        conn: AsyncConnection,
        stream_id: UUID,
        *,
        snapshot_schema: int,
        for_change: bool = False,
    ) -> LoadedStream:
        """The stream's newest snapshot of `snapshot_schema` (if any) and the events after it:
        one short query however long the stream has grown. `for_change` as for `load`."""
        rows = await self._query(
            conn,
            _LOAD_FROM_SNAPSHOT,
            {"stream": stream_id, "schema": snapshot_schema},
            stream_id,
            for_change,
        )
        snapshot: Snapshot | None = None
        events: list[RecordedEvent] = []
        for kind, *columns in rows:
            if kind == 0:
                _, version, _, _, _, state, _ = columns
                snapshot = Snapshot(version, state)
            else:
                events.append(self._recorded(stream_id, columns))
        return LoadedStream(snapshot, events)

    @staticmethod
    async def _query(
        conn: AsyncConnection,
        query: str,
        params: Sequence[Any] | Mapping[str, Any],
        stream_id: UUID,
        for_change: bool,
    ) -> list[tuple[Any, ...]]:
        driver = await driver_connection(conn)
        if not for_change:
            cursor = await driver.execute(query, params)
        else:
            # The lock and the read in one round trip, the read still after the lock: each
            # statement of a pipeline sees what was committed before it began.
            async with driver.pipeline():
                await driver.execute(_LOCK_STREAM, (f"confide.stream:{stream_id}",))
                cursor = await driver.execute(query, params)
        rows: list[tuple[Any, ...]] = await cursor.fetchall()
        return rows

    async def save_snapshot(
        self, conn: AsyncConnection, stream_id: UUID, snapshot: Snapshot, *, schema_version: int
    ) -> None:
        """Keep `snapshot` as the stream's newest, in the caller's transaction (an older one
        never replaces a newer one of the same schema)."""
        statement = pg_insert(stream_snapshots).values(
            stream_id=stream_id,
            version=snapshot.version,
            schema_version=schema_version,
            state=snapshot.state,
            taken_at=self._clock.now(),
        )
        excluded = statement.excluded
        await conn.execute(
            statement.on_conflict_do_update(
                index_elements=[stream_snapshots.c.stream_id],
                set_={
                    "version": excluded.version,
                    "schema_version": excluded.schema_version,
                    "state": excluded.state,
                    "taken_at": excluded.taken_at,
                },
                where=(stream_snapshots.c.schema_version != excluded.schema_version)
                | (stream_snapshots.c.version < excluded.version),
            )
        )

    async def read_all(
        self, conn: AsyncConnection, after_position: int = 0, limit: int = 1000
    ) -> list[RecordedEvent]:
        """Events of every stream in the order they were recorded, after a position."""
        driver = await driver_connection(conn)
        cursor = await driver.execute(_READ_ALL, (after_position, limit))
        return [
            self._recorded(stream_id, columns) for stream_id, *columns in await cursor.fetchall()
        ]

    async def rebuild(self, conn: AsyncConnection, projection: ReadModelUpdate) -> int:
        """Replay the whole store through one projection (after truncating its read model)."""
        position, count = 0, 0
        while batch := await self.read_all(conn, position):
            await _project(conn, projection, batch)
            position, count = batch[-1].position, count + len(batch)
        return count

    def _recorded(self, stream_id: UUID, columns: Sequence[Any]) -> RecordedEvent:
        """An event from its columns, in the order `_LOAD` reads them."""
        position, version, event_id, event_type, schema_version, data, recorded_at = columns
        return RecordedEvent(
            position=position,
            stream_id=stream_id,
            version=version,
            event_id=event_id,
            recorded_at=recorded_at,
            event=self._types.read(event_type, schema_version, data),
        )


async def _project(
    conn: AsyncConnection, projection: ReadModelUpdate, records: Sequence[RecordedEvent]
) -> None:
    if isinstance(projection, AppendProjection):
        await projection.apply(conn, records)
        return
    for record in records:
        await projection(conn, record)
