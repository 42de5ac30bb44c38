"""The event store against real PostgreSQL: optimistic concurrency, streams, projections,
snapshots (versioned domain events: test_event_versions.py)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from confide_toolkit.clock import FrozenClock
from confide_toolkit.domain_events import DomainEvent
from confide_toolkit.event_store import (
    AppendProjection,
    ConcurrencyConflict,
    EventStore,
    RecordedEvent,
    Snapshot,
)
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .tab_stream import ItemAdded, TabOpened, project_total, tab_store, tab_totals, with_tab_totals

pytestmark = pytest.mark.integration


@pytest.fixture
async def engine(toolkit_engine: AsyncEngine) -> AsyncEngine:
    return await with_tab_totals(toolkit_engine)


@pytest.fixture
def store() -> EventStore:
    return tab_store()


async def test_appended_events_load_back_in_order(engine: AsyncEngine, store: EventStore) -> None:
    tab = uuid.uuid4()
    async with engine.begin() as conn:
        await store.append(conn, tab, 0, [TabOpened(tab_id=tab), ItemAdded(amount=5)])
        await store.append(conn, tab, 2, [ItemAdded(amount=7)])
    async with engine.connect() as conn:
        loaded = await store.load(conn, tab)
    assert [r.version for r in loaded] == [1, 2, 3]
    assert [r.event for r in loaded] == [
        TabOpened(tab_id=tab),
        ItemAdded(amount=5),
        ItemAdded(amount=7),
    ]


async def test_conflicting_append_is_refused_and_writes_nothing(
    engine: AsyncEngine, store: EventStore
) -> None:
    tab = uuid.uuid4()
    async with engine.begin() as conn:
        await store.append(conn, tab, 0, [TabOpened(tab_id=tab)])
    # Two writers loaded version 1; the second one to append loses.
    async with engine.begin() as conn:
        await store.append(conn, tab, 1, [ItemAdded(amount=1)])
    with pytest.raises(ConcurrencyConflict):
        async with engine.begin() as conn:
            await store.append(conn, tab, 1, [ItemAdded(amount=100)])
    with pytest.raises(ConcurrencyConflict):
        async with engine.begin() as conn:
            await store.append(conn, tab, 0, [TabOpened(tab_id=tab)])
    async with engine.connect() as conn:
        assert [r.version for r in await store.load(conn, tab)] == [1, 2]
        total = await conn.scalar(select(tab_totals.c.total).where(tab_totals.c.tab_id == tab))
    assert total == 1


async def test_concurrent_appends_at_the_same_version_let_exactly_one_win(
    engine: AsyncEngine, store: EventStore
) -> None:
    import asyncio

    tab = uuid.uuid4()
    async with engine.begin() as conn:
        await store.append(conn, tab, 0, [TabOpened(tab_id=tab)])

    async def add(amount: int) -> bool:
        try:
            async with engine.begin() as conn:
                await store.append(conn, tab, 1, [ItemAdded(amount=amount)])
                await asyncio.sleep(0.2)  # hold the transaction open to overlap the other
            return True
        except ConcurrencyConflict:
            return False

    results = await asyncio.gather(add(1), add(2))
    assert sorted(results) == [False, True]


@pytest.mark.parametrize("from_snapshot", [False, True])
async def test_a_load_for_change_waits_for_the_other_command_and_reads_what_it_committed(
    engine: AsyncEngine, store: EventStore, from_snapshot: bool
) -> None:
    import asyncio

    tab = uuid.uuid4()
    async with engine.begin() as conn:
        await store.append(conn, tab, 0, [TabOpened(tab_id=tab)])

    async def load(conn: AsyncConnection) -> list[RecordedEvent]:
        if from_snapshot:
            stream = await store.load_stream(
                conn, tab, snapshot_schema=SNAPSHOT_SCHEMA, for_change=True
            )
            return stream.events
        return await store.load(conn, tab, for_change=True)

    first_loaded = asyncio.Event()

    async def first() -> None:
        async with engine.begin() as conn:
            loaded = await load(conn)
            first_loaded.set()
            await asyncio.sleep(0.3)  # the second command arrives meanwhile
            await store.append(conn, tab, loaded[-1].version, [ItemAdded(amount=1)])

    async def second() -> list[int]:
        await first_loaded.wait()
        async with engine.begin() as conn:
            loaded = await load(conn)  # queues behind the first until it commits
            await store.append(conn, tab, loaded[-1].version, [ItemAdded(amount=2)])
        return [r.version for r in loaded]

    _, seen_by_second = await asyncio.gather(first(), second())
    # Without the lock the second would read version 1 and its append would be refused.
    assert seen_by_second == [1, 2]
    async with engine.connect() as conn:
        events = [r.event for r in await store.load(conn, tab)]
    assert events == [TabOpened(tab_id=tab), ItemAdded(amount=1), ItemAdded(amount=2)]


async def test_projection_is_updated_in_the_same_transaction(
    engine: AsyncEngine, store: EventStore
) -> None:
    tab = uuid.uuid4()
    with pytest.raises(RuntimeError):
        async with engine.begin() as conn:
            await store.append(conn, tab, 0, [TabOpened(tab_id=tab), ItemAdded(amount=3)])
            raise RuntimeError("abort")
    async with engine.connect() as conn:
        assert (
            await conn.scalar(select(tab_totals.c.total).where(tab_totals.c.tab_id == tab)) is None
        )
        assert await store.load(conn, tab) == []


async def test_read_model_rebuilds_from_the_store(engine: AsyncEngine, store: EventStore) -> None:
    tabs = [uuid.uuid4() for _ in range(3)]
    async with engine.begin() as conn:
        for i, tab in enumerate(tabs):
            await store.append(conn, tab, 0, [TabOpened(tab_id=tab), ItemAdded(amount=i + 1)])
    async with engine.begin() as conn:
        await conn.execute(text("TRUNCATE tab_totals"))
        replayed = await store.rebuild(conn, project_total)
        totals = dict((await conn.execute(select(tab_totals.c.tab_id, tab_totals.c.total))).all())
    assert replayed == 6
    assert totals == {tab: i + 1 for i, tab in enumerate(tabs)}


async def test_an_append_projection_writes_each_row_once_per_append_and_rebuilds_the_same(
    engine: AsyncEngine,
) -> None:
    appends: list[list[int]] = []

    async def total_once(conn: AsyncConnection, records: Sequence[RecordedEvent]) -> None:
        # A tab opened in this append is inserted with its total; another is updated once.
        appends.append([record.version for record in records])
        opened: set[uuid.UUID] = set()
        added: dict[uuid.UUID, int] = {}
        for record in records:
            if isinstance(record.event, TabOpened):
                opened.add(record.stream_id)
            amount = record.event.amount if isinstance(record.event, ItemAdded) else 0
            added[record.stream_id] = added.get(record.stream_id, 0) + amount
        for tab, amount in added.items():
            if tab in opened:
                await conn.execute(tab_totals.insert().values(tab_id=tab, total=amount))
            else:
                await conn.execute(
                    tab_totals.update()
                    .where(tab_totals.c.tab_id == tab)
                    .values(total=tab_totals.c.total + amount)
                )

    projection = AppendProjection(total_once)
    store = EventStore([TabOpened, ItemAdded], FrozenClock(), projections=[projection])
    tabs = [uuid.uuid4() for _ in range(3)]
    async with engine.begin() as conn:
        for i, tab in enumerate(tabs):
            opened = [TabOpened(tab_id=tab), ItemAdded(amount=i + 1)]
            await store.append(conn, tab, 0, opened)
            await store.append(conn, tab, 2, [ItemAdded(amount=10), ItemAdded(amount=100)])
    select_totals = select(tab_totals.c.tab_id, tab_totals.c.total)
    async with engine.connect() as conn:
        appended = dict((await conn.execute(select_totals)).all())
    async with engine.begin() as conn:
        await conn.execute(text("TRUNCATE tab_totals"))
        replayed = await store.rebuild(conn, projection)
        rebuilt = dict((await conn.execute(select_totals)).all())

    assert appends[:6] == [[1, 2], [3, 4]] * 3
    assert replayed == 12
    assert appended == rebuilt == {tab: i + 111 for i, tab in enumerate(tabs)}


async def test_a_refused_append_takes_back_the_events_that_landed_past_the_collision(
    engine: AsyncEngine, store: EventStore
) -> None:
    tab = uuid.uuid4()
    async with engine.begin() as conn:
        await store.append(conn, tab, 0, [TabOpened(tab_id=tab), ItemAdded(amount=1)])
    # Loaded at version 1, appending two events: version 2 collides, version 3 would be new.
    async with engine.begin() as conn:
        with pytest.raises(ConcurrencyConflict):
            await store.append(conn, tab, 1, [ItemAdded(amount=50), ItemAdded(amount=60)])
        # The transaction is still usable and holds nothing of the refused append.
        assert [r.version for r in await store.load(conn, tab)] == [1, 2]
    async with engine.connect() as conn:
        assert [r.event for r in await store.load(conn, tab)] == [
            TabOpened(tab_id=tab),
            ItemAdded(amount=1),
        ]
        total = await conn.scalar(select(tab_totals.c.total).where(tab_totals.c.tab_id == tab))
    assert total == 1


SNAPSHOT_SCHEMA = 1


async def test_a_stream_loads_from_its_snapshot_and_the_events_after_it(
    engine: AsyncEngine, store: EventStore
) -> None:
    tab = uuid.uuid4()
    async with engine.begin() as conn:
        await store.append(conn, tab, 0, [TabOpened(tab_id=tab), ItemAdded(amount=2)])
        await store.save_snapshot(
            conn, tab, Snapshot(2, {"total": 2}), schema_version=SNAPSHOT_SCHEMA
        )
        await store.append(conn, tab, 2, [ItemAdded(amount=5)])
    async with engine.connect() as conn:
        loaded = await store.load_stream(conn, tab, snapshot_schema=SNAPSHOT_SCHEMA)
    assert loaded.snapshot == Snapshot(2, {"total": 2})
    assert [r.event for r in loaded.events] == [ItemAdded(amount=5)]
    assert (loaded.version, loaded.since_snapshot) == (3, 1)


@dataclass
class Tab:
    """A toy aggregate: a running total, saved through `EventStore.save`."""

    tab_id: uuid.UUID
    total: int = 0
    version: int = 0
    snapshot_version: int = 0
    pending: list[DomainEvent] = field(default_factory=list)

    def add(self, amount: int) -> None:
        self.total += amount
        self.pending.append(ItemAdded(amount=amount))

    def snapshot_state(self) -> dict[str, Any]:
        return {"total": self.total}


async def test_saving_an_aggregate_keeps_a_snapshot_once_enough_events_piled_on_the_last(
    engine: AsyncEngine, store: EventStore
) -> None:
    tab = Tab(uuid.uuid4())
    tab.pending.append(TabOpened(tab_id=tab.tab_id))
    tab.add(2)
    async with engine.begin() as conn:
        await store.save(conn, tab.tab_id, tab, snapshot_schema=SNAPSHOT_SCHEMA, snapshot_every=3)
        tab.add(5)  # the third event since the start: a snapshot is due
        await store.save(conn, tab.tab_id, tab, snapshot_schema=SNAPSHOT_SCHEMA, snapshot_every=3)
        tab.add(1)
        await store.save(conn, tab.tab_id, tab, snapshot_schema=SNAPSHOT_SCHEMA, snapshot_every=3)
    assert (tab.version, tab.snapshot_version, tab.pending) == (4, 3, [])
    async with engine.connect() as conn:
        loaded = await store.load_stream(conn, tab.tab_id, snapshot_schema=SNAPSHOT_SCHEMA)
    assert loaded.snapshot == Snapshot(3, {"total": 7})
    assert [r.event for r in loaded.events] == [ItemAdded(amount=1)]


async def test_a_snapshot_of_another_schema_is_ignored_and_the_whole_stream_replays(
    engine: AsyncEngine, store: EventStore
) -> None:
    tab = uuid.uuid4()
    async with engine.begin() as conn:
        await store.append(conn, tab, 0, [TabOpened(tab_id=tab), ItemAdded(amount=2)])
        await store.save_snapshot(conn, tab, Snapshot(2, {"old": "shape"}), schema_version=1)
    async with engine.connect() as conn:
        loaded = await store.load_stream(conn, tab, snapshot_schema=2)
    assert loaded.snapshot is None
    assert [r.version for r in loaded.events] == [1, 2]
    assert (loaded.version, loaded.since_snapshot) == (2, 2)


async def test_an_older_snapshot_never_replaces_a_newer_one(
    engine: AsyncEngine, store: EventStore
) -> None:
    tab = uuid.uuid4()
    async with engine.begin() as conn:
        await store.append(conn, tab, 0, [TabOpened(tab_id=tab), ItemAdded(amount=2)])
        await store.save_snapshot(conn, tab, Snapshot(2, {"total": 2}), schema_version=1)
        await store.save_snapshot(conn, tab, Snapshot(1, {"total": 0}), schema_version=1)
    async with engine.connect() as conn:
        loaded = await store.load_stream(conn, tab, snapshot_schema=1)
    assert loaded.snapshot == Snapshot(2, {"total": 2})
    assert loaded.events == []


async def test_an_unknown_stream_loads_empty(engine: AsyncEngine, store: EventStore) -> None:
    async with engine.connect() as conn:
        loaded = await store.load_stream(conn, uuid.uuid4(), snapshot_schema=SNAPSHOT_SCHEMA)
    assert (loaded.snapshot, loaded.events, loaded.version) == (None, [], 0)
