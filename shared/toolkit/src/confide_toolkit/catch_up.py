"""A service restored from an old backup answers nothing until it has applied what it missed.

A database restored from a backup taken before an erasure holds the erased person again: their
data keys, and so their data. Its consumers resume from the positions stored with the data
(`confide_toolkit.positions`) and apply again whatever came after the backup, the erasures
(`RetentionExpired`) included; until they have, the service must not serve the person's data.

So at start, before its consumers run, a service notes the end offset of every partition of
every topic it consumes (`CatchUp.capture`): the high-water marks, what had been published by
then. Until the consumer positions in its own database have reached them all, every request but
the operational ones (/healthz, /readyz, the API documents) answers `503 Service Unavailable`
with `Retry-After` and the problem type `catching-up`, and /readyz says the same with how many
records are left. Once caught up, the service serves for good: what is published afterwards is
ordinary lag, not a hole in its history.

Start waits a few seconds for the catch-up (`START_WAIT_SECONDS`) before it finishes, so that an
ordinary restart, a few records behind, never answers a 503 at all. A brand-new database (no
table before the migrations ran) holds nobody's data from before, so it has nothing to re-apply
and serves at once while its consumers read their topics from the beginning.

The positions are compared, not the group's offsets in Kafka: those say what some member read,
the positions say what this database holds (a restored one is behind whatever Kafka remembers).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Collection
from typing import Final

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.types import ASGIApp, Receive, Scope, Send

from confide_toolkit.availability import OPERATIONAL_PATHS, RETRY_AFTER_SECONDS
from confide_toolkit.positions import Place, consumer_positions
from confide_toolkit.problem import Problem, problem_response

logger = logging.getLogger(__name__)

START_WAIT_SECONDS: Final = 5.0
"""How long start waits for the catch-up before it serves (503 `catching-up` meanwhile)."""

CHECK_INTERVAL_SECONDS: Final = 0.5
"""How often the positions are compared with the marks while catching up."""


def catching_up_problem(behind: int | None) -> Problem:
    """The 503 answered while the consumers apply what was published before the service
    started (`behind`: records left, None while the marks are not known yet)."""
    return Problem(
        "The service is applying the events it missed (after a restore or a long stop) and "
        "serves once it has; try again shortly.",
        status=503,
        title="Catching up",
        slug="catching-up",
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        extensions={"records_behind": behind},
    )


async def high_water_marks(bootstrap: str, topics: Collection[str]) -> dict[Place, int]:
    """The end offset of every partition of `topics` now (a topic that does not exist yet has
    none: nothing was published on it)."""
    if not topics:
        return {}
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await producer.start()
    await reader.start()
    try:
        partitions: list[TopicPartition] = []
        existing = await reader.topics()
        for topic in sorted(topics):
            if topic in existing:
                partitions += [
                    TopicPartition(topic, p) for p in await producer.partitions_for(topic)
                ]
        ends = await reader.end_offsets(partitions) if partitions else {}
        return {(tp.topic, tp.partition): int(offset) for tp, offset in ends.items()}
    finally:
        await reader.stop()
        await producer.stop()


async def database_is_new(engine: AsyncEngine) -> bool:
    """Whether the database holds no table at all (before the migrations run): nobody's data."""
    async with engine.connect() as conn:
        found = await conn.scalar(
            text("SELECT EXISTS (SELECT 1 FROM pg_tables WHERE schemaname = current_schema())")
        )
    return not found


class CatchUp:
    """Whether one service's consumers have applied what their topics held when it started."""

    def __init__(self, consumer: str, engine: AsyncEngine, bootstrap: str) -> None:
        self.consumer = consumer
        self._engine = engine
        self._bootstrap = bootstrap
        self.start_wait = START_WAIT_SECONDS
        self.interval = CHECK_INTERVAL_SECONDS
        # Until `capture`, a service refuses: it does not know yet what it may have missed.
        self.caught_up = False
        self.marks: dict[Place, int] | None = None
        self.behind: int | None = None
        self._topics: tuple[str, ...] = ()

    def not_needed(self) -> None:
        """Serve at once (a brand-new database: nothing to re-apply)."""
        self.caught_up = True
        self.behind = 0

    async def capture(self, topics: Collection[str]) -> None:
        """Note the high-water marks of `topics` as they are now; if Kafka cannot tell now, the
        checks ask again (and the service refuses meanwhile)."""
        self.caught_up, self.marks, self.behind = False, None, None
        self._topics = tuple(topics)
        try:
            self.marks = await high_water_marks(self._bootstrap, self._topics)
        except Exception as error:  # the broker client raises its own error classes
            logger.warning("high-water marks unknown", extra={"error": type(error).__name__})

    async def check(self) -> bool:
        """Compare the stored positions with the marks; once caught up, stays caught up."""
        if self.caught_up:
            return True
        if self.marks is None:
            # Marks taken late are higher, never lower: waiting longer is the only cost.
            self.marks = await high_water_marks(self._bootstrap, self._topics)
        wanted = {place: mark for place, mark in self.marks.items() if mark > 0}
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                select(
                    consumer_positions.c.topic,
                    consumer_positions.c.partition,
                    consumer_positions.c.next_offset,
                ).where(
                    consumer_positions.c.consumer == self.consumer,
                    consumer_positions.c.topic.in_({topic for topic, _ in wanted}),
                )
            )
            stored = {(row.topic, row.partition): row.next_offset for row in rows}
        # A partition never read is behind from its beginning; counting from offset 0 over-counts
        # a topic whose oldest records were deleted, which only matters for the figure shown.
        self.behind = sum(max(0, mark - stored.get(place, 0)) for place, mark in wanted.items())
        if self.behind == 0:
            self.caught_up = True
            logger.info("consumers caught up", extra={"consumer": self.consumer})
        return self.caught_up

    async def wait(self, timeout: float) -> bool:
        """Check until caught up or `timeout` seconds passed; whether caught up."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while not await self._safely_check():
                    await asyncio.sleep(self.interval)
        return self.caught_up

    async def watch(self, stop: asyncio.Event) -> None:
        """Check every `interval` seconds until caught up or `stop` is set."""
        while not stop.is_set() and not await self._safely_check():
            logger.info(
                "catching up before serving",
                extra={"consumer": self.consumer, "records_behind": self.behind},
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval)

    async def _safely_check(self) -> bool:
        try:
            return await self.check()
        except Exception as error:  # a database outage: the availability checks report it
            logger.info("catch-up check failed", extra={"error": type(error).__name__})
            return False


class RefuseWhileCatchingUp:
    """ASGI middleware: until the consumers caught up, answer 503 `catching-up` to every request
    but the operational paths."""

    def __init__(self, app: ASGIApp, catch_up: CatchUp) -> None:
        self.app = app
        self.catch_up = catch_up

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and not self.catch_up.caught_up
            and scope["path"] not in OPERATIONAL_PATHS
        ):
            problem = catching_up_problem(self.catch_up.behind)
            await problem_response(problem)(scope, receive, send)
            return
        await self.app(scope, receive, send)
