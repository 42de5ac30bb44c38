"""A consumer's position travels with the data it produced: a database restored from an older
backup resumes reading where its data ends, and applies again, exactly once in effect, what
came after the backup."""

import asyncio
import subprocess
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from confide_events import CLOUDEVENTS_JSON, CONTENT_TYPE_HEADER, encode_envelope, to_envelope
from confide_events.identity import UserRegistered
from confide_testing import Infrastructure, TopicFactory, eventually, serving
from confide_toolkit.database import create_engine, libpq_url
from confide_toolkit.ids import uuid7
from confide_toolkit.inbox import EventContext
from confide_toolkit.relay import idempotent_producer
from confide_toolkit.service import Service
from confide_toolkit.settings import ServiceSettings
from sqlalchemy import text

pytestmark = pytest.mark.integration

MIGRATIONS = Path(__file__).parent / "service_migrations"


async def record_effect(event: UserRegistered, ctx: EventContext) -> None:
    await ctx.conn.execute(
        text("INSERT INTO registrations (subject_id) VALUES (:s)"), {"s": event.subject_id}
    )


def consuming_service(
    database_url: str, kafka_bootstrap: str, topic: str, group: str, kek_file: Path
) -> Service:
    service = Service(
        ServiceSettings(
            service_name="probe",
            database_url=database_url,
            kafka_bootstrap=kafka_bootstrap,
            kek_file=kek_file,
            consumer_group=group,
            graceful_shutdown_seconds=5,
        ),
        MIGRATIONS,
    )
    service.subscribe(topic, {UserRegistered: record_effect})
    return service


async def publish(producer: AIOKafkaProducer, topic: str) -> uuid.UUID:
    subject = uuid.uuid4()
    event = UserRegistered(subject_id=subject, role="client", registered_at=datetime.now(UTC))
    envelope = to_envelope(
        event, event_id=uuid7(), time=datetime.now(UTC), correlation_id=str(uuid.uuid4())
    )
    await producer.send_and_wait(
        topic,
        value=encode_envelope(envelope),
        key=str(subject).encode(),
        headers=[(CONTENT_TYPE_HEADER, CLOUDEVENTS_JSON.encode())],
    )
    return subject


async def registrations(database_url: str) -> list[uuid.UUID]:
    engine = create_engine(database_url, pool_size=1)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(text("SELECT subject_id FROM registrations"))
            return [row.subject_id for row in rows]
    finally:
        await engine.dispose()


def run(*command: str) -> None:
    # The PostgreSQL client tools, with arguments this test made.
    subprocess.run(command, check=True, capture_output=True, timeout=120)  # noqa: S603


async def test_a_restored_database_applies_again_exactly_once_what_came_after_its_backup(
    database_url: str,
    infrastructure: Infrastructure,
    kafka_bootstrap: str,
    new_topic: TopicFactory,
    tmp_path: Path,
) -> None:
    topic = await new_topic("positions", partitions=2)
    group = f"positions-{uuid.uuid4().hex[:8]}"
    engine = create_engine(database_url, pool_size=1)
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE registrations (subject_id uuid NOT NULL)"))
    await engine.dispose()
    producer = idempotent_producer(kafka_bootstrap)
    await producer.start()
    backup = tmp_path / "backup.dump"
    try:
        service = consuming_service(
            database_url, kafka_bootstrap, topic, group, tmp_path / "kek.json"
        )
        async with serving(service.create_app(title="p", description="p", routers=[], deps=None)):
            before = [await publish(producer, topic) for _ in range(4)]

            async def applied(expected: list[uuid.UUID]) -> bool:
                return sorted(await registrations(database_url)) == sorted(expected)

            await eventually(lambda: applied(before))
            run("pg_dump", "--format=custom", f"--file={backup}", libpq_url(database_url))

            after = [await publish(producer, topic) for _ in range(6)]
            await eventually(lambda: applied(before + after))
            # Let the group's offsets in Kafka reach the end too: what Kafka remembers is not
            # what the restored database has applied.
            await asyncio.sleep(1)

        name = database_url.rsplit("/", 1)[1]
        admin = libpq_url(infrastructure.postgres_admin_url)
        run("psql", admin, "-c", f'DROP DATABASE "{name}" WITH (FORCE)')
        run("psql", admin, "-c", f'CREATE DATABASE "{name}"')
        run("pg_restore", f"--dbname={libpq_url(database_url)}", str(backup))
        assert sorted(await registrations(database_url)) == sorted(before)

        restored = consuming_service(
            database_url, kafka_bootstrap, topic, group, tmp_path / "kek.json"
        )
        async with serving(restored.create_app(title="p", description="p", routers=[], deps=None)):
            await eventually(lambda: applied(before + after))
            await asyncio.sleep(1)  # anything applied twice would show by now
        assert sorted(await registrations(database_url)) == sorted(before + after)
    finally:
        await producer.stop()
