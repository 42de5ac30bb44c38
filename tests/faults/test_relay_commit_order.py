"""An acknowledged event is published whatever order its writers took their transaction ids,
outbox ids and commits in.

Found by the PostgreSQL outage scenario (test_outages.py), which lost one acknowledged
registration of four made at once at the end of its load, long after PostgreSQL was back: a
writer that took its transaction id first can take the *higher* outbox id and commit first.
The other writer's transaction id is then at or above the reading snapshot's xmax (one past
the newest *completed* transaction, not the newest started one), so the snapshot does not list
it as running, though its row with the lower id is still to come. A relay that judges from
the snapshot alone that nothing below the published row can appear any more never publishes
that row. Here the interleaving is made on purpose, on the real relay, database and broker."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import pytest
from aiokafka import AIOKafkaConsumer
from confide_events import decode_envelope
from confide_events.identity import UserRegistered
from confide_testing import TopicFactory
from confide_toolkit.clock import SystemClock
from confide_toolkit.fences import is_marker
from confide_toolkit.outbox import Outbox
from confide_toolkit.relay import OutboxRelay
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .checker import VERDICTS, Verdict, assert_nothing_lost_or_doubled, write_verdict

pytestmark = [pytest.mark.integration, pytest.mark.faults]

PUBLISHED_WITHIN = 20.0
"""Seconds an event committed on an idle relay may take to reach the topic (it polls every
0.2 s here and wakes on the commit's notification)."""

ROUNDS = 5
"""The interleaving is made this many times: any transaction of another database on the same
server that completes inside the window (a few milliseconds) hides the fault in that round."""


def registered() -> UserRegistered:
    return UserRegistered(subject_id=uuid.uuid4(), role="client", registered_at=datetime.now(UTC))


async def event_ids_on(bootstrap: str, topic: str, wanted: set[uuid.UUID]) -> set[uuid.UUID]:
    """The event ids among `wanted` that reach the topic within PUBLISHED_WITHIN seconds."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    found: set[uuid.UUID] = set()
    try:
        async with asyncio.timeout(PUBLISHED_WITHIN):
            while not wanted <= found:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    found |= {
                        decode_envelope(r.value or b"").id
                        for r in records
                        if not is_marker(r.headers)
                    }
    except TimeoutError:
        pass
    finally:
        await consumer.stop()
    return found & wanted


async def transaction_id(conn: AsyncConnection) -> int:
    """Give the transaction its id now, as a handler's first write (a data key, the event
    store) does before the handler puts its event in the outbox."""
    return int(await conn.scalar(text("SELECT pg_current_xact_id()::text::bigint")) or 0)


async def test_an_event_whose_writer_began_second_but_took_the_lower_outbox_id_is_published(
    toolkit_engine: AsyncEngine, database_url: str, kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    topic = await new_topic()
    box = Outbox("identity", SystemClock(), topic=topic)
    relay = OutboxRelay(database_url, kafka_bootstrap, poll_interval=0.2)
    stop = asyncio.Event()
    relaying = asyncio.create_task(relay.run(stop))
    try:
        async with asyncio.timeout(30):
            while not relay.is_active:
                await asyncio.sleep(0.05)
        # The relay's first event on a topic fences it (a write, which moves the snapshots'
        # xmax past any writer running then): the interleaving below comes after that, as on
        # a relay that has been publishing for a while.
        async with toolkit_engine.begin() as conn:
            warm_up = await box.put(conn, registered())
        assert await event_ids_on(kafka_bootstrap, topic, {warm_up.id}) == {warm_up.id}
        await asyncio.sleep(0.5)  # its checkpoint written
        late_ones: list[uuid.UUID] = []
        for _ in range(ROUNDS):
            async with toolkit_engine.connect() as first, toolkit_engine.connect() as second:
                first_transaction = await first.begin()
                second_transaction = await second.begin()
                assert await transaction_id(first) < await transaction_id(second)
                late = await box.put(second, registered())  # the lower outbox id
                early = await box.put(first, registered())  # the higher one, committed first
                await first_transaction.commit()
                assert await event_ids_on(kafka_bootstrap, topic, {early.id}) == {early.id}
                await asyncio.sleep(0.5)  # reads of the relay while `late` is uncommitted
                await second_transaction.commit()
            late_ones.append(late.id)
        published = await event_ids_on(kafka_bootstrap, topic, set(late_ones))
    finally:
        stop.set()
        await asyncio.wait_for(relaying, 15)
    never = [str(event_id) for event_id in late_ones if event_id not in published]
    verdict = Verdict(
        scenario="relay-commit-order",
        load=f"{ROUNDS} rounds of two writers on one outbox, after a warm-up event",
        faults="the writer that took its transaction id second takes the lower outbox id and "
        "commits last, after the other's event was published",
        attempted=ROUNDS,
        acknowledged=ROUNDS,
        lost=len(never),
    )
    for event_id in never:
        verdict.example("lost", event_id)
    write_verdict(VERDICTS, verdict)
    assert_nothing_lost_or_doubled(verdict)
