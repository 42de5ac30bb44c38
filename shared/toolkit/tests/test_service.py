"""The service runtime as a whole, on the real broker and database: a minimal service built
from the toolkit, as identity and consent are."""

import asyncio
import gc
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from confide_events import CLOUDEVENTS_JSON, CONTENT_TYPE_HEADER, encode_envelope, to_envelope
from confide_events.identity import UserRegistered
from confide_testing import TokenMinter, TopicFactory, eventually, serving
from confide_toolkit.auth import Caller
from confide_toolkit.fences import fenced_headers, marker_headers
from confide_toolkit.ids import uuid7
from confide_toolkit.inbox import EventContext
from confide_toolkit.service import Service
from confide_toolkit.settings import ServiceSettings
from fastapi import APIRouter, Depends
from sqlalchemy import text

pytestmark = pytest.mark.integration

MIGRATIONS = Path(__file__).parent / "service_migrations"


@dataclass
class Probe:
    """A minimal service: one protected route and one subscription on a test topic."""

    service: Service
    topic: str
    handler_delay: float = 0.0
    started: asyncio.Event = field(default_factory=asyncio.Event)

    async def on_registered(self, event: UserRegistered, ctx: EventContext) -> None:
        self.started.set()
        await asyncio.sleep(self.handler_delay)
        await ctx.conn.execute(
            text("INSERT INTO probe_effects (subject_id) VALUES (:s)"), {"s": event.subject_id}
        )


def build_probe(
    database_url: str, kafka_bootstrap: str, topic: str, tmp_path: Path, group: str | None = None
) -> Probe:
    settings = ServiceSettings(
        service_name="probe",
        database_url=database_url,
        kafka_bootstrap=kafka_bootstrap,
        kek_file=tmp_path / "kek.json",
        consumer_group=group or f"probe-{uuid.uuid4().hex[:8]}",
        graceful_shutdown_seconds=10,
    )
    service = Service(settings, MIGRATIONS)
    probe = Probe(service, topic)
    service.subscribe(topic, {UserRegistered: probe.on_registered})
    router = APIRouter()

    @router.get("/v1/whoami")
    async def whoami(caller: Annotated[Caller, Depends(service.current_caller)]) -> dict[str, str]:
        return {"subject_id": str(caller.subject_id), "role": caller.role}

    probe.app = service.create_app(  # type: ignore[attr-defined]
        title="Probe", description="toolkit test service", routers=[router], deps=probe
    )
    return probe


@pytest.fixture
async def probe(
    database_url: str, kafka_bootstrap: str, new_topic: TopicFactory, tmp_path: Path
) -> Probe:
    topic = await new_topic("probe")
    probe = build_probe(database_url, kafka_bootstrap, topic, tmp_path)
    async with probe.service.engine.begin() as conn:
        await conn.execute(text("CREATE TABLE probe_effects (subject_id uuid NOT NULL)"))
    return probe


async def publish_registered(producer: AIOKafkaProducer, topic: str, subject: uuid.UUID) -> bytes:
    event = UserRegistered(subject_id=subject, role="client", registered_at=datetime.now(UTC))
    envelope = to_envelope(
        event, event_id=uuid7(), time=datetime.now(UTC), correlation_id=str(uuid.uuid4())
    )
    value = encode_envelope(envelope)
    await producer.send_and_wait(
        topic,
        value=value,
        key=str(subject).encode(),
        headers=[(CONTENT_TYPE_HEADER, CLOUDEVENTS_JSON.encode())],
    )
    return value


async def committed_records(probe: Probe, topic: str) -> int:
    """How many records of the topic the probe's consumer group has committed past."""
    admin = AIOKafkaAdminClient(bootstrap_servers=probe.service.settings.kafka_bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(probe.service.settings.consumer_group)
    finally:
        await admin.close()
    return sum(meta.offset for tp, meta in offsets.items() if tp.topic == topic and meta.offset > 0)


def assigned_partitions(probe: Probe, topic: str) -> set[int]:
    """The partitions of a topic the replica's consumer holds right now."""
    for subscriber in probe.service.broker.subscribers:
        consumer = getattr(subscriber, "consumer", None)
        if consumer is not None and topic in subscriber.topic_names_for_subscribe:
            return {tp.partition for tp in consumer.assignment() if tp.topic == topic}
    return set()


async def effects(probe: Probe, subject: uuid.UUID) -> int:
    async with probe.service.engine.connect() as conn:
        count = await conn.scalar(
            text("SELECT count(*) FROM probe_effects WHERE subject_id = :s"), {"s": subject}
        )
    return int(count or 0)


async def test_service_verifies_tokens_with_keys_learned_from_identity_events(
    probe: Probe, token_minter: TokenMinter
) -> None:
    async with serving(probe.app) as client:  # type: ignore[attr-defined]
        await token_minter.wait_until_known(probe.service.engine)
        person = uuid.uuid4()
        answer = await client.get("/v1/whoami", headers=token_minter.headers(person, "therapist"))
        assert answer.status_code == 200
        assert answer.json() == {"subject_id": str(person), "role": "therapist"}

        refused = await client.get("/v1/whoami")
        assert refused.status_code == 401
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.headers["www-authenticate"].startswith("Bearer")


async def test_health_readiness_and_asyncapi_are_served(probe: Probe) -> None:
    async with serving(probe.app) as client:  # type: ignore[attr-defined]
        assert (await client.get("/healthz")).json()["status"] == "ok"
        ready = await client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["checks"] == {"database": True, "kafka": True}
        asyncapi = (await client.get("/asyncapi.json")).json()
        channels = str(asyncapi["channels"])
        assert probe.topic in channels and "identity.events" in channels
        openapi = (await client.get("/openapi.json")).json()
        assert "/v1/whoami" in openapi["paths"]


async def test_what_start_built_is_left_out_of_full_collections_until_stop(probe: Probe) -> None:
    # A full collection walks every object not frozen: the service's long-lived ones made it
    # pause 60-120 ms (`confide_toolkit.heap`). Stopped, the service hands them back.
    assert gc.get_freeze_count() == 0
    async with serving(probe.app):  # type: ignore[attr-defined]
        assert gc.get_freeze_count() > 100_000
    assert gc.get_freeze_count() == 0


async def test_readiness_fails_clearly_when_the_database_is_unreachable(
    kafka_bootstrap: str, tmp_path: Path, probe: Probe
) -> None:
    async with serving(probe.app) as client:  # type: ignore[attr-defined]
        await probe.service.engine.dispose()
        # Point the engine at a port where nothing listens.
        from confide_toolkit.database import create_engine

        probe.service.engine = create_engine("postgresql+psycopg://x:y@127.0.0.1:1/none")
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert ready.headers["content-type"] == "application/problem+json"
        assert ready.json()["checks"]["database"] is False


async def test_an_event_a_superseded_relay_published_again_is_applied_once(
    probe: Probe, producer: AIOKafkaProducer
) -> None:
    """The records a relay takeover leaves on a partition, as `confide_toolkit.fences` says:
    the old relay's marker and event, its successor's marker, then the old relay's late copy."""
    person = uuid.uuid4()
    source = str(uuid.uuid4())
    event = UserRegistered(subject_id=person, role="client", registered_at=datetime.now(UTC))
    value = encode_envelope(
        to_envelope(event, event_id=uuid7(), time=datetime.now(UTC), correlation_id=source)
    )
    content = [(CONTENT_TYPE_HEADER, CLOUDEVENTS_JSON.encode())]
    async with serving(probe.app):  # type: ignore[attr-defined]
        old = await producer.send_and_wait(
            probe.topic, value=b"", partition=0, headers=marker_headers(source)
        )
        for _ in range(2):
            await producer.send_and_wait(
                probe.topic,
                value=value,
                key=str(person).encode(),
                partition=0,
                headers=content + fenced_headers(source, old.offset),
            )
            await producer.send_and_wait(
                probe.topic, value=b"", partition=0, headers=marker_headers(source)
            )

        async def all_consumed() -> bool:
            # The group's committed offsets pass the records only after each was handled.
            return await committed_records(probe, probe.topic) == 5

        await eventually(all_consumed)
    assert await effects(probe, person) == 1


async def test_shutdown_finishes_the_event_in_flight_before_stopping(
    probe: Probe, producer: AIOKafkaProducer
) -> None:
    probe.handler_delay = 1.5
    person = uuid.uuid4()
    async with serving(probe.app):  # type: ignore[attr-defined]
        await publish_registered(producer, probe.topic, person)
        await asyncio.wait_for(probe.started.wait(), 30)
        # Leaving the block stops the service while the handler is still sleeping.
    engine_after = build_probe(
        str(probe.service.settings.database_url),
        probe.service.settings.kafka_bootstrap,
        probe.topic,
        Path(probe.service.settings.kek_file).parent,
    ).service.engine
    async with engine_after.connect() as conn:
        applied = await conn.scalar(
            text("SELECT count(*) FROM probe_effects WHERE subject_id = :s"), {"s": person}
        )
    await engine_after.dispose()
    assert applied == 1


async def test_bad_input_and_unknown_routes_answer_problem_json(probe: Probe) -> None:
    async with serving(probe.app) as client:  # type: ignore[attr-defined]
        missing = await client.get("/v1/nothing-here")
        assert missing.status_code == 404
        assert missing.headers["content-type"] == "application/problem+json"
        oversized = await client.post("/v1/whoami", content=b"x" * (200 * 1024))
        assert oversized.status_code == 413


async def test_two_replicas_share_the_work_and_apply_each_event_once(
    probe: Probe, producer: AIOKafkaProducer, tmp_path: Path
) -> None:
    settings = probe.service.settings
    # The same database and consumer group: two replicas of one service.
    twin = build_probe(
        settings.database_url,
        settings.kafka_bootstrap,
        probe.topic,
        tmp_path,
        group=settings.consumer_group,
    )
    people = [uuid.uuid4() for _ in range(30)]
    async with serving(probe.app), serving(twin.app):  # type: ignore[attr-defined]
        for person in people:
            await publish_registered(producer, probe.topic, person)

        async def all_applied() -> bool:
            async with probe.service.engine.connect() as conn:
                count = await conn.scalar(text("SELECT count(*) FROM probe_effects"))
            return bool(count == len(people))

        await eventually(all_applied, timeout=60)
        # The group split the topic's partitions between the replicas.
        shares = [assigned_partitions(replica, probe.topic) for replica in (probe, twin)]
        assert all(shares), shares
        assert sorted(shares[0] | shares[1]) == [0, 1, 2]
        assert not shares[0] & shares[1]
        # Exactly one relay holds the outbox lock across the two replicas.
        assert [probe.service.relay.is_active, twin.service.relay.is_active].count(True) == 1
    for person in people:
        assert await effects(probe, person) == 1
