"""How an activation of the outbox relay fences the partitions it publishes to, so that a
predecessor's late records never reach a consumer's effects twice (the rule is
`confide_toolkit.fences`; the relay is `confide_toolkit.relay`).

Before its first record to a topic, an activation sends a marker to each partition, finds on
the topic the rows its predecessors published after the last recorded progress (between each
partition's scan start and the new marker), and deletes them from the outbox instead of
publishing them again. `relay_fences` keeps, per partition, the database's relay source, its
latest marker and where the next activation's scan starts."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import Any

import psycopg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from sqlalchemy import BigInteger, Column, DateTime, Integer, String, Table, func
from sqlalchemy.dialects.postgresql import UUID as PG_UUID

from confide_toolkit.database import toolkit_metadata
from confide_toolkit.fences import Admission, RelayFences, marker_headers, source_of

logger = logging.getLogger(__name__)

relay_fences = Table(
    "relay_fences",
    toolkit_metadata,
    Column("topic", String(255), primary_key=True),
    Column("partition", Integer, primary_key=True),
    Column("source", PG_UUID(as_uuid=True), nullable=False),
    Column("fence", BigInteger, nullable=False),
    Column("scan_from", BigInteger, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)
"""Per partition this database's relay publishes to: its source (one uuid per database), the
offset of its latest activation's marker, and where the next activation's scan starts (every
row of this source published before `scan_from` is known to be deleted from the outbox)."""


async def fence_topic(
    conn: psycopg.AsyncConnection[Any],
    producer: AIOKafkaProducer,
    bootstrap: str,
    topic: str,
    source: str,
    published_through: int,
) -> tuple[dict[int, int], int]:
    """Fence every partition of `topic` for a relay activation of `source` (see
    `confide_toolkit.fences`): a marker in each, then the rows found published between the
    last scan start and the marker are deleted from the outbox instead of published again
    (only rows above `published_through`, the progress the activation started from). Returns
    the markers' offsets by partition, and how many rows were deleted."""
    partitions = sorted(await producer.partitions_for(topic))
    deliveries = [
        await producer.send(topic, value=b"", partition=partition, headers=marker_headers(source))
        for partition in partitions
    ]
    markers = {m.partition: m.offset for m in await asyncio.gather(*deliveries)}
    cursor = await conn.execute(
        "SELECT partition, fence, scan_from FROM relay_fences WHERE topic = %s AND source = %s",
        (topic, source),
    )
    previous = {
        row["partition"]: (row["fence"], row["scan_from"]) for row in await cursor.fetchall()
    }
    published = await scan_published(bootstrap, topic, source, previous, markers)
    reclaimed = 0
    async with conn.transaction():
        if published:
            cursor = await conn.execute(
                "DELETE FROM outbox WHERE id > %s AND event_id = ANY(%s)",
                (published_through, sorted(published)),
            )
            reclaimed = cursor.rowcount
        for partition, marker in markers.items():
            await conn.execute(
                "INSERT INTO relay_fences (topic, partition, source, fence, scan_from)"
                " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (topic, partition) DO UPDATE"
                " SET source = excluded.source, fence = excluded.fence,"
                " scan_from = excluded.scan_from, updated_at = now()",
                (topic, partition, source, marker, marker),
            )
    logger.info(
        "outbox relay fenced its topic",
        extra={"topic": topic, "fences": markers, "already_published": len(published)},
    )
    return markers, reclaimed


async def scan_published(
    bootstrap: str,
    topic: str,
    source: str,
    previous: dict[int, tuple[int, int]],
    markers: dict[int, int],
) -> set[uuid.UUID]:
    """The event ids that `source` published in `topic` and a consumer applies, between each
    partition's scan start (`previous`: fence and scan start of the last activation) and the
    new markers. A partition without a previous activation holds nothing of this source."""
    wanted = {p: start for p, (_, start) in previous.items() if p in markers and start < markers[p]}
    if not wanted:
        return set()
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    await reader.start()
    found: set[uuid.UUID] = set()
    try:
        partitions = {TopicPartition(topic, p): p for p in wanted}
        reader.assign(list(partitions))
        fences = {p: RelayFences({source: previous[p][0]}) for p in wanted}
        for tp, p in partitions.items():
            reader.seek(tp, wanted[p])
        remaining = set(partitions)
        while remaining:
            batches = await reader.getmany(*remaining, timeout_ms=1000)
            for tp, records in batches.items():
                p = partitions[tp]
                for record in records:
                    if record.offset >= markers[p]:
                        break
                    headers = list(record.headers or ())
                    admitted = fences[p].admit(headers, record.offset)
                    if admitted is Admission.EVENT and source_of(headers) == source:
                        found.add(uuid.UUID(json.loads(record.value)["id"]))
            for tp in list(remaining):
                if await reader.position(tp) >= markers[partitions[tp]]:
                    remaining.discard(tp)
    finally:
        await reader.stop()
    return found


async def relay_source(conn: psycopg.AsyncConnection[Any]) -> str:
    """This database's relay source: kept in `relay_fences`, so a restored database keeps it."""
    cursor = await conn.execute("SELECT source FROM relay_fences LIMIT 1")
    row = await cursor.fetchone()
    return str(row["source"]) if row else str(uuid.uuid4())
