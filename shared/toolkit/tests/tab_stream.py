"""A tab, the toy event-sourced aggregate of the event store's tests (test_event_store.py,
test_event_versions.py): its events, its `tab_totals` read model and that model's projection."""

from __future__ import annotations

import uuid

from confide_toolkit.clock import FrozenClock
from confide_toolkit.domain_events import DomainEvent
from confide_toolkit.event_store import EventStore, RecordedEvent
from sqlalchemy import Column, Integer, MetaData, Table
from sqlalchemy.dialects.postgresql import UUID as PG_UUID
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine


class TabOpened(DomainEvent):
    stream_type = "tab"
    event_type = "TabOpened"
    schema_version = 1
    tab_id: uuid.UUID


class ItemAdded(DomainEvent):
    stream_type = "tab"
    event_type = "ItemAdded"
    schema_version = 1
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


async def with_tab_totals(engine: AsyncEngine) -> AsyncEngine:
    """`engine` once its database has the `tab_totals` read model."""
    async with engine.begin() as conn:
        await conn.run_sync(read_metadata.create_all)
    return engine


def tab_store() -> EventStore:
    """The tab's event store, `tab_totals` kept by `project_total`."""
    return EventStore([TabOpened, ItemAdded], FrozenClock(), projections=[project_total])
