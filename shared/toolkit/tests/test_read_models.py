"""Rebuilding a read model from the event store while appends go on, against real PostgreSQL:
a damaged model is restored and reported changed, an intact one unchanged, readers see the old
rows meanwhile, and an append racing the rebuild is neither lost nor applied twice."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from confide_toolkit.clock import FrozenClock
from confide_toolkit.domain_events import DomainEvent
from confide_toolkit.event_store import EventStore, RecordedEvent
from confide_toolkit.read_models import ReadModel, main, rebuild_read_model
from sqlalchemy import Column, Integer, MetaData, String, Table, select
from sqlalchemy.dialects.postgresql import UUID as PG_UUID
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

pytestmark = pytest.mark.integration


class TabOpened(DomainEvent):
    stream_type = "tab"
    event_type = "TabOpened"
    schema_version = 1
    label: str


class ItemAdded(DomainEvent):
    stream_type = "tab"
    event_type = "ItemAdded"
    schema_version = 1
    amount: int


read_metadata = MetaData()
tabs = Table(
    "tabs",
    read_metadata,
    Column("tab_id", PG_UUID(as_uuid=True), primary_key=True),
    Column("label", String(32), nullable=False),
    Column("total", Integer, nullable=False),
)
items = Table(
    "tab_items",
    read_metadata,
    Column("position", Integer, primary_key=True),
    Column("tab_id", PG_UUID(as_uuid=True), nullable=False),
    Column("amount", Integer, nullable=False),
)


async def project_tab(conn: AsyncConnection, record: RecordedEvent) -> None:
    event = record.event
    if isinstance(event, TabOpened):
        await conn.execute(
            tabs.insert().values(tab_id=record.stream_id, label=event.label, total=0)
        )
    elif isinstance(event, ItemAdded):
        await conn.execute(
            items.insert().values(
                position=record.position, tab_id=record.stream_id, amount=event.amount
            )
        )
        await conn.execute(
            tabs.update()
            .where(tabs.c.tab_id == record.stream_id)
            .values(total=tabs.c.total + event.amount)
        )


@pytest.fixture
async def engine(toolkit_engine: AsyncEngine) -> AsyncEngine:
    async with toolkit_engine.begin() as conn:
        await conn.run_sync(read_metadata.create_all)
    return toolkit_engine


@pytest.fixture
def store() -> EventStore:
    return EventStore([TabOpened, ItemAdded], FrozenClock(), projections=[project_tab])


def model_of(store: EventStore, projection: object = project_tab) -> ReadModel:
    return ReadModel("tabs", (tabs, items), store, projection)  # type: ignore[arg-type]


async def open_tabs(engine: AsyncEngine, store: EventStore, count: int) -> list[uuid.UUID]:
    opened = [uuid.uuid4() for _ in range(count)]
    async with engine.begin() as conn:
        for i, tab in enumerate(opened):
            await store.append(conn, tab, 0, [TabOpened(label=f"tab {i}"), ItemAdded(amount=i + 1)])
    return opened


async def content(engine: AsyncEngine) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    async with engine.connect() as conn:
        tab_rows = (await conn.execute(select(tabs).order_by(tabs.c.tab_id))).all()
        item_rows = (await conn.execute(select(items).order_by(items.c.position))).all()
    return [tuple(r) for r in tab_rows], [tuple(r) for r in item_rows]


async def test_an_intact_read_model_is_rebuilt_unchanged(
    engine: AsyncEngine, store: EventStore
) -> None:
    await open_tabs(engine, store, 3)
    before = await content(engine)

    rebuilt = await rebuild_read_model(engine, model_of(store))

    assert rebuilt.events == 6
    assert rebuilt.unchanged
    assert {name: s.rows for name, s in rebuilt.after.items()} == {"tabs": 3, "tab_items": 3}
    assert rebuilt.report() == (
        "tabs: 6 events replayed; tabs 3 -> 3 rows, tab_items 3 -> 3 rows; unchanged"
    )
    assert await content(engine) == before


async def test_a_damaged_read_model_is_restored_and_reported_changed(
    engine: AsyncEngine, store: EventStore
) -> None:
    opened = await open_tabs(engine, store, 3)
    before = await content(engine)
    async with engine.begin() as conn:
        await conn.execute(tabs.update().where(tabs.c.tab_id == opened[0]).values(total=999))
        await conn.execute(items.delete().where(items.c.tab_id == opened[1]))

    rebuilt = await rebuild_read_model(engine, model_of(store))

    assert not rebuilt.unchanged
    assert rebuilt.changed_tables == ["tabs", "tab_items"]
    assert rebuilt.before["tab_items"].rows == 2 and rebuilt.after["tab_items"].rows == 3
    assert "changed (tabs, tab_items differed from the events)" in rebuilt.report()
    assert await content(engine) == before
    # Once restored, a second rebuild finds nothing to change.
    assert (await rebuild_read_model(engine, model_of(store))).unchanged


async def test_an_append_during_a_rebuild_waits_and_is_neither_lost_nor_doubled(
    engine: AsyncEngine, store: EventStore
) -> None:
    tab = (await open_tabs(engine, store, 1))[0]
    replaying, go_on = asyncio.Event(), asyncio.Event()

    async def slow_projection(conn: AsyncConnection, record: RecordedEvent) -> None:
        replaying.set()
        await go_on.wait()
        await project_tab(conn, record)

    rebuild = asyncio.create_task(rebuild_read_model(engine, model_of(store, slow_projection)))
    await asyncio.wait_for(replaying.wait(), 10)

    async def append() -> None:
        async with engine.begin() as conn:
            await store.append(conn, tab, 2, [ItemAdded(amount=10)])

    appending = asyncio.create_task(append())
    await asyncio.sleep(0.3)
    assert not appending.done(), "the append must wait for the rebuild's lock"
    # Meanwhile a reader sees the read model as it was, never empty or half-built.
    async with engine.connect() as conn:
        assert await conn.scalar(select(tabs.c.total).where(tabs.c.tab_id == tab)) == 1

    go_on.set()
    rebuilt = await asyncio.wait_for(rebuild, 10)
    await asyncio.wait_for(appending, 10)

    assert rebuilt.events == 2 and rebuilt.unchanged
    _, item_rows = await content(engine)
    assert [row[2] for row in item_rows] == [1, 10]
    async with engine.connect() as conn:
        assert await conn.scalar(select(tabs.c.total).where(tabs.c.tab_id == tab)) == 11


async def test_an_append_in_flight_when_the_rebuild_starts_is_replayed_once(
    engine: AsyncEngine, store: EventStore
) -> None:
    tab = (await open_tabs(engine, store, 1))[0]
    async with engine.connect() as conn:
        transaction = await conn.begin()
        await store.append(conn, tab, 2, [ItemAdded(amount=5)])  # projected, not committed
        rebuild = asyncio.create_task(rebuild_read_model(engine, model_of(store)))
        await asyncio.sleep(0.3)
        assert not rebuild.done(), "the rebuild must wait for the append in flight"
        await transaction.commit()
    rebuilt = await asyncio.wait_for(rebuild, 10)

    assert rebuilt.events == 3 and rebuilt.unchanged
    async with engine.connect() as conn:
        assert await conn.scalar(select(tabs.c.total).where(tabs.c.tab_id == tab)) == 6


def test_an_unknown_service_is_refused_with_a_clear_message(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["list", "no-such-service"]) == 2
    assert "unknown service 'no-such-service'" in capsys.readouterr().err
