"""Fixtures for identity's tests: settings, a running identity, Kafka readers, factories."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from confide_events import (
    CLOUDEVENTS_JSON,
    CONTENT_TYPE_HEADER,
    Envelope,
    IntegrationEvent,
    decode_envelope,
    encode_envelope,
    to_envelope,
)
from confide_identity.app import create_app
from confide_identity.handlers import Dependencies
from confide_identity.settings import IdentitySettings
from confide_testing import Infrastructure, scratch_database, serving
from confide_toolkit.clock import FrozenClock
from confide_toolkit.fences import is_marker
from confide_toolkit.ids import uuid7
from confide_toolkit.relay import idempotent_producer
from confide_toolkit.topics import ensure_topics, suite_topics

STRONG_PASSWORD = "violet-harbour-lantern-92"

SettingsFactory = Callable[..., IdentitySettings]


@pytest.fixture
def make_settings(database_url: str, kafka_bootstrap: str, tmp_path: Path) -> SettingsFactory:
    """Identity's settings for this test's database; keyword arguments override."""

    def make(**overrides: Any) -> IdentitySettings:
        values: dict[str, Any] = {
            "service_name": "identity",
            "database_url": database_url,
            "kafka_bootstrap": kafka_bootstrap,
            "kek_file": tmp_path / "kek.json",
            "consumer_group": f"identity-test-{uuid.uuid4().hex[:8]}",
            "relay_poll_interval": 0.2,
            # The OWASP minimum for Argon2id, which is also the production default.
            "argon2_memory_kib": 19 * 1024,
            "argon2_iterations": 2,
            "argon2_lanes": 1,
        }
        values.update(overrides)
        return IdentitySettings(**values)

    return make


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(datetime.now(UTC).replace(microsecond=0))


@dataclass
class RunningIdentity:
    client: httpx.AsyncClient
    deps: Dependencies
    clock: FrozenClock
    settings: IdentitySettings

    async def register(self, **overrides: Any) -> tuple[uuid.UUID, dict[str, Any]]:
        body = registration(**overrides)
        response = await self.client.post("/v1/accounts", json=body)
        assert response.status_code == 201, response.text
        return uuid.UUID(response.json()["user_id"]), body

    async def sign_in(self, body: dict[str, Any], **extra: Any) -> httpx.Response:
        return await self.client.post(
            "/v1/sessions", json={"email": body["email"], "password": body["password"], **extra}
        )

    async def tokens(self, body: dict[str, Any]) -> dict[str, Any]:
        response = await self.sign_in(body)
        assert response.status_code == 200, response.text
        tokens: dict[str, Any] = response.json()
        return tokens


def bearer(tokens: dict[str, Any] | str) -> dict[str, str]:
    token = tokens if isinstance(tokens, str) else tokens["access_token"]
    return {"Authorization": f"Bearer {token}"}


def registration(**overrides: Any) -> dict[str, Any]:
    """A valid registration body with a unique email."""
    body = {
        "email": f"person.{uuid.uuid4().hex[:10]}@example.org",
        "password": STRONG_PASSWORD,
        "display_name": f"Ada Tester {uuid.uuid4().hex[:6]}",
        "role": "client",
    }
    body.update(overrides)
    return body


@contextlib.asynccontextmanager
async def running_identity(
    settings: IdentitySettings, clock: FrozenClock
) -> AsyncIterator[RunningIdentity]:
    app = create_app(settings, clock)
    async with serving(app) as client:
        yield RunningIdentity(client, app.state.deps, clock, settings)


@pytest.fixture
async def identity(
    make_settings: SettingsFactory, clock: FrozenClock
) -> AsyncIterator[RunningIdentity]:
    async with running_identity(make_settings(), clock) as running:
        yield running


@pytest.fixture
def other_database_url(infrastructure: Infrastructure) -> Iterator[str]:
    """A second fresh database, for a service other than identity."""
    with scratch_database(infrastructure) as url:
        yield url


# --- Kafka -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    value: bytes
    headers: tuple[tuple[str, bytes], ...]
    key: bytes | None

    @property
    def envelope(self) -> Envelope:
        return decode_envelope(self.value)


async def read_topic(bootstrap: str, topic: str) -> list[Record]:
    """Every event record of a topic (relay markers skipped), from the beginning up to its
    current end."""
    await ensure_topics(bootstrap, suite_topics())
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [description] = await admin.describe_topics([topic])
    finally:
        await admin.close()
    partitions = [TopicPartition(topic, p["partition"]) for p in description["partitions"]]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        records: list[Record] = []

        async def behind() -> bool:
            return any([await consumer.position(tp) < ends[tp] for tp in partitions])

        while await behind():
            batch = await consumer.getmany(*partitions, timeout_ms=1000)
            for messages in batch.values():
                records += [
                    Record(m.value or b"", tuple(m.headers or ()), m.key)
                    for m in messages
                    if not is_marker(m.headers)
                ]
        return records
    finally:
        await consumer.stop()


async def events_about(bootstrap: str, topic: str, subject: str) -> list[Envelope]:
    """The envelopes on a topic whose subject is `subject`, in order."""
    return [r.envelope for r in await read_topic(bootstrap, topic) if r.key == subject.encode()]


async def publish(bootstrap: str, topic: str, event: IntegrationEvent) -> None:
    """Publish one event as another service would (structured CloudEvents)."""
    now = datetime.now(UTC)
    envelope = to_envelope(event, event_id=uuid7(), time=now, correlation_id=str(uuid7()))
    producer = idempotent_producer(bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(
            topic,
            value=encode_envelope(envelope),
            key=envelope.subject.encode(),
            headers=[(CONTENT_TYPE_HEADER, CLOUDEVENTS_JSON.encode())],
        )
    finally:
        await producer.stop()
