"""Scenario 1's second baseline: the same durable pipeline written by hand, without the toolkit.

It does the work the toolkit's pipeline does and nothing else, with psycopg and aiokafka
directly: each transaction inserts the state-change rows and their outbox rows (one
`executemany` each); a relay task in the same process selects the oldest outbox rows, sends
them with `relay.idempotent_producer`, waits for the acknowledgements and deletes them; the
consumer (another process) reads a poll of up to 500 records, decodes and validates each
envelope with `confide_events`, and in one transaction inserts the inbox rows and the effect
rows, then commits the Kafka offsets. Envelopes are built and validated by the same code as the
toolkit's, so what this baseline leaves out is exactly the toolkit's machinery: SQLAlchemy,
FastStream, spans, the outbox trigger, retries and dead letters.

Against the raw Kafka baseline it shows what the durable writes themselves cost on this machine:
the best a pipeline that writes each event to PostgreSQL (outbox in, outbox out, inbox, effect)
can do here, whoever writes it.

It comes in two designs (`design`):
- `INBOX` (the first design, kept as it was so that the comparison stays honest): the consumer
  inserts an inbox row per event;
- `POSITIONS` (the toolkit's design since issue 16): the relay fences the topic's partitions with
  one marker each at start and heads every record with its source and fence, and the consumer
  keeps no row per event: one conditional update of its position per partition and batch, in the
  effects' transaction, and the fence rule over the records' headers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from multiprocessing.sharedctypes import Synchronized
from typing import Any

from bench.pipeline_sides import (
    WARM_UP_EVENTS,
    PipelineConfig,
    WriteShape,
    light_load,
    measurement_commands,
    payload,
    quiet_logs,
)

OUTBOX_DDL = (
    "CREATE TABLE accounts (subject_id uuid PRIMARY KEY, registered_at timestamptz NOT NULL);"
    "CREATE TABLE outbox (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
    " partition_key text NOT NULL, value bytea NOT NULL, traceparent text NOT NULL)"
)
INBOX_DDL = (
    "CREATE TABLE inbox (event_id uuid PRIMARY KEY, topic text NOT NULL,"
    ' "partition" integer NOT NULL, "offset" bigint NOT NULL);'
    "CREATE TABLE registrations (subject_id uuid PRIMARY KEY, role text NOT NULL,"
    " registered_at timestamptz NOT NULL)"
)
POSITIONS_DDL = (
    "CREATE TABLE registrations (subject_id uuid PRIMARY KEY, role text NOT NULL,"
    " registered_at timestamptz NOT NULL);"
    "CREATE TABLE consumer_positions (topic text, partition integer, next_offset bigint NOT NULL,"
    " fences jsonb NOT NULL DEFAULT '{}', PRIMARY KEY (topic, partition))"
)
RELAY_FENCES_DDL = (
    "CREATE TABLE relay_fences (topic text, partition integer, source uuid NOT NULL,"
    " fence bigint NOT NULL, scan_from bigint NOT NULL, PRIMARY KEY (topic, partition))"
)
INBOX = "inbox"
POSITIONS = "positions"
RELAY_BATCH = 500
IDLE_POLL = 0.002
"""The relay's pause when the outbox is empty (it has no LISTEN/NOTIFY)."""


def producing_process(
    database_url: str,
    bootstrap: str,
    topic: str,
    design: str,
    config: PipelineConfig,
    applied_count: Synchronized,  # type: ignore[type-arg]
    pipe: Connection,
) -> None:
    quiet_logs()
    asyncio.run(_produce(database_url, bootstrap, topic, design, config, pipe))


async def _produce(
    database_url: str,
    bootstrap: str,
    topic: str,
    design: str,
    config: PipelineConfig,
    pipe: Connection,
) -> None:
    import psycopg
    from confide_toolkit.database import libpq_url
    from confide_toolkit.relay import idempotent_producer

    dsn = libpq_url(database_url)
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as setup:
        await setup.execute(OUTBOX_DDL)
        if design == POSITIONS:
            await setup.execute(RELAY_FENCES_DDL)
    most = max(config.batched.writers, config.requests.writers)
    writers = [await psycopg.AsyncConnection.connect(dsn) for _ in range(most)]
    producer = idempotent_producer(bootstrap)
    await producer.start()
    stop = asyncio.Event()
    relay = asyncio.create_task(_relay(dsn, producer, topic, design, stop))
    committed: dict[bytes, float] = {}

    async def commit(conn: Any, count: int) -> None:
        now = datetime.now(UTC)
        subjects = [uuid.uuid4() for _ in range(count)]
        rows = []
        for subject in subjects:
            value, headers = payload(subject)
            rows.append((str(subject), value, headers[1][1].decode()))
        async with conn.transaction(), conn.cursor() as cursor:
            await cursor.executemany(
                "INSERT INTO accounts (subject_id, registered_at) VALUES (%s, %s)",
                [(subject, now) for subject in subjects],
            )
            await cursor.executemany(
                "INSERT INTO outbox (partition_key, value, traceparent) VALUES (%s, %s, %s)",
                rows,
            )
        done = time.monotonic()
        for subject in subjects:
            committed[subject.bytes] = done

    try:
        for _ in range(WARM_UP_EVENTS):  # one connection: one transaction at a time
            await commit(writers[0], 1)
        committed.clear()
        pipe.send(("ready",))
        while True:
            command = await asyncio.to_thread(pipe.recv)
            if command[0] == "throughput":
                shape: WriteShape = command[1]
                cpu = time.process_time()
                before = len(committed)
                remaining = [shape.events]
                deadline = time.monotonic() + config.write_seconds

                async def writer(
                    conn: Any, shape: WriteShape, remaining: list[int], deadline: float
                ) -> None:
                    while remaining[0] > 0 and time.monotonic() < deadline:
                        count = min(shape.per_transaction, remaining[0])
                        remaining[0] -= count
                        await commit(conn, count)

                await asyncio.gather(
                    *(writer(conn, shape, remaining, deadline) for conn in writers[: shape.writers])
                )
                pipe.send(("written", len(committed) - before))
                await asyncio.to_thread(pipe.poll, None)
                pipe.send(("cpu", time.process_time() - cpu))
            elif command[0] == "light":
                before = len(committed)
                await light_load(config, lambda: commit(writers[0], 1))
                pipe.send(("written", len(committed) - before))
            elif command[0] == "continue":
                pass
            elif command[0] == "stop":
                break
        pipe.send(("result", committed, [], 0))
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(relay, 20)
        await producer.stop()
        for conn in writers:
            await conn.close()


async def _relay(dsn: str, producer: Any, topic: str, design: str, stop: asyncio.Event) -> None:
    import psycopg
    from aiokafka.partitioner import DefaultPartitioner
    from confide_events import CLOUDEVENTS_JSON, CONTENT_TYPE_HEADER
    from confide_toolkit.fences import fenced_headers, marker_headers

    content_type = (CONTENT_TYPE_HEADER, CLOUDEVENTS_JSON.encode())
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        fences: dict[int, list[tuple[str, bytes]]] = {}
        partitions: list[int] = []
        partitioner = DefaultPartitioner()
        if design == POSITIONS:
            # The activation's fence: a marker per partition, recorded (nothing to scan: a new
            # database has no predecessor).
            source = str(uuid.uuid4())
            partitions = sorted(await producer.partitions_for(topic))
            for fenced in partitions:
                marker = await producer.send_and_wait(
                    topic, value=b"", partition=fenced, headers=marker_headers(source)
                )
                fences[fenced] = fenced_headers(source, marker.offset)
                await conn.execute(
                    "INSERT INTO relay_fences VALUES (%s, %s, %s, %s, %s)",
                    (topic, fenced, source, marker.offset, marker.offset),
                )
        while not stop.is_set():
            cursor = await conn.execute(
                "SELECT id, partition_key, value, traceparent FROM outbox ORDER BY id LIMIT %s",
                (RELAY_BATCH,),
            )
            rows = await cursor.fetchall()
            if not rows:
                await asyncio.sleep(IDLE_POLL)
                continue
            deliveries = []
            for _, key, value, traceparent in rows:
                headers = [content_type, ("traceparent", traceparent.encode())]
                partition: int | None = None
                if fences:
                    partition = partitioner(key.encode(), partitions, partitions)
                    headers += fences[partition]
                deliveries.append(
                    await producer.send(
                        topic, value=value, key=key.encode(), partition=partition, headers=headers
                    )
                )
            await asyncio.gather(*deliveries)
            await conn.execute("DELETE FROM outbox WHERE id = ANY(%s)", ([r[0] for r in rows],))


def consuming_process(
    database_url: str,
    bootstrap: str,
    topic: str,
    group: str,
    design: str,
    config: PipelineConfig,
    applied_count: Synchronized,  # type: ignore[type-arg]
    pipe: Connection,
) -> None:
    quiet_logs()
    asyncio.run(
        _consume(database_url, bootstrap, topic, group, design, config, applied_count, pipe)
    )


async def _consume(
    database_url: str,
    bootstrap: str,
    topic: str,
    group: str,
    design: str,
    config: PipelineConfig,
    applied_count: Synchronized,  # type: ignore[type-arg]
    pipe: Connection,
) -> None:
    import psycopg
    from aiokafka import AIOKafkaConsumer
    from confide_events import decode_envelope, from_envelope
    from confide_toolkit.database import libpq_url
    from confide_toolkit.fences import Admission, RelayFences

    dsn = libpq_url(database_url)
    conn = await psycopg.AsyncConnection.connect(dsn)
    async with conn.transaction():
        await conn.execute(INBOX_DDL if design == INBOX else POSITIONS_DDL)
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    applied: list[tuple[bytes, float]] = []
    stopping = asyncio.Event()

    async def loop() -> None:
        if design == POSITIONS:
            await positions_loop()
            return
        while not stopping.is_set():
            batches = await consumer.getmany(timeout_ms=25, max_records=500)
            records = [record for part in batches.values() for record in part]
            if not records:
                continue
            # The effect is idempotent itself (ON CONFLICT DO NOTHING), so unlike the toolkit this
            # loop does not need to know which inbox rows were new: the same SQL work, less code.
            claims, effects = [], []
            for record in records:
                envelope = decode_envelope(record.value)
                event: Any = from_envelope(envelope)
                claims.append((envelope.id, record.topic, record.partition, record.offset))
                effects.append((event.subject_id, event.role, event.registered_at))
            async with conn.transaction(), conn.cursor() as cursor:
                await cursor.executemany(
                    'INSERT INTO inbox (event_id, topic, "partition", "offset") '
                    "VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
                    claims,
                )
                await cursor.executemany(
                    "INSERT INTO registrations (subject_id, role, registered_at) "
                    "VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                    effects,
                )
            now = time.monotonic()
            applied.extend((subject.bytes, now) for subject, _, _ in effects)
            await consumer.commit()
            with applied_count.get_lock():
                applied_count.value += len(records)

    positions: dict[tuple[str, int], tuple[int, RelayFences]] = {}

    async def positions_loop() -> None:
        """Each batch: the fence rule per record, the effects, one conditional update of the
        position per partition, one transaction; no row per event."""
        while not stopping.is_set():
            batches = await consumer.getmany(timeout_ms=25, max_records=500)
            if not batches:
                continue
            effects, moves, events = [], [], 0
            for tp, part in batches.items():
                place = (tp.topic, tp.partition)
                expected, fences = positions.get(place, (0, RelayFences()))
                moved = RelayFences.of(fences.snapshot())
                next_offset = expected
                for record in part:
                    next_offset = record.offset + 1
                    if record.offset < expected:
                        continue
                    if moved.admit(record.headers, record.offset) is not Admission.EVENT:
                        continue
                    event: Any = from_envelope(decode_envelope(record.value))
                    effects.append((event.subject_id, event.role, event.registered_at))
                    events += 1
                moves.append((place, expected, next_offset, moved))
            async with conn.transaction(), conn.cursor() as cursor:
                await cursor.executemany(
                    "INSERT INTO registrations (subject_id, role, registered_at) "
                    "VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                    effects,
                )
                for (topic_name, partition), expected, next_offset, moved in moves:
                    await cursor.execute(
                        "INSERT INTO consumer_positions AS p VALUES (%s, %s, %s, %s)"
                        " ON CONFLICT (topic, partition) DO UPDATE"
                        " SET next_offset = excluded.next_offset, fences = excluded.fences"
                        " WHERE p.next_offset = %s",
                        (
                            topic_name,
                            partition,
                            next_offset,
                            json.dumps(moved.snapshot()),
                            expected,
                        ),
                    )
            for place, _, next_offset, moved in moves:
                positions[place] = (next_offset, moved)
            now = time.monotonic()
            applied.extend((subject.bytes, now) for subject, _, _ in effects)
            await consumer.commit()
            with applied_count.get_lock():
                applied_count.value += events

    task = asyncio.create_task(loop())
    try:
        async with asyncio.timeout(60):
            while not consumer.assignment():
                await asyncio.sleep(0.05)
        pipe.send(("ready",))
        await measurement_commands(pipe, config, None)
        stopping.set()
        await task
        pipe.send(("result", applied))
    finally:
        stopping.set()
        await consumer.stop()
        await conn.close()
