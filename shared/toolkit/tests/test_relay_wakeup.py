"""How the outbox relay wakes, against the real broker and database: on a commit while it waits,
by reading again while it is busy (writers notify only a waiting relay), never waiting while a
writer that saw it busy is still in its transaction, and reading less often the longer such a
writer stays there."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest
from confide_testing import TopicFactory
from confide_toolkit import relay as relay_module
from confide_toolkit.clock import SystemClock
from confide_toolkit.database import libpq_url
from confide_toolkit.outbox import OUTBOX_CHANNEL, RELAY_WAITING_KEY, Outbox
from confide_toolkit.relay import OutboxRelay
from sqlalchemy.ext.asyncio import AsyncEngine

from .pipeline_harness import (
    all_published,
    put_events,
    read_topic,
    registered,
    relay_active,
    running,
    wait_until,
)

pytestmark = pytest.mark.integration


async def test_relay_wakes_on_commit_without_waiting_for_the_poll(
    engine: AsyncEngine, database_url: str, kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    topic = await new_topic()
    box = Outbox("identity", SystemClock(), topic=topic)
    # The fallback poll is far beyond the test's patience: only NOTIFY can deliver in time.
    relay = OutboxRelay(database_url, kafka_bootstrap, poll_interval=600)
    async with running(relay):
        await wait_until(lambda: relay_active(relay))
        await asyncio.sleep(0.2)  # the relay is now parked in LISTEN
        await put_events(engine, box, [registered()])
        records = await read_topic(kafka_bootstrap, topic, expected=1, timeout=30)
    assert len(records) == 1


async def test_writers_notify_only_a_relay_that_waits(
    engine: AsyncEngine, database_url: str
) -> None:
    """A NOTIFY serialises the commits of the whole cluster, so a writer notifies only while
    the relay waits for rows (it holds RELAY_WAITING_KEY); a busy relay polls."""
    box = Outbox("identity", SystemClock(), topic="any.events")
    dsn = libpq_url(database_url)
    async with (
        await psycopg.AsyncConnection.connect(dsn, autocommit=True) as listener,
        await psycopg.AsyncConnection.connect(dsn, autocommit=True) as relay_session,
    ):
        await listener.execute(f"LISTEN {OUTBOX_CHANNEL}")
        await put_events(engine, box, [registered()])
        unannounced = await relay_module._notifications(listener, 0.3)
        await relay_session.execute("SELECT pg_advisory_lock(%s)", (RELAY_WAITING_KEY,))
        await put_events(engine, box, [registered()])
        announced = await relay_module._notifications(listener, 5, stop_after=1)
    assert unannounced == 0
    assert announced == 1


async def test_commits_while_the_relay_reads_are_published_without_a_read_each(
    engine: AsyncEngine,
    database_url: str,
    kafka_bootstrap: str,
    new_topic: TopicFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Commits made while the relay is busy do not notify it (only a waiting relay is): it
    finds their rows by reading again, all of them in the next read, not one read per commit,
    and it waits again once it has published them."""
    topic = await new_topic()
    box = Outbox("identity", SystemClock(), topic=topic)
    reads, held, release = hold_the_first_read_with_rows(monkeypatch)
    # The fallback poll is far beyond the test's patience: a relay that waited while a row
    # was unannounced would not publish it in time.
    relay = OutboxRelay(database_url, kafka_bootstrap, poll_interval=600)
    async with running(relay):
        await wait_until(lambda: relay_active(relay))
        await put_events(engine, box, [registered()])
        await asyncio.wait_for(held.wait(), 30)
        for _ in range(20):
            await put_events(engine, box, [registered()])
        release.set()
        records = await read_topic(kafka_bootstrap, topic, expected=21, timeout=30)
        await wait_until(lambda: all_published(engine, relay))
        await asyncio.sleep(0.5)  # time for any read a notification would still wake
        # Back to waiting: the next commit notifies and is published at once.
        await put_events(engine, box, [registered()])
        records += await read_topic(kafka_bootstrap, topic, expected=22, timeout=30)

    assert len(records) == 21 + 22
    # The commits made while it was busy came in one read (with the first row, read again
    # once the new topic was fenced).
    assert max(reads) >= 20, reads
    # One read finding nothing at the start, before each wait and after a wake: a read per
    # commit would be 20 more.
    assert reads.count(0) <= 6, reads


async def test_a_row_whose_writer_saw_the_relay_busy_is_published_without_a_notification(
    engine: AsyncEngine,
    database_url: str,
    kafka_bootstrap: str,
    new_topic: TopicFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A writer that inserts while the relay is busy does not notify at its commit. If the
    relay started waiting before that commit, the row would wait for the fallback poll (10
    minutes here): the writer holds the relay's waiting key shared until it commits, so the
    relay keeps reading until then."""
    topic = await new_topic()
    box = Outbox("identity", SystemClock(), topic=topic)
    _, held, release = hold_the_first_read_with_rows(monkeypatch)
    relay = OutboxRelay(database_url, kafka_bootstrap, poll_interval=600)
    async with running(relay):
        await wait_until(lambda: relay_active(relay))
        await put_events(engine, box, [registered()])
        await asyncio.wait_for(held.wait(), 30)
        async with engine.begin() as conn:
            await box.put(conn, registered())  # the relay is busy: no notification
            release.set()
            first = await read_topic(kafka_bootstrap, topic, expected=1, timeout=30)
            await asyncio.sleep(0.5)  # the relay has drained all it can see meanwhile
        records = await read_topic(kafka_bootstrap, topic, expected=2, timeout=30)

    assert len(first) == 1
    assert len(records) == 2


async def test_a_writer_that_stays_in_its_transaction_slows_the_relay_s_reads_down(
    engine: AsyncEngine,
    database_url: str,
    kafka_bootstrap: str,
    new_topic: TopicFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While a writer that saw the relay busy is in its transaction, the relay cannot wait for
    a notification and reads again instead: soon after its last row, every 2 ms, then less
    and less often, so that a transaction left open costs no more than 20 reads a second."""
    topic = await new_topic()
    box = Outbox("identity", SystemClock(), topic=topic)
    reads, held, release = hold_the_first_read_with_rows(monkeypatch)
    relay = OutboxRelay(database_url, kafka_bootstrap, poll_interval=600)
    async with running(relay):
        await wait_until(lambda: relay_active(relay))
        await put_events(engine, box, [registered()])
        await asyncio.wait_for(held.wait(), 30)
        async with engine.begin() as conn:
            await box.put(conn, registered())  # the relay is busy: no notification
            release.set()
            await read_topic(kafka_bootstrap, topic, expected=1, timeout=30)
            before = len(reads)
            await asyncio.sleep(3)  # the writer stays in its transaction
            during = len(reads) - before
        records = await read_topic(kafka_bootstrap, topic, expected=2, timeout=30)

    assert len(records) == 2
    # Every 2 ms all along would be about 1,500 reads; slowing down to one per 50 ms, at most
    # a few over a hundred.
    assert 10 <= during <= 200, during


def hold_the_first_read_with_rows(
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[list[int], asyncio.Event, asyncio.Event]:
    """Keep the relay busy: its first read that finds rows sets `held` and returns only once
    `release` is set. Returns the number of rows of every read, `held` and `release`."""
    reads: list[int] = []
    held, release = asyncio.Event(), asyncio.Event()
    original = relay_module.read_pending

    async def read_pending(conn: psycopg.AsyncConnection[Any], above: Any, limit: int) -> Any:
        read = await original(conn, above, limit)
        reads.append(len(read.pending))
        if read.pending and not release.is_set():
            held.set()
            await release.wait()
        return read

    monkeypatch.setattr(relay_module, "read_pending", read_pending)
    return reads, held, release
