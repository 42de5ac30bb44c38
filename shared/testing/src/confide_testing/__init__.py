"""Pytest fixtures for tests against the real Kafka broker and PostgreSQL.

The servers come from the environment when set (`make test` sets them from the native stack):
CONFIDE_TEST_KAFKA_BOOTSTRAP and CONFIDE_TEST_POSTGRES_URL (a superuser URL). Otherwise they are
started with testcontainers when a Docker engine is reachable. Otherwise the tests fail with a
message saying how to provide them: they are never skipped silently."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import httpx
import pytest
import sqlalchemy
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from asgi_lifespan import LifespanManager
from confide_events import (
    CLOUDEVENTS_JSON,
    CONTENT_TYPE_HEADER,
    IntegrationEvent,
    encode_envelope,
    to_envelope,
)
from confide_events.identity import PublicSigningKey, SessionsRevoked, SigningKeyPublished
from confide_events.topics import IDENTITY_EVENTS
from confide_toolkit.auth import Role, load_signing_keys, public_jwk, sign_access_token
from confide_toolkit.clock import SystemClock
from confide_toolkit.database import (
    create_engine,
    create_scratch_database,
    drop_database,
    toolkit_metadata,
)
from confide_toolkit.ids import uuid7
from confide_toolkit.migrations import TOOLKIT_VERSION_TABLE
from confide_toolkit.relay import idempotent_producer
from confide_toolkit.telemetry import configure_telemetry
from confide_toolkit.topics import ensure_topics, suite_topics
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import FastAPI
from sqlalchemy import MetaData
from sqlalchemy.ext.asyncio import AsyncEngine

HOW_TO_PROVIDE = (
    "Confide's integration tests need a real Kafka broker and PostgreSQL. Run `make test` "
    "(it starts the native stack), or export CONFIDE_TEST_KAFKA_BOOTSTRAP=host:port and "
    "CONFIDE_TEST_POSTGRES_URL=postgresql+psycopg://superuser:password@host:port/postgres, "
    "or make a Docker engine reachable for testcontainers."
)


def pytest_configure(config: pytest.Config) -> None:
    """The tests read spans from memory: have the process record them, although no exporter
    ships them (a service on its own records nothing without an exporter)."""
    configure_telemetry("confide-tests", "none", record_spans=True)


@dataclass(frozen=True)
class Infrastructure:
    kafka_bootstrap: str
    postgres_admin_url: str


def _docker_reachable() -> bool:
    try:
        import docker  # type: ignore[import-untyped]

        docker.from_env().ping()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def infrastructure() -> Iterator[Infrastructure]:
    kafka = os.environ.get("CONFIDE_TEST_KAFKA_BOOTSTRAP")
    postgres = os.environ.get("CONFIDE_TEST_POSTGRES_URL")
    if kafka and postgres:
        yield Infrastructure(kafka, postgres)
        return
    if not _docker_reachable():
        pytest.fail(HOW_TO_PROVIDE, pytrace=False)
    from testcontainers.kafka import KafkaContainer
    from testcontainers.postgres import PostgresContainer

    with (
        KafkaContainer("apache/kafka:4.1.1").with_kraft() as kafka_container,
        PostgresContainer("postgres:15", driver="psycopg") as pg_container,
    ):
        yield Infrastructure(
            kafka_container.get_bootstrap_server(), pg_container.get_connection_url()
        )


@pytest.fixture(scope="session")
def kafka_bootstrap(infrastructure: Infrastructure) -> str:
    """The broker, with the suite's own topics created (as `make up` does)."""
    asyncio.run(ensure_topics(infrastructure.kafka_bootstrap, suite_topics()))
    return infrastructure.kafka_bootstrap


@contextlib.contextmanager
def scratch_database(infrastructure: Infrastructure, prefix: str = "t") -> Iterator[str]:
    """A fresh, empty database, dropped afterwards whatever happens."""
    name, url = create_scratch_database(infrastructure.postgres_admin_url, prefix)
    try:
        yield url
    finally:
        drop_database(infrastructure.postgres_admin_url, name)


@pytest.fixture
def database_url(infrastructure: Infrastructure) -> Iterator[str]:
    """A fresh, empty database for one test, dropped afterwards."""
    with scratch_database(infrastructure) as url:
        yield url


@pytest.fixture
async def toolkit_engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on a fresh database holding the toolkit's tables."""
    engine = create_engine(database_url, pool_size=10)
    async with engine.begin() as conn:
        await conn.run_sync(toolkit_metadata.create_all)
    try:
        yield engine
    finally:
        await engine.dispose()


TopicFactory = Callable[..., Awaitable[str]]


@pytest.fixture
def new_topic(kafka_bootstrap: str) -> TopicFactory:
    """Creates a topic with a unique name (and its .dlq twin) for one test."""

    async def create(prefix: str = "test", partitions: int = 3) -> str:
        name = f"{prefix}.{uuid.uuid4().hex[:12]}.events"
        await ensure_topics(kafka_bootstrap, [name, f"{name}.dlq"], partitions)
        return name

    return create


# --- running a service in-process against the real stack --------------------------------


@contextlib.asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """Start the app's lifespan (migrations, consumers, relay) and give an HTTP client to it."""
    async with LifespanManager(app, startup_timeout=60, shutdown_timeout=60):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 30) -> None:
    """Wait until an asynchronous check holds (events cross Kafka asynchronously)."""
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.05)


@dataclass
class TokenMinter:
    """Stands in for identity's token issuing in other services' tests: it publishes its
    public key as a real SigningKeyPublished event on identity.events and signs tokens."""

    kafka_bootstrap: str
    kid: str = field(default_factory=lambda: f"test-{uuid.uuid4().hex[:12]}")
    private_key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)

    async def publish_key(self) -> None:
        await self._publish(
            SigningKeyPublished(
                kid=self.kid,
                public_jwk=PublicSigningKey.model_validate(public_jwk(self.private_key, self.kid)),
                published_at=datetime.now(UTC),
            )
        )

    async def revoke_sessions(self, subject_id: uuid.UUID, *session_ids: uuid.UUID) -> None:
        """End sessions as identity does when a person signs out: a real `SessionsRevoked`
        on identity.events, which services that refuse revoked sessions consume."""
        now = datetime.now(UTC)
        await self._publish(
            SessionsRevoked(
                subject_id=subject_id,
                session_ids=session_ids,
                reason="signed_out",
                revoked_at=now,
                tokens_expire_by=now + timedelta(minutes=10),
            )
        )

    async def _publish(self, event: IntegrationEvent) -> None:
        now = datetime.now(UTC)
        envelope = to_envelope(event, event_id=uuid7(), time=now, correlation_id=str(uuid.uuid4()))
        producer = idempotent_producer(self.kafka_bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(
                IDENTITY_EVENTS,
                value=encode_envelope(envelope),
                key=envelope.subject.encode(),
                headers=[(CONTENT_TYPE_HEADER, CLOUDEVENTS_JSON.encode())],
            )
        finally:
            await producer.stop()

    async def wait_until_known(self, engine: AsyncEngine, timeout: float = 180) -> None:
        """Wait until the service under test has consumed the key: a new consumer reads
        identity.events from its first record, and a long test run's broker holds many."""

        async def known() -> bool:
            async with engine.connect() as conn:
                return self.kid in await load_signing_keys(conn)

        await eventually(known, timeout=timeout)

    def token(
        self,
        subject_id: uuid.UUID,
        role: Role = "client",
        ttl: timedelta = timedelta(minutes=5),
        auth_time: datetime | None = None,
        session_id: uuid.UUID | None = None,
    ) -> str:
        """A signed access token; with `session_id`, of that session (see `revoke_sessions`)."""
        now = datetime.now(UTC)
        return sign_access_token(
            self.private_key,
            self.kid,
            subject_id,
            role,
            ttl,
            SystemClock(),
            auth_time or now,
            token_id=uuid.uuid4().hex,
            session_id=session_id,
        )

    def headers(self, subject_id: uuid.UUID, role: Role = "client") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(subject_id, role)}"}


@pytest.fixture
async def token_minter(kafka_bootstrap: str) -> TokenMinter:
    minter = TokenMinter(kafka_bootstrap)
    await minter.publish_key()
    return minter


def migration_drift(
    database_url: str, metadatas: Sequence[MetaData], *, leave_out: Collection[str] = ()
) -> list[Any]:
    """What Alembic's autogenerate finds different between a database and the tables of
    `metadatas` (columns, types, nullability, keys, indexes): empty when a service's migrations
    create exactly its models. Tables named in `leave_out` are not expected in the database:
    an optional part of the toolkit (`consent_view`) is in `toolkit_metadata` as soon as its
    module is imported, whether or not the service opted into it. The version tables of both
    histories (the service's and the toolkit's) are not compared. Triggers are not compared."""

    def not_left_out(
        item: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
    ) -> bool:
        return reflected or type_ != "table" or name not in leave_out

    def not_alembic_version(name: str | None, type_: str, parent_names: Any) -> bool:
        return type_ != "table" or name not in {"alembic_version", TOOLKIT_VERSION_TABLE}

    engine = sqlalchemy.create_engine(database_url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(
                connection,
                opts={
                    "compare_type": True,
                    "include_object": not_left_out,
                    "include_name": not_alembic_version,
                },
            )
            # Alembic accepts a sequence of MetaData here at run time (as env.py's
            # target_metadata), though compare_metadata is annotated with one.
            drift: list[Any] = compare_metadata(context, cast(MetaData, list(metadatas)))
            return drift
    finally:
        engine.dispose()
