"""Versioned domain events against real PostgreSQL: events stored before their class changed
still load and rebuild through their upcasters; an event newer than the code is refused."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from confide_toolkit.clock import FrozenClock
from confide_toolkit.domain_events import DomainEvent, UnknownDomainEvent
from confide_toolkit.event_store import EventStore, RecordedEvent
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .tab_stream import ItemAdded, TabOpened, tab_store, tab_totals, with_tab_totals

pytestmark = pytest.mark.integration


@pytest.fixture
async def engine(toolkit_engine: AsyncEngine) -> AsyncEngine:
    return await with_tab_totals(toolkit_engine)


@pytest.fixture
def store() -> EventStore:
    """The tab's store before `ItemAdded` changed."""
    return tab_store()


class LineAdded(DomainEvent):
    """`ItemAdded` after a change: renamed, its amount now in cents, with a note (v2)."""

    stream_type = "tab"
    event_type = "ItemAdded"
    schema_version = 2
    amount_cents: int
    note: str


def item_added_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    return {"amount_cents": data["amount"] * 100, "note": ""}


async def project_total_v2(conn: AsyncConnection, record: RecordedEvent) -> None:
    if isinstance(record.event, TabOpened):
        await conn.execute(tab_totals.insert().values(tab_id=record.stream_id, total=0))
    elif isinstance(record.event, LineAdded):
        await conn.execute(
            tab_totals.update()
            .where(tab_totals.c.tab_id == record.stream_id)
            .values(total=tab_totals.c.total + record.event.amount_cents)
        )


def store_v2() -> EventStore:
    return EventStore(
        [TabOpened, LineAdded],
        FrozenClock(),
        projections=[project_total_v2],
        upcasters={("ItemAdded", 1): item_added_v1_to_v2},
    )


async def test_events_stored_before_their_class_changed_still_load_and_rebuild(
    engine: AsyncEngine, store: EventStore
) -> None:
    tab = uuid.uuid4()
    async with engine.begin() as conn:
        await store.append(conn, tab, 0, [TabOpened(tab_id=tab), ItemAdded(amount=3)])
    # A row as the store wrote it before events were versioned: no schema version of its own.
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO stored_events (stream_id, stream_type, version, event_id, "
                "event_type, data, recorded_at) VALUES (:stream, 'tab', 3, :id, 'ItemAdded', "
                "'{\"amount\": 4}', now())"
            ),
            {"stream": tab, "id": uuid.uuid4()},
        )
    changed = store_v2()
    async with engine.begin() as conn:
        await changed.append(conn, tab, 3, [LineAdded(amount_cents=250, note="tip")])
    async with engine.connect() as conn:
        loaded = await changed.load(conn, tab)
        versions = (await conn.execute(text("SELECT schema_version FROM stored_events"))).all()
    assert [r.event for r in loaded] == [
        TabOpened(tab_id=tab),
        LineAdded(amount_cents=300, note=""),
        LineAdded(amount_cents=400, note=""),
        LineAdded(amount_cents=250, note="tip"),
    ]
    # Stored events are never rewritten: the old ones stay version 1.
    assert sorted(v for (v,) in versions) == [1, 1, 1, 2]
    async with engine.begin() as conn:
        await conn.execute(text("TRUNCATE tab_totals"))
        assert await changed.rebuild(conn, project_total_v2) == 4
        total = await conn.scalar(select(tab_totals.c.total).where(tab_totals.c.tab_id == tab))
    assert total == 950


async def test_an_event_newer_than_the_code_is_refused_not_misread(
    engine: AsyncEngine, store: EventStore
) -> None:
    tab = uuid.uuid4()
    async with engine.begin() as conn:
        await store_v2().append(
            conn, tab, 0, [TabOpened(tab_id=tab), LineAdded(amount_cents=1, note="")]
        )
    async with engine.connect() as conn:
        with pytest.raises(UnknownDomainEvent, match="ItemAdded v2"):
            await store.load(conn, tab)


def test_an_event_type_must_name_itself_and_its_version() -> None:
    class Unnamed(DomainEvent):
        amount: int

    with pytest.raises(TypeError, match="Unnamed must declare event_type and schema_version"):
        EventStore([Unnamed], FrozenClock())


def test_a_changed_event_type_needs_its_upcaster() -> None:
    with pytest.raises(TypeError, match="no upcaster for ItemAdded v1 -> v2"):
        EventStore([TabOpened, LineAdded], FrozenClock())


def test_two_event_types_may_not_share_a_name() -> None:
    with pytest.raises(TypeError, match="two domain event types are named ItemAdded"):
        EventStore(
            [ItemAdded, LineAdded], FrozenClock(), upcasters={("ItemAdded", 1): item_added_v1_to_v2}
        )
