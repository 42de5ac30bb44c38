"""Fixtures for the retention service's tests: the service running in-process against the real
Kafka broker and PostgreSQL (one instance for the whole session; every test uses people of its
own), the owners' events published for real on identity's, messaging's and billing's topics,
and a tap on the topic retention publishes to.

Two things keep these tests to themselves on a broker that other services share:
- the service's clock is a `FrozenClock` standing in 2020. The facts that start retention
  clocks carry their own times; those the tests publish are in 2020, so only they can fall due
  while the clock is moved by minutes or hours. Facts of anyone else on the broker (in 2026)
  stay far in the future of this clock and never fall due here.
- the service publishes to a topic of its own (`events_topic`), so the owners running on the
  broker (the dev stack's identity and messaging, other engineers' test services) never see its
  expiries and never answer them: the tests answer as the owners, on the owners' real topics.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from confide_events import (
    IntegrationEvent,
    billing,
    identity,
    messaging,
)
from confide_events.identity import Role
from confide_events.shredding import ShreddingOutcome
from confide_events.topics import BILLING_EVENTS, IDENTITY_EVENTS, MESSAGING_EVENTS
from confide_events.vocabulary import DataCategory
from confide_retention.app import MIGRATIONS, create_app
from confide_retention.handlers import Dependencies
from confide_retention.settings import RetentionSettings
from confide_retention.store import expiries, subject_clocks
from confide_testing import Infrastructure, TokenMinter, eventually, scratch_database, serving
from confide_testing.topics import TopicTap as Tap
from confide_testing.topics import assigned, publish_events, tap
from confide_toolkit.auth import load_signing_keys, sign_access_token
from confide_toolkit.clock import FrozenClock
from confide_toolkit.database import create_engine
from confide_toolkit.migrations import upgrade_database
from confide_toolkit.positions import consumer_positions
from confide_toolkit.relay import idempotent_producer
from confide_toolkit.topics import ensure_topics
from fastapi import FastAPI
from sqlalchemy import insert, select

START = datetime(2020, 1, 1, tzinfo=UTC)

TEST_PERIODS = {
    "identity.profile": "PT60S",
    "messaging.messages": "PT60S",
    "messaging.session_notes": "PT1H",
    "billing.payment_methods": "PT0S",
    "billing.financial_records": "PT2H",
}
"""The test's policy periods: the defaults' shape, in seconds and hours."""

ANSWER_TIMEOUT = timedelta(seconds=30)

OWNER_TOPIC: dict[str, str] = {
    "identity": IDENTITY_EVENTS,
    "messaging": MESSAGING_EVENTS,
    "billing": BILLING_EVENTS,
}
ANSWER_CLASS: dict[str, type[IntegrationEvent]] = {
    "identity": identity.SubjectDataShredded,
    "messaging": messaging.SubjectDataShredded,
    "billing": billing.SubjectDataShredded,
}


def owner_of(category: DataCategory) -> str:
    return category.split(".")[0]


@dataclass
class RetentionService:
    """The retention service under test, its clock, ways to call it as anyone, and ways to
    publish the owners' events on their real topics."""

    app: FastAPI
    http: httpx.AsyncClient
    minter: TokenMinter
    producer: AIOKafkaProducer
    clock: FrozenClock
    topic: str

    @property
    def deps(self) -> Dependencies:
        deps: Dependencies = self.app.state.deps
        return deps

    def token(
        self, subject_id: uuid.UUID, role: Role = "client", auth_time: datetime | None = None
    ) -> str:
        """An access token issued now by the service's clock (so it is valid in its 2020)."""
        return sign_access_token(
            self.minter.private_key,
            self.minter.kid,
            subject_id,
            role,
            timedelta(minutes=15),
            self.clock,
            auth_time or self.clock.now(),
            token_id=uuid.uuid4().hex,
        )

    def as_(
        self, subject_id: uuid.UUID, role: Role = "client", auth_time: datetime | None = None
    ) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(subject_id, role, auth_time)}"}

    async def advance(self, delta: timedelta) -> None:
        """Move the clock, and let the scheduler pass at once."""
        self.clock.advance(delta)
        self.deps.scheduler.wake()

    async def publish(self, topic: str, *events: IntegrationEvent) -> None:
        await publish_events(self.producer, topic, *events, at=self.clock.now())

    async def close_account(
        self, subject_id: uuid.UUID, at: datetime | None = None, timeout: float = 30
    ) -> None:
        """identity's AccountClosed, and wait until retention recorded it."""
        await self.publish(
            IDENTITY_EVENTS,
            identity.AccountClosed(subject_id=subject_id, closed_at=at or self.clock.now()),
        )
        await self.until_clock(subject_id, "account_closed", timeout)

    async def until_clock(self, subject_id: uuid.UUID, trigger: str, timeout: float = 30) -> None:
        async def recorded() -> bool:
            async with self.deps.engine.connect() as conn:
                found = await conn.scalar(
                    select(subject_clocks.c.happened_at).where(
                        subject_clocks.c.subject_id == subject_id,
                        subject_clocks.c.trigger == trigger,
                    )
                )
            return found is not None

        await eventually(recorded, timeout=timeout)

    async def until_answered(self, subject_id: uuid.UUID, category: DataCategory) -> None:
        async def answered() -> bool:
            async with self.deps.engine.connect() as conn:
                found = await conn.scalar(
                    select(expiries.c.answered_at).where(
                        expiries.c.subject_id == subject_id, expiries.c.category == category
                    )
                )
            return found is not None

        await eventually(answered)

    async def answer(
        self,
        subject_id: uuid.UUID,
        category: DataCategory,
        outcome: ShreddingOutcome = "shredded",
        erasure_case_id: uuid.UUID | None = None,
        key_id: uuid.UUID | None = None,
    ) -> uuid.UUID | None:
        """Answer an expiry as its owner would, on the owner's topic; returns the key id."""
        owner = owner_of(category)
        key = (key_id or uuid.uuid4()) if outcome == "shredded" else None
        answer = ANSWER_CLASS[owner].model_validate(
            {
                "subject_id": subject_id,
                "category": category,
                "outcome": outcome,
                "key_id": key,
                "answered_at": self.clock.now(),
                "erasure_case_id": erasure_case_id,
            }
        )
        await self.publish(OWNER_TOPIC[owner], answer)
        return key

    async def status(self, request_id: str, as_: dict[str, str]) -> Any:
        response = await self.http.get(f"/v1/erasure-requests/{request_id}", headers=as_)
        assert response.status_code == 200, response.text
        return response.json()


async def start_at_the_end(database_url: str, kafka_bootstrap: str) -> None:
    """Migrate the service's database and record its consumers' positions at the current end
    of the topics it reads: the broker's history (every fact since the suite began, thousands
    of them) is no business of these tests, and reading it takes minutes on a busy machine."""
    await asyncio.to_thread(upgrade_database, database_url, MIGRATIONS)
    consumer = AIOKafkaConsumer(
        IDENTITY_EVENTS,
        MESSAGING_EVENTS,
        BILLING_EVENTS,
        bootstrap_servers=kafka_bootstrap,
        group_id=None,
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        await eventually(assigned(consumer))
        ends = await consumer.end_offsets(list(consumer.assignment()))
    finally:
        with contextlib.suppress(asyncio.CancelledError):
            await consumer.stop()
    engine = create_engine(database_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                insert(consumer_positions),
                [
                    {
                        "consumer": "retention",
                        "topic": tp.topic,
                        "partition": tp.partition,
                        "next_offset": offset,
                    }
                    for tp, offset in ends.items()
                ],
            )
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
async def retention(
    infrastructure: Infrastructure, kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[RetentionService]:
    minter = TokenMinter(kafka_bootstrap)
    topic = f"retention-test.{uuid.uuid4().hex[:12]}.events"
    await ensure_topics(kafka_bootstrap, [topic, f"{topic}.dlq"])
    clock = FrozenClock(START)
    with scratch_database(infrastructure) as database_url:
        await start_at_the_end(database_url, kafka_bootstrap)
        settings = RetentionSettings(
            database_url=database_url,
            kafka_bootstrap=kafka_bootstrap,
            kek_file=Path(tmp_path_factory.mktemp("retention")) / "kek.json",
            consumer_group=f"retention-test-{uuid.uuid4().hex[:8]}",
            relay_poll_interval=0.2,
            policy_periods=TEST_PERIODS,
            answer_timeout=ANSWER_TIMEOUT,
            scheduler_interval=0.1,
            events_topic=topic,
        )
        await minter.publish_key()  # after the positions: the service reads it
        app = create_app(settings, clock)
        producer = idempotent_producer(kafka_bootstrap)
        await producer.start()
        try:
            async with serving(app) as http:
                service = RetentionService(app, http, minter, producer, clock, topic)
                engine = app.state.service.engine

                async def key_known() -> bool:
                    async with engine.connect() as conn:
                        return minter.kid in await load_signing_keys(conn)

                await eventually(key_known, timeout=60)
                # Every consumer has joined when a fact published now is recorded.
                await service.close_account(uuid.uuid4(), START - timedelta(days=400), timeout=300)
                yield service
        finally:
            await producer.stop()


class TopicTap(Tap):
    """The shared tap, with what retention's tests look for in it."""

    def expiries_of(self, subject_id: uuid.UUID) -> list[dict[str, Any]]:
        return [
            e
            for e in self.events("confide.retention.RetentionExpired")
            if e["subject_id"] == str(subject_id)
        ]


@pytest.fixture
async def retention_events(
    retention: RetentionService, kafka_bootstrap: str
) -> AsyncIterator[TopicTap]:
    """A tap on the topic the service under test publishes to, from its current end."""
    async with tap(kafka_bootstrap, retention.topic) as opened:
        yield TopicTap(opened.consumer, opened.records)
