"""The audit service's tables and every SQL statement of the service: the trail (append-only,
hash-chained entries, refused UPDATE and DELETE by a trigger, see the first migration), the
head of each chain, which generation of the trail answers, and the reads the answers need.

Chains: generation 0 holds the trail's own entries (each compliance query); generations 1, 2,
... each hold the records of the event topics from offset 0, the current one answering and a
replay building the next one beside it. An append locks its chain's head row, so entries of one
chain are numbered and linked one after the other whichever process appends."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from confide_toolkit.database import NAMING_CONVENTION
from confide_toolkit.inbox import ConsumedRecord
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    Uuid,
    and_,
    func,
    select,
    tuple_,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement

from confide_audit.domain import (
    GENESIS,
    QUERIES_GENERATION,
    QUERIES_TOPIC,
    StoredEntry,
    TrailEvent,
    chain_link,
)

metadata = MetaData(naming_convention=NAMING_CONVENTION)

trail_entries = Table(
    "trail_entries",
    metadata,
    Column("generation", Integer, primary_key=True),
    Column("seq", BigInteger, primary_key=True),
    Column("topic", String(255), nullable=False),
    Column("partition", Integer, nullable=False),
    Column("offset", BigInteger, nullable=False),
    # Read from the value when it is an event, to find it; the chain covers the value only.
    Column("event_type", String(128), nullable=True),
    Column("subject_id", Uuid, nullable=True),
    Column("occurred_at", DateTime(timezone=True), nullable=True),
    Column("value", LargeBinary, nullable=False),
    Column("link", LargeBinary, nullable=False),
    Index("ix_trail_entries_subject", "generation", "subject_id", "occurred_at", "seq"),
    Index("ix_trail_entries_type", "generation", "event_type", "seq"),
)
"""Every entry of every chain, as it was appended; never updated nor deleted."""

trail_heads = Table(
    "trail_heads",
    metadata,
    Column("generation", Integer, primary_key=True),
    Column("last_seq", BigInteger, nullable=False),
    Column("link", LargeBinary, nullable=False),
    Column("state", String(16), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("switched_at", DateTime(timezone=True), nullable=True),
)
"""The last entry and link of each chain, and its state: `queries` (generation 0), `current`
(answers), `building` (a replay), `retired` (replaced by a replay)."""

trail_state = Table(
    "trail_state",
    metadata,
    Column("id", SmallInteger, primary_key=True),
    Column("current_generation", Integer, nullable=False),
)
"""One row: the generation that answers and takes the live records. A live append reads it
under a share lock, so a replay's switch (which updates it) waits for appends in flight and
every later append goes to the new generation."""

LIVE_CONSUMER = "audit.trail"
"""The position name of the live consumer of the topics, whichever generation it appends to:
a replay's new generation is switched in once it holds exactly the records up to here. Not the
service's name, which the toolkit's own consumer of identity.events (signing keys, revoked
sessions) keeps its positions under: two consumers under one name would each skip what the
other applied."""


def replay_consumer(generation: int) -> str:
    """The position name of the replay building `generation`."""
    return f"audit.replay.{generation}"


# --- appending -------------------------------------------------------------------------------


_UUID_TEXT = re.compile(
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)


_RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)$")
"""An envelope's time as CloudEvents writes it, which PostgreSQL reads as a timestamptz."""


_DECODER = json.JSONDecoder()


def _envelope(value: bytes) -> Any:
    """`json.loads(value)`, without its encoding detection for a value that is plainly UTF-8
    (starts with `{`, no NUL among its first bytes): the same result, for a replay's every
    record."""
    if value[:1] == b"{" and b"\x00" not in value[:4]:
        return _DECODER.decode(value.decode("utf-8", "surrogatepass"))
    return json.loads(value)


def _event_fields(value: bytes) -> tuple[str | None, str | None, str | None]:
    """The event type, subject (a UUID's text) and time (ISO 8601) an entry is found by, each
    None when the value does not say it (a value that is not a CloudEvent is kept and chained
    all the same)."""
    try:
        envelope = _envelope(value)
        data = envelope.get("data") or {}
        subject = data.get("subject_id") or envelope.get("subject")
        occurred = envelope.get("time")
        event_type = envelope.get("type")
    except (ValueError, AttributeError, TypeError):
        return None, None, None
    if not isinstance(subject, str) or not _UUID_TEXT.match(subject):
        subject = None
    if not isinstance(occurred, str) or not _RFC3339.match(occurred):
        occurred = None
    if not isinstance(event_type, str):
        event_type = None
    return event_type, subject, occurred


@dataclass(frozen=True)
class TrailRecord(ConsumedRecord):
    """A consumed record with its entry's columns but `generation`, `seq` and `link` already
    written as COPY text: what does not depend on the chain is worked out before the append, so
    a replay does it while the database writes the previous batch."""

    columns: str = ""


def trail_record(record: Any) -> TrailRecord:
    """A consumed record (aiokafka's, or a `ConsumedRecord`) with its entry's columns."""
    value: bytes = record.value or b""
    return TrailRecord(
        record.topic,
        record.partition,
        record.offset,
        record.key,
        value,
        tuple(record.headers or ()),
        _entry_columns(record.topic, record.partition, record.offset, value),
    )


def _entry_columns(topic: str, partition: int, offset: int, value: bytes) -> str:
    """The COPY text of an entry's columns from `topic` to `value`."""
    event_type, subject_id, occurred_at = _event_fields(value)
    return (
        f"{_copy_text(topic)}\t{partition}\t{offset}\t{_copy_text(event_type)}\t"
        f"{subject_id or _NULL}\t{occurred_at or _NULL}\t\\\\x{value.hex()}"
    )


async def current_generation(conn: AsyncConnection, *, lock: bool = False) -> int:
    """The generation that answers; with `lock`, share-locked until the transaction ends."""
    query = select(trail_state.c.current_generation).where(trail_state.c.id == 1)
    if lock:
        query = query.with_for_update(read=True)
    generation: int = (await conn.execute(query)).scalar_one()
    return generation


async def append_records(
    conn: AsyncConnection, records: Sequence[ConsumedRecord], generation: int | None = None
) -> int:
    """Append consumed records to a chain (the current generation's unless told), in order;
    returns the generation appended to."""
    if generation is None:
        generation = await current_generation(conn, lock=True)
    head = (
        await conn.execute(
            select(trail_heads.c.last_seq, trail_heads.c.link)
            .where(trail_heads.c.generation == generation)
            .with_for_update()
        )
    ).one()
    seq, link = head.last_seq, head.link
    rows: list[str] = []
    for record in records:
        seq += 1
        link = chain_link(link, record.topic, record.partition, record.offset, record.value)
        columns = (
            record.columns
            if isinstance(record, TrailRecord)
            else _entry_columns(record.topic, record.partition, record.offset, record.value)
        )
        rows.append(f"{generation}\t{seq}\t{columns}\t\\\\x{link.hex()}")
    if rows:
        await _copy_entries(conn, rows)
        await conn.execute(
            update(trail_heads)
            .where(trail_heads.c.generation == generation)
            .values(last_seq=seq, link=link)
        )
    return generation


_COPY_ENTRIES = (
    'COPY trail_entries (generation, seq, topic, partition, "offset", event_type, subject_id,'
    " occurred_at, value, link) FROM STDIN"
)


_NULL = "\\N"
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


@functools.lru_cache(maxsize=1024)
def _copy_text(value: str | None) -> str:
    """COPY text of a topic or event type: a few distinct values, each escaped once."""
    return _NULL if value is None else value.translate(_COPY_ESCAPES)


async def _copy_entries(conn: AsyncConnection, rows: list[str]) -> None:
    """Write entries (lines of COPY's text format) in the caller's transaction, in one write:
    a replay appends thousands per transaction, and per-row parameter handling (an INSERT's,
    or COPY's `write_row`) was most of its time."""
    raw = await conn.get_raw_connection()
    driver: Any = raw.driver_connection
    async with driver.cursor() as cursor, cursor.copy(_COPY_ENTRIES) as copy:
        await copy.write("\n".join(rows) + "\n")


async def append_query(conn: AsyncConnection, entry: dict[str, Any]) -> int:
    """Record a compliance query in the queries chain; returns its seq."""
    head = (
        await conn.execute(
            select(trail_heads.c.last_seq, trail_heads.c.link)
            .where(trail_heads.c.generation == QUERIES_GENERATION)
            .with_for_update()
        )
    ).one()
    seq = head.last_seq + 1
    value = json.dumps(entry, sort_keys=True, separators=(",", ":")).encode()
    link = chain_link(head.link, QUERIES_TOPIC, 0, seq, value)
    await conn.execute(
        trail_entries.insert().values(
            generation=QUERIES_GENERATION,
            seq=seq,
            topic=QUERIES_TOPIC,
            partition=0,
            offset=seq,
            value=value,
            link=link,
        )
    )
    await conn.execute(
        update(trail_heads)
        .where(trail_heads.c.generation == QUERIES_GENERATION)
        .values(last_seq=seq, link=link)
    )
    return int(seq)


# --- generations -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Chain:
    generation: int
    state: str
    last_seq: int
    link: bytes


async def chains(conn: AsyncConnection) -> list[Chain]:
    rows = await conn.execute(
        select(
            trail_heads.c.generation,
            trail_heads.c.state,
            trail_heads.c.last_seq,
            trail_heads.c.link,
        ).order_by(trail_heads.c.generation)
    )
    return [Chain(r.generation, r.state, r.last_seq, r.link) for r in rows]


async def start_generation(conn: AsyncConnection) -> int:
    """A new, empty generation beside the others, for a replay to build."""
    latest = await conn.scalar(select(func.max(trail_heads.c.generation)))
    generation = int(latest or 0) + 1
    await conn.execute(
        trail_heads.insert().values(
            generation=generation, last_seq=0, link=GENESIS, state="building"
        )
    )
    return generation


async def switch_generation(conn: AsyncConnection, generation: int) -> int:
    """Make `generation` the one that answers (the caller holds the state row's lock and
    checked it caught up); returns the one it replaced."""
    previous = await current_generation(conn)
    await conn.execute(update(trail_state).values(current_generation=generation))
    await conn.execute(
        update(trail_heads)
        .where(trail_heads.c.generation == previous)
        .values(state="retired", switched_at=func.now())
    )
    await conn.execute(
        update(trail_heads)
        .where(trail_heads.c.generation == generation)
        .values(state="current", switched_at=func.now())
    )
    return previous


async def lock_state(conn: AsyncConnection) -> int:
    """Lock the state row against live appends (until the transaction ends)."""
    return int(
        (
            await conn.execute(
                select(trail_state.c.current_generation)
                .where(trail_state.c.id == 1)
                .with_for_update()
            )
        ).scalar_one()
    )


# --- reading ---------------------------------------------------------------------------------


async def stored_entries(
    conn: AsyncConnection, generation: int, batch: int = 5000
) -> AsyncIterator[StoredEntry]:
    """A chain's entries in `seq` order, streamed."""
    result = await conn.stream(
        select(
            trail_entries.c.seq,
            trail_entries.c.topic,
            trail_entries.c.partition,
            trail_entries.c.offset,
            trail_entries.c.value,
            trail_entries.c.link,
        )
        .where(trail_entries.c.generation == generation)
        .order_by(trail_entries.c.seq)
        .execution_options(yield_per=batch)
    )
    async for row in result:
        yield StoredEntry(
            generation, row.seq, row.topic, row.partition, row.offset, row.value, row.link
        )


_EVENT_COLUMNS = (
    trail_entries.c.seq,
    trail_entries.c.topic,
    trail_entries.c.partition,
    trail_entries.c.offset,
    trail_entries.c.event_type,
    trail_entries.c.occurred_at,
    trail_entries.c.subject_id,
    trail_entries.c.value,
)


def _trail_event(row: Any) -> TrailEvent:
    envelope = json.loads(row.value)
    return TrailEvent(
        seq=row.seq,
        topic=row.topic,
        partition=row.partition,
        offset=row.offset,
        event_id=envelope.get("id"),
        event_type=row.event_type,
        occurred_at=row.occurred_at,
        subject_id=row.subject_id,
        data=envelope.get("data") or {},
    )


async def timeline(
    conn: AsyncConnection, generation: int, subject_id: UUID, *, after: int | None, limit: int
) -> list[TrailEvent]:
    """A person's events in the order they happened (their time, then trail order), after the
    entry `after` (a seq), at most `limit`."""
    query = select(*_EVENT_COLUMNS).where(
        trail_entries.c.generation == generation, trail_entries.c.subject_id == subject_id
    )
    if after is not None:
        cursor = (
            select(trail_entries.c.occurred_at, trail_entries.c.seq)
            .where(trail_entries.c.generation == generation, trail_entries.c.seq == after)
            .subquery()
        )
        query = query.where(
            tuple_(trail_entries.c.occurred_at, trail_entries.c.seq)
            > select(cursor.c.occurred_at, cursor.c.seq).scalar_subquery()
        )
    query = query.order_by(trail_entries.c.occurred_at, trail_entries.c.seq).limit(limit)
    return [_trail_event(row) for row in await conn.execute(query)]


async def events_of_types(
    conn: AsyncConnection,
    generation: int,
    event_types: Sequence[str],
    *,
    subject_ids: Sequence[UUID] | None = None,
    after: int | None = None,
    limit: int | None = None,
    type_suffix: str | None = None,
) -> list[TrailEvent]:
    """Events of these types (or whose type ends in `type_suffix`), in trail order."""
    kind: ColumnElement[bool] = trail_entries.c.event_type.in_(list(event_types))
    if type_suffix is not None:
        kind = kind | trail_entries.c.event_type.like(f"%{type_suffix}")
    query = select(*_EVENT_COLUMNS).where(trail_entries.c.generation == generation, kind)
    if subject_ids is not None:
        query = query.where(trail_entries.c.subject_id.in_(list(subject_ids)))
    if after is not None:
        query = query.where(trail_entries.c.seq > after)
    query = query.order_by(trail_entries.c.seq)
    if limit is not None:
        query = query.limit(limit)
    return [_trail_event(row) for row in await conn.execute(query)]


async def subjects_like(
    conn: AsyncConnection, generation: int, prefix: str, limit: int = 20
) -> list[UUID]:
    """People whose id starts with `prefix` (the console's search), a few."""
    rows = await conn.execute(
        select(trail_entries.c.subject_id)
        .where(
            and_(
                trail_entries.c.generation == generation,
                func.cast(trail_entries.c.subject_id, Text).like(f"{prefix.lower()}%"),
            )
        )
        .group_by(trail_entries.c.subject_id)
        .order_by(trail_entries.c.subject_id)
        .limit(limit)
    )
    return [row.subject_id for row in rows]


async def entry_count(conn: AsyncConnection, generation: int) -> int:
    count = await conn.scalar(
        select(trail_heads.c.last_seq).where(trail_heads.c.generation == generation)
    )
    return int(count or 0)
