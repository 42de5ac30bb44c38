"""The outbox relay: publishes committed outbox rows to Kafka, oldest first, then removes them.

- One active relay per service database: it holds a PostgreSQL session advisory lock; other
  replicas wait on standby and take over within `standby_retry` seconds if the holder dies.
- It wakes on LISTEN/NOTIFY the moment a transaction with outbox rows commits and polls only
  as a fallback, so an event reaches Kafka within milliseconds of its commit.
- Idempotent producer, acks=all, partition key = subject: order is kept per subject.
- At least once: rows are deleted only after Kafka acknowledged them. A relay that dies
  between the two publishes the batch again; consumers' inboxes absorb the duplicates."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from aiokafka import AIOKafkaProducer
from psycopg.rows import dict_row

from confide_toolkit.database import libpq_url
from confide_toolkit.outbox import OUTBOX_CHANNEL, kafka_headers

logger = logging.getLogger(__name__)

# One relay per database: the same key in every service is fine, each has its own database.
RELAY_LOCK_KEY = 0x636F6E666964  # "confid"


@dataclass(frozen=True)
class PendingEvent:
    id: int
    topic: str
    partition_key: str
    value: bytes
    headers: list[tuple[str, bytes]]


def idempotent_producer(bootstrap: str, **overrides: Any) -> AIOKafkaProducer:
    """The producer every relay uses: idempotent, acks from all in-sync replicas."""
    config: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "enable_idempotence": True,
        "acks": "all",
        "linger_ms": 2,
        "max_batch_size": 256 * 1024,
        "request_timeout_ms": 30000,
    }
    config.update(overrides)
    return AIOKafkaProducer(**config)


class OutboxRelay:
    def __init__(
        self,
        database_url: str,
        kafka_bootstrap: str,
        *,
        batch_size: int = 500,
        poll_interval: float = 1.0,
        standby_retry: float = 2.0,
    ) -> None:
        self._dsn = libpq_url(database_url)
        self._bootstrap = kafka_bootstrap
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._standby_retry = standby_retry
        self.is_active = False
        self.published = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Relay until `stop` is set; recovers from database and broker failures by retrying."""
        while not stop.is_set():
            try:
                await self._run_once(stop)
            except (TimeoutError, psycopg.Error, OSError) as error:
                logger.warning("outbox relay interrupted; retrying", extra={"error": repr(error)})
                await _sleep_or_stop(stop, self._standby_retry)
            except Exception as error:  # the broker client raises its own error classes
                logger.exception(
                    "outbox relay failed; retrying", extra={"error": type(error).__name__}
                )
                await _sleep_or_stop(stop, self._standby_retry)
            finally:
                self.is_active = False

    async def _run_once(self, stop: asyncio.Event) -> None:
        async with await psycopg.AsyncConnection.connect(
            self._dsn, autocommit=True, row_factory=dict_row
        ) as conn:
            while not await _try_lock(conn):
                if await _sleep_or_stop(stop, self._standby_retry):
                    return
            self.is_active = True
            logger.info("outbox relay active")
            await conn.execute(f"LISTEN {OUTBOX_CHANNEL}")
            producer = idempotent_producer(self._bootstrap)
            await producer.start()
            try:
                while not stop.is_set():
                    while await self.publish_batch(conn, producer) == self._batch_size:
                        pass
                    await _wait_for_notify(conn, stop, self._poll_interval)
                # Drain what was committed before the stop so shutdown loses no time.
                while await self.publish_batch(conn, producer) == self._batch_size:
                    pass
            finally:
                await producer.stop()

    async def publish_batch(
        self, conn: psycopg.AsyncConnection[Any], producer: AIOKafkaProducer
    ) -> int:
        """Publish the oldest pending rows and delete them once Kafka acknowledged all."""
        pending = await fetch_pending(conn, self._batch_size)
        if not pending:
            return 0
        await publish(producer, pending)
        await self.mark_published(conn, [p.id for p in pending])
        self.published += len(pending)
        return len(pending)

    async def mark_published(self, conn: psycopg.AsyncConnection[Any], ids: Sequence[int]) -> None:
        await conn.execute("DELETE FROM outbox WHERE id = ANY(%s)", (list(ids),))


async def fetch_pending(conn: psycopg.AsyncConnection[Any], limit: int) -> list[PendingEvent]:
    cursor = await conn.execute(
        "SELECT id, topic, partition_key, value, headers FROM outbox ORDER BY id LIMIT %s",
        (limit,),
    )
    return [
        PendingEvent(
            id=row["id"],
            topic=row["topic"],
            partition_key=row["partition_key"],
            value=bytes(row["value"]),
            headers=kafka_headers(row["headers"]),
        )
        for row in await cursor.fetchall()
    ]


async def publish(producer: AIOKafkaProducer, pending: Sequence[PendingEvent]) -> None:
    """Send in outbox order and wait for every acknowledgement; raises if any send failed."""
    deliveries = [
        await producer.send(p.topic, value=p.value, key=p.partition_key.encode(), headers=p.headers)
        for p in pending
    ]
    await asyncio.gather(*deliveries)


async def _try_lock(conn: psycopg.AsyncConnection[Any]) -> bool:
    cursor = await conn.execute("SELECT pg_try_advisory_lock(%s) AS locked", (RELAY_LOCK_KEY,))
    row = await cursor.fetchone()
    return bool(row and row["locked"])


async def _wait_for_notify(
    conn: psycopg.AsyncConnection[Any], stop: asyncio.Event, timeout: float
) -> None:
    """Return on a notification, when the fallback poll is due, or soon after a stop."""
    deadline = time.monotonic() + timeout
    while not stop.is_set():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        # Short slices so that a stop is noticed quickly; a notification ends the wait at once.
        async for _ in conn.notifies(timeout=min(remaining, 0.25), stop_after=1):
            return


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep, but wake at once on stop; True when stopping."""
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()
