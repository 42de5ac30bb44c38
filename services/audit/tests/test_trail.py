"""The trail against the real broker and database: every record of the event topics kept once,
chained over its raw bytes, across restarts; the database refuses any change to a stored entry;
`python -m confide_audit verify` names the first entry edited, deleted or moved."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from confide_audit import cli, store
from confide_audit.app import MIGRATIONS, create_app
from confide_audit.domain import GENESIS
from confide_audit.settings import AuditSettings
from confide_events.topics import IDENTITY_EVENTS
from confide_testing import Infrastructure, TokenMinter, eventually, scratch_database, serving
from confide_toolkit.database import create_engine, libpq_url
from confide_toolkit.inbox import ConsumedRecord
from confide_toolkit.migrations import upgrade_database
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from .conftest import AuditService, key_known, make_topics
from .journeys import Journey

pytestmark = pytest.mark.integration


async def entries(engine: AsyncEngine, generation: int) -> list[tuple[str, int, int, bytes]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(
                store.trail_entries.c.topic,
                store.trail_entries.c.partition,
                store.trail_entries.c.offset,
                store.trail_entries.c.value,
            )
            .where(store.trail_entries.c.generation == generation)
            .order_by(store.trail_entries.c.seq)
        )
        return [(r.topic, r.partition, r.offset, r.value) for r in rows]


async def test_each_record_is_kept_with_its_raw_bytes_and_chained_to_the_one_before(
    audit: AuditService,
) -> None:
    journey = Journey()
    sent = await audit.publish_and_keep(audit.topics.messaging, *journey.conversation())
    async with audit.deps.engine.connect() as conn:
        generation = await store.current_generation(conn)  # a replay test may have run first
        rows = (
            await conn.execute(
                select(store.trail_entries)
                .where(store.trail_entries.c.generation == generation)
                .order_by(store.trail_entries.c.seq)
            )
        ).all()
    previous = {row.seq: row.link for row in rows}
    kept = {(r.topic, r.partition, r.offset): r for r in rows}
    for meta in sent:
        row = kept[(meta.topic, meta.partition, meta.offset)]
        before = previous.get(row.seq - 1, GENESIS)
        expected = hashlib.sha256(
            before
            + row.topic.encode()
            + b"\x00"
            + row.partition.to_bytes(4, "big")
            + row.offset.to_bytes(8, "big")
            + row.value
        ).digest()
        assert row.link == expected
        assert row.subject_id == journey.client


@pytest.fixture
async def own_topics_service(
    infrastructure: Infrastructure, kafka_bootstrap: str, tmp_path: Path
) -> AsyncIterator[tuple[AuditSettings, TokenMinter]]:
    minter = TokenMinter(kafka_bootstrap)
    await minter.publish_key()
    topics = await make_topics(kafka_bootstrap)
    with scratch_database(infrastructure) as url:
        yield (
            AuditSettings(
                database_url=url,
                kafka_bootstrap=kafka_bootstrap,
                kek_file=tmp_path / "kek.json",
                # identity.events too, which the toolkit's own consumer reads in the same
                # service (signing keys): each must see all of it.
                trail_topics=[*topics.all, IDENTITY_EVENTS],
                consumer_group=f"audit-restart-{uuid.uuid4().hex[:8]}",
            ),
            minter,
        )


async def test_a_restarted_service_keeps_every_record_exactly_once(
    own_topics_service: tuple[AuditSettings, TokenMinter], audit: AuditService
) -> None:
    settings, minter = own_topics_service
    journey = Journey()
    topic = settings.trail_topics[2]
    first = await audit.publish(topic, *journey.conversation())
    app = create_app(settings)
    async with serving(app):
        service = AuditService(app, None, minter, audit.producer, audit.topics, settings)  # type: ignore[arg-type]
        await service.in_trail(first)
        await key_known(minter, app)  # the toolkit's consumer of identity.events has the key

        async def key_in_trail() -> bool:
            async with service.deps.engine.connect() as conn:
                found = await conn.scalar(
                    select(func.count())
                    .select_from(store.trail_entries)
                    .where(
                        store.trail_entries.c.topic == IDENTITY_EVENTS,
                        store.trail_entries.c.value.contains(minter.kid.encode()),
                    )
                )
            return found == 1

        await eventually(key_in_trail, timeout=120)  # and so has the trail
    second = await audit.publish(topic, journey.note_read(), journey.note_read(6))
    # Another consumer group: Kafka's committed offsets cannot help, only the trail's positions.
    settings = settings.model_copy(update={"consumer_group": f"again-{uuid.uuid4().hex[:6]}"})
    app = create_app(settings)
    async with serving(app):
        service = AuditService(app, None, minter, audit.producer, audit.topics, settings)  # type: ignore[arg-type]
        await service.in_trail(second)
        await asyncio.sleep(0.5)  # a redelivery, if any, would be appended by now
        kept = await entries(service.deps.engine, 1)
    every = [(t, p, o) for t, p, o, _ in kept]
    assert len(set(every)) == len(every)
    places = [place for place in every if place[0] != IDENTITY_EVENTS]
    assert sorted(places) == sorted((m.topic, m.partition, m.offset) for m in first + second)


# --- tampering ------------------------------------------------------------------------------


@pytest.fixture
def trail_database(infrastructure: Infrastructure) -> Iterator[str]:
    """A migrated audit database holding a chain of 6 entries."""
    with scratch_database(infrastructure) as url:
        upgrade_database(url, MIGRATIONS)

        async def fill() -> None:
            engine = create_engine(url, pool_size=1)
            try:
                async with engine.begin() as conn:
                    await store.append_records(
                        conn,
                        [
                            ConsumedRecord("a.events", n % 2, n // 2, None, f"value {n}".encode())
                            for n in range(6)
                        ],
                    )
            finally:
                await engine.dispose()

        asyncio.run(fill())
        yield url


def verify_command(url: str) -> subprocess.CompletedProcess[str]:
    """`python -m confide_audit verify`, as an operator runs it."""
    env = {**os.environ, "CONFIDE_DATABASE_URL": url}
    return subprocess.run(
        [sys.executable, "-m", "confide_audit", "verify"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


@dataclass
class Verdict:
    returncode: int
    stdout: str


def verify(url: str, capsys: pytest.CaptureFixture[str]) -> Verdict:
    """What the verify command prints and returns, run in this process (starting Python and
    its imports again for each test would take most of the test's time)."""
    capsys.readouterr()
    code = asyncio.run(cli.verify(AuditSettings(database_url=url), every_generation=False))
    return Verdict(code, capsys.readouterr().out)


def tamper(url: str, *statements: str) -> None:
    """Change stored entries as someone with the database owner's rights could: the trigger
    turned off first."""
    with psycopg.connect(libpq_url(url), autocommit=False) as conn:
        conn.execute("ALTER TABLE trail_entries DISABLE TRIGGER USER")
        for statement in statements:
            conn.execute(statement)
        conn.execute("ALTER TABLE trail_entries ENABLE TRIGGER USER")
        conn.commit()


def test_an_untouched_trail_verifies(
    trail_database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    result = verify(trail_database, capsys)
    assert result.returncode == 0, result.stdout
    assert "chain 1 (current): 6 entries, intact" in result.stdout
    assert "chain 0 (queries): 0 entries, intact" in result.stdout


def test_an_edited_entry_is_detected_and_named_by_the_operator_command(
    trail_database: str,
) -> None:
    tamper(
        trail_database,
        "UPDATE trail_entries SET value = 'value X' WHERE generation = 1 AND seq = 4",
    )
    result = verify_command(trail_database)
    assert result.returncode == 1, result.stderr
    assert "BROKEN at chain 1: entry 4 (a.events[1]@1)" in result.stdout


def test_a_deleted_entry_is_detected_and_named(
    trail_database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    tamper(trail_database, "DELETE FROM trail_entries WHERE generation = 1 AND seq = 3")
    result = verify(trail_database, capsys)
    assert result.returncode == 1
    assert "BROKEN at chain 1: entry 3: missing" in result.stdout


def test_the_last_entry_deleted_is_detected_too(
    trail_database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    tamper(trail_database, "DELETE FROM trail_entries WHERE generation = 1 AND seq = 6")
    result = verify(trail_database, capsys)
    assert result.returncode == 1
    assert "BROKEN at chain 1: entry 6: missing" in result.stdout


def test_reordered_entries_are_detected_and_the_first_moved_one_named(
    trail_database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Entries 2 and 5 swap places, each with its own link (a copy moved, not rewritten).
    tamper(
        trail_database,
        "UPDATE trail_entries SET seq = -1 WHERE generation = 1 AND seq = 2",
        "UPDATE trail_entries SET seq = 2 WHERE generation = 1 AND seq = 5",
        "UPDATE trail_entries SET seq = 5 WHERE generation = 1 AND seq = -1",
    )
    result = verify(trail_database, capsys)
    assert result.returncode == 1
    assert "BROKEN at chain 1: entry 2 (a.events[0]@2)" in result.stdout


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE trail_entries SET value = 'x' WHERE seq = 1",
        "DELETE FROM trail_entries WHERE seq = 1",
        "TRUNCATE trail_entries",
    ],
)
def test_the_database_refuses_to_change_a_stored_entry(
    trail_database: str, statement: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with (
        psycopg.connect(libpq_url(trail_database)) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"),
    ):
        conn.execute(statement)
    assert verify(trail_database, capsys).returncode == 0


# --- the replay's prepared records ----------------------------------------------------------


def awkward_values() -> list[bytes]:
    """Values a topic may hold: a CloudEvent, and what is not one or not plainly UTF-8."""
    subject = str(uuid.uuid4())
    event = (
        '{"specversion":"1.0","id":"e1","type":"messaging.MessageSent","source":"/m",'
        f'"time":"2026-11-01T10:00:00.123456789Z","data":{{"subject_id":"{subject}"}}}}'
    )
    return [
        event.encode(),
        event.encode("utf-16-le"),  # json.loads reads it; the entry must say the same
        b"\xef\xbb\xbf" + event.encode(),  # a byte order mark
        ' {"type":"tab\\there","subject":"é"} '.encode(),
        b'{"type":"x"} trailing',
        b"\xff not text",
        b"",
        b"[1,2]",
        b'{"type":1,"time":"yesterday","data":[]}',
    ]


async def test_a_replay_prepares_each_entry_exactly_as_the_live_consumer_writes_it(
    infrastructure: Infrastructure,
) -> None:
    """The replay works out an entry's columns before its append (while the database writes
    the batch before): the entries, their links and the columns they are found by are the
    live consumer's, value for value, whatever the value holds."""
    values = awkward_values()
    with scratch_database(infrastructure) as url:
        await asyncio.to_thread(upgrade_database, url, MIGRATIONS)
        engine = create_engine(url, pool_size=1)
        try:
            async with engine.begin() as conn:
                live = await store.start_generation(conn)
                replayed = await store.start_generation(conn)
                consumed = [
                    ConsumedRecord("a.events", 0, offset, None, value)
                    for offset, value in enumerate(values)
                ]
                await store.append_records(conn, consumed, live)
                await store.append_records(
                    conn, [store.trail_record(record) for record in consumed], replayed
                )
            columns = [column for column in store.trail_entries.c if column.name != "generation"]
            async with engine.connect() as conn:
                kept = {
                    generation: (
                        await conn.execute(
                            select(*columns)
                            .where(store.trail_entries.c.generation == generation)
                            .order_by(store.trail_entries.c.seq)
                        )
                    ).all()
                    for generation in (live, replayed)
                }
        finally:
            await engine.dispose()
    assert kept[replayed] == kept[live]
    assert [row.value for row in kept[live]] == values
    found = [(row.event_type, row.subject_id is not None) for row in kept[live]]
    assert found[:4] == [("messaging.MessageSent", True)] * 3 + [("tab\there", False)]
    assert found[4:] == [(None, False)] * 5
