"""Fixtures for the messaging service's tests: the service running in-process against the real
Kafka broker and PostgreSQL (one instance for the whole session, for speed; every test registers
people of its own), identity's and consent's events published for real on their topics, and a
tap on `messaging.events`."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from confide_events import (
    IntegrationEvent,
)
from confide_events.consent import ConsentRevoked
from confide_events.identity import Role, UserRegistered
from confide_events.topics import CONSENT_EVENTS, IDENTITY_EVENTS, MESSAGING_EVENTS
from confide_messaging.app import create_app
from confide_messaging.handlers import Dependencies
from confide_messaging.settings import MessagingSettings
from confide_messaging.store import people
from confide_testing import Infrastructure, TokenMinter, eventually, scratch_database, serving
from confide_testing.topics import TopicTap, publish_events, tap
from confide_toolkit.consents import consent_view
from confide_toolkit.relay import idempotent_producer
from fastapi import FastAPI
from sqlalchemy import func, select


@dataclass
class Cast:
    """The people of one test: a client and their therapist, another of each, compliance."""

    client: uuid.UUID
    therapist: uuid.UUID
    other_therapist: uuid.UUID
    other_client: uuid.UUID
    compliance: uuid.UUID


@dataclass
class MessagingService:
    """The messaging service under test, with ways to sign in as anyone and to publish the
    events it consumes on their real topics."""

    app: FastAPI
    http: httpx.AsyncClient
    minter: TokenMinter
    producer: AIOKafkaProducer

    @property
    def deps(self) -> Dependencies:
        deps: Dependencies = self.app.state.deps
        return deps

    def as_(self, subject_id: uuid.UUID, role: Role = "client") -> dict[str, str]:
        return self.minter.headers(subject_id, role)

    async def publish(self, topic: str, *events: IntegrationEvent) -> None:
        await publish_events(self.producer, topic, *events)

    async def register(self, *who: tuple[uuid.UUID, Role]) -> None:
        """Publish `UserRegistered` for each on identity.events; wait until messaging knows."""
        now = datetime.now(UTC)
        await self.publish(
            IDENTITY_EVENTS,
            *(UserRegistered(subject_id=s, role=r, registered_at=now) for s, r in who),
        )
        ids = [s for s, _ in who]

        async def known() -> bool:
            async with self.deps.engine.connect() as conn:
                count = await conn.scalar(
                    select(func.count()).select_from(people).where(people.c.subject_id.in_(ids))
                )
            return count == len(ids)

        await eventually(known)

    async def until_consuming_consents(self) -> None:
        """Wait until the consumer of consent.events has joined and applies what comes (a
        revocation of a consent nobody granted: it never makes a consent valid)."""
        consent_id = uuid.uuid4()
        await self.publish(
            CONSENT_EVENTS,
            ConsentRevoked(
                consent_id=consent_id,
                subject_id=uuid.uuid4(),
                revoked_at=datetime.now(UTC),
                reason="subject_withdrew",
            ),
        )

        async def applied() -> bool:
            async with self.deps.engine.connect() as conn:
                found = await conn.scalar(
                    select(func.count())
                    .select_from(consent_view)
                    .where(consent_view.c.consent_id == consent_id)
                )
            return found == 1

        await eventually(applied)

    async def cast(self) -> Cast:
        cast = Cast(*(uuid.uuid4() for _ in range(5)))
        await self.register(
            (cast.client, "client"),
            (cast.therapist, "therapist"),
            (cast.other_therapist, "therapist"),
            (cast.other_client, "client"),
            (cast.compliance, "compliance"),
        )
        return cast

    async def open_conversation(self, cast: Cast) -> str:
        response = await self.http.post(
            "/v1/conversations",
            json={"therapist_id": str(cast.therapist)},
            headers=self.as_(cast.client),
        )
        assert response.status_code == 201, response.text
        conversation_id: str = response.json()["conversation_id"]
        return conversation_id

    async def post(
        self, conversation_id: str, sender: uuid.UUID, body: str, role: Role = "client"
    ) -> Any:
        response = await self.http.post(
            f"/v1/conversations/{conversation_id}/messages",
            json={"body": body},
            headers=self.as_(sender, role),
        )
        assert response.status_code == 201, response.text
        return response.json()


@pytest.fixture(scope="session")
async def messaging(
    infrastructure: Infrastructure, kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[MessagingService]:
    minter = TokenMinter(kafka_bootstrap)
    await minter.publish_key()
    with scratch_database(infrastructure) as database_url:
        settings = MessagingSettings(
            database_url=database_url,
            kafka_bootstrap=kafka_bootstrap,
            kek_file=Path(tmp_path_factory.mktemp("messaging")) / "kek.json",
            consumer_group=f"messaging-test-{uuid.uuid4().hex[:8]}",
            relay_poll_interval=0.2,
        )
        app = create_app(settings)
        producer = idempotent_producer(kafka_bootstrap)
        await producer.start()
        try:
            async with serving(app) as http:
                service = MessagingService(app, http, minter, producer)
                await minter.wait_until_known(app.state.service.engine)
                await service.until_consuming_consents()
                yield service
        finally:
            await producer.stop()


@pytest.fixture
async def cast(messaging: MessagingService) -> Cast:
    return await messaging.cast()


@pytest.fixture
async def messaging_events(kafka_bootstrap: str) -> AsyncIterator[TopicTap]:
    """A tap on messaging.events from its current end."""
    async with tap(kafka_bootstrap, MESSAGING_EVENTS) as opened:
        yield opened
