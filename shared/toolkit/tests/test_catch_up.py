"""A service whose database already holds a history (restarted, or restored from a backup)
answers nothing but its health until its consumers applied what their topics held when it
started; a brand-new database serves at once."""

import asyncio
import uuid
from pathlib import Path

import httpx
import pytest
from confide_events.identity import UserRegistered
from confide_events.topics import IDENTITY_EVENTS
from confide_testing import Infrastructure, TopicFactory, eventually, serving
from confide_toolkit.catch_up import CatchUp, high_water_marks
from confide_toolkit.database import create_engine
from confide_toolkit.inbox import EventContext
from confide_toolkit.relay import idempotent_producer
from confide_toolkit.service import Service
from confide_toolkit.settings import ServiceSettings
from fastapi import APIRouter
from sqlalchemy import text

from .test_positions import MIGRATIONS, publish, registrations

pytestmark = pytest.mark.integration


def gated_service(
    database_url: str, kafka_bootstrap: str, topic: str, kek_file: Path, gate: asyncio.Event
) -> Service:
    """A service consuming `topic` whose handler waits for `gate`, with one route of its own."""

    async def record_when_let_through(event: UserRegistered, ctx: EventContext) -> None:
        await gate.wait()
        await ctx.conn.execute(
            text("INSERT INTO registrations (subject_id) VALUES (:s)"), {"s": event.subject_id}
        )

    service = Service(
        ServiceSettings(
            service_name="probe",
            database_url=database_url,
            kafka_bootstrap=kafka_bootstrap,
            kek_file=kek_file,
            consumer_group=f"catch-up-{uuid.uuid4().hex[:8]}",
            graceful_shutdown_seconds=5,
        ),
        MIGRATIONS,
    )
    service.subscribe(topic, {UserRegistered: record_when_let_through})
    service.catch_up.start_wait = 0.5
    return service


def app_of(service: Service) -> object:
    router = APIRouter()

    @router.get("/v1/registrations")
    async def listing() -> list[str]:
        async with service.engine.connect() as conn:
            if await conn.scalar(text("SELECT to_regclass('registrations')")) is None:
                return []
        return [str(s) for s in await registrations(service.settings.database_url)]

    return service.create_app(title="p", description="p", routers=[router], deps=None)


async def test_a_service_with_history_serves_only_once_it_applied_what_it_missed(
    database_url: str, kafka_bootstrap: str, new_topic: TopicFactory, tmp_path: Path
) -> None:
    topic = await new_topic("catchup", partitions=2)
    gate = asyncio.Event()  # closed until the table the handler writes exists
    producer = idempotent_producer(kafka_bootstrap)
    await producer.start()
    try:
        first = gated_service(database_url, kafka_bootstrap, topic, tmp_path / "kek.json", gate)
        async with serving(app_of(first)) as http:  # type: ignore[arg-type]
            # A brand-new database holds nobody's history: it serves at once, while its
            # consumers still read their topics from the beginning.
            assert (await http.get("/v1/registrations")).status_code == 200
            assert first.catch_up.caught_up
            async with first.engine.begin() as conn:
                await conn.execute(text("CREATE TABLE registrations (subject_id uuid NOT NULL)"))
            gate.set()
            before = [await publish(producer, topic) for _ in range(2)]
            # Wait until this database has applied everything published so far.
            everything = CatchUp("probe", first.engine, kafka_bootstrap)
            await everything.capture([topic, IDENTITY_EVENTS])
            await eventually(everything.check, timeout=90)

        missed = [await publish(producer, topic) for _ in range(3)]
        gate.clear()  # the restarted service's consumer is held back until the test lets it
        second = gated_service(database_url, kafka_bootstrap, topic, tmp_path / "kek.json", gate)
        async with serving(app_of(second)) as http:
            refused = await http.get("/v1/registrations")
            assert refused.status_code == 503
            assert refused.json()["type"].endswith("/catching-up")
            assert refused.json()["records_behind"] == 3
            assert int(refused.headers["Retry-After"]) > 0
            ready = await http.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["catch_up"] == {"caught_up": False, "records_behind": 3}
            assert (await http.get("/healthz")).status_code == 200

            gate.set()

            async def served() -> httpx.Response | None:
                response = await http.get("/v1/registrations")
                return response if response.status_code == 200 else None

            answer = None
            async with asyncio.timeout(30):
                while (answer := await served()) is None:
                    await asyncio.sleep(0.05)
            # The first answer already holds what was published while the service was down.
            assert sorted(answer.json()) == sorted(str(s) for s in before + missed)
            assert (await http.get("/readyz")).status_code == 200

            # Caught up once, it serves for good: what comes later is ordinary lag.
            gate.clear()
            await publish(producer, topic)
            await asyncio.sleep(1)
            assert (await http.get("/v1/registrations")).status_code == 200
            gate.set()
    finally:
        await producer.stop()


async def test_marks_cover_every_partition_and_a_topic_not_created_yet_has_none(
    kafka_bootstrap: str, new_topic: TopicFactory, infrastructure: Infrastructure
) -> None:
    topic = await new_topic("marks", partitions=3)
    producer = idempotent_producer(kafka_bootstrap)
    await producer.start()
    try:
        for _ in range(4):
            await publish(producer, topic)
    finally:
        await producer.stop()
    marks = await high_water_marks(kafka_bootstrap, [topic, f"absent.{uuid.uuid4().hex}"])
    assert set(marks) == {(topic, 0), (topic, 1), (topic, 2)}
    assert sum(marks.values()) == 4


async def test_a_database_that_cannot_be_read_is_not_caught_up(
    kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    topic = await new_topic("unread", partitions=1)
    producer = idempotent_producer(kafka_bootstrap)
    await producer.start()
    try:
        await publish(producer, topic)
    finally:
        await producer.stop()
    engine = create_engine("postgresql+psycopg://probe@127.0.0.1:1/none", pool_size=1)
    catch_up = CatchUp("probe", engine, kafka_bootstrap)
    await catch_up.capture([topic])
    try:
        assert not await catch_up.wait(0.5)
        assert not catch_up.caught_up
    finally:
        await engine.dispose()
