"""Fixtures for the audit service's tests: the service running in-process against the real Kafka
broker and PostgreSQL (one instance for the session; every test has people of its own), keeping
the trail of fresh event topics of its own (the suite's topics hold whatever other tests
wrote), and ways to publish the events of a person's journey on them."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from confide_audit import store
from confide_audit.app import create_app
from confide_audit.handlers import Dependencies
from confide_audit.settings import AuditSettings
from confide_events import (
    IntegrationEvent,
)
from confide_events.identity import Role
from confide_testing import Infrastructure, TokenMinter, eventually, scratch_database, serving
from confide_testing.topics import publish_events
from confide_toolkit.auth import load_signing_keys
from confide_toolkit.positions import consumer_positions
from confide_toolkit.relay import idempotent_producer
from confide_toolkit.topics import ensure_topics
from fastapi import FastAPI
from sqlalchemy import select


@dataclass
class Topics:
    """The audit tests' own event topics, one per producing service."""

    identity: str
    consent: str
    messaging: str
    retention: str

    @property
    def all(self) -> list[str]:
        return [self.identity, self.consent, self.messaging, self.retention]


@dataclass
class AuditService:
    """The audit service under test, a producer on its topics and a token minter."""

    app: FastAPI
    http: httpx.AsyncClient
    minter: TokenMinter
    producer: AIOKafkaProducer
    topics: Topics
    settings: AuditSettings
    compliance: uuid.UUID = field(default_factory=uuid.uuid4)

    @property
    def deps(self) -> Dependencies:
        deps: Dependencies = self.app.state.deps
        return deps

    def as_(self, subject_id: uuid.UUID, role: Role) -> dict[str, str]:
        return self.minter.headers(subject_id, role)

    @property
    def officer(self) -> dict[str, str]:
        return self.as_(self.compliance, "compliance")

    async def get(self, path: str, **options: Any) -> httpx.Response:
        """GET as a client would, looking again when the service answered 503 for a moment:
        its 2 s database check misses now and then on this loaded 2-core machine."""
        for _ in range(10):
            response = await self.http.get(path, **options)
            if response.status_code != 503:
                break
            await asyncio.sleep(1)
        return response

    async def publish(self, topic: str, *events: IntegrationEvent) -> list[Any]:
        """Publish events as their producers do (CloudEvents, keyed by subject); returns the
        records' metadata (partition, offset)."""
        return await publish_events(self.producer, topic, *events)

    async def in_trail(self, sent: list[Any]) -> None:
        """Wait until the live consumer kept every record of `sent`."""
        wanted: dict[tuple[str, int], int] = {}
        for meta in sent:
            place = (meta.topic, meta.partition)
            wanted[place] = max(wanted.get(place, 0), meta.offset + 1)

        async def kept() -> bool:
            async with self.deps.engine.connect() as conn:
                rows = await conn.execute(
                    select(
                        consumer_positions.c.topic,
                        consumer_positions.c.partition,
                        consumer_positions.c.next_offset,
                    ).where(consumer_positions.c.consumer == store.LIVE_CONSUMER)
                )
                have = {(r.topic, r.partition): r.next_offset for r in rows}
            return all(have.get(place, 0) >= offset for place, offset in wanted.items())

        await eventually(kept)

    async def publish_and_keep(self, topic: str, *events: IntegrationEvent) -> list[Any]:
        sent = await self.publish(topic, *events)
        await self.in_trail(sent)
        return sent


async def key_known(minter: TokenMinter, app: FastAPI) -> None:
    """Wait until the service consumed the minter's signing key: longer than `eventually`'s
    default, since identity.events is read from its start and the dev stack's may be long."""

    async def known() -> bool:
        async with app.state.service.engine.connect() as conn:
            return minter.kid in await load_signing_keys(conn)

    await eventually(known, timeout=180)


async def make_topics(kafka_bootstrap: str) -> Topics:
    run = uuid.uuid4().hex[:10]
    topics = Topics(
        *(
            f"audit-test.{run}.{name}.events"
            for name in ("identity", "consent", "messaging", "retention")
        )
    )
    await ensure_topics(kafka_bootstrap, topics.all + [f"{t}.dlq" for t in topics.all], 3)
    return topics


@pytest.fixture(scope="session")
async def audit(
    infrastructure: Infrastructure, kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[AuditService]:
    minter = TokenMinter(kafka_bootstrap)
    await minter.publish_key()
    topics = await make_topics(kafka_bootstrap)
    with scratch_database(infrastructure) as database_url:
        settings = AuditSettings(
            database_url=database_url,
            kafka_bootstrap=kafka_bootstrap,
            kek_file=Path(tmp_path_factory.mktemp("audit")) / "kek.json",
            consumer_group=f"audit-test-{uuid.uuid4().hex[:8]}",
            trail_topics=topics.all,
            acknowledgement_hours=1.0,
        )
        app = create_app(settings)
        producer = idempotent_producer(kafka_bootstrap)
        await producer.start()
        try:
            async with serving(app) as http:
                await key_known(minter, app)
                yield AuditService(app, http, minter, producer, topics, settings)
        finally:
            await producer.stop()
