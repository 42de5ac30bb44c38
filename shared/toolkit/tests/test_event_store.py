"""The event store against real PostgreSQL: optimistic concurrency, streams, projections."""

from __future__ import annotations

import uuid

import pytest
from confide_toolkit.clock import FrozenClock
from confide_toolkit.event_store import (
    ConcurrencyConflict,
    DomainEvent,
    EventStore,
    RecordedEvent,
    Snapshot,
)
from sqlalchemy import Column, Integer, MetaData, Table, select, text
from sqlalchemy.dialects.postgresql import UUID as PG_UUID
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

pytestmark = pytest.mark.integration


class TabOpened(DomainEvent):
    stream_type = "tab"
    tab_id: uuid.UUID


class ItemAdded(DomainEvent):
    stream_type = "tab"
    amount: int


read_metadata = MetaData()
tab_totals = Table(
    "tab_totals",
    read_metadata,
    Column("tab_id", PG_UUID(as_uuid=True), primary_key=True),
    Column("total", Integer, nullable=False),
)


async def project_total(conn: AsyncConnection, record: RecordedEvent) -> None:
    if isinstance(record.event, TabOpened):
        await conn.execute(tab_totals.insert().values(tab_id=record.stream_id, total=0))
    elif isinstance(record.event, ItemAdded):
        await conn.execute(
            tab_totals.update()
            .where(tab_totals.c.tab_id == record.stream_id)
            .values(total=tab_totals.c.total + record.event.amount)
        )


@pytest.fixture
async def engine(toolkit_engine: AsyncEngine) -> AsyncEngine:
    async with toolkit_engine.begin() as conn:
        await conn.run_sync(read_metadata.create_all)
    return toolkit_engine


@pytest.fixture
def store() -> EventStore:
    return EventStore([TabOpened, ItemAdded], FrozenClock(), projections=[project_total])


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
