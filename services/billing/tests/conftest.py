"""Fixtures for the billing service's tests: the service running in-process against the real
Kafka broker and PostgreSQL (one instance for the whole session, for speed; every test uses
people of its own), with the sandbox gateway it charges through, identity's and retention's
events published for real on their topics, a tap on `billing.events`, and every span the
service records kept in memory (to be searched for card data)."""

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
from confide_billing.app import create_app
from confide_billing.gateway import APPROVE_VISA, SandboxGateway
from confide_billing.handlers import Dependencies
from confide_billing.settings import BillingSettings
from confide_events import (
    IntegrationEvent,
)
from confide_events.identity import Role
from confide_events.topics import BILLING_EVENTS
from confide_testing import Infrastructure, TokenMinter, eventually, scratch_database, serving
from confide_testing.topics import TopicTap, publish_events, tap
from confide_toolkit.auth import load_signing_keys
from confide_toolkit.relay import idempotent_producer
from confide_toolkit.telemetry import configure_telemetry
from fastapi import FastAPI
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy.ext.asyncio import AsyncEngine

GATEWAY_TIMEOUT = 0.5
"""Seconds the service under test waits for the gateway (the time-out card never answers)."""

ADDRESS = {
    "line1": "17 Quillfeather Lane",
    "city": "Oxbridge",
    "postal_code": "OX9 7QZ",
    "country": "GB",
}


def card_body(number: str = APPROVE_VISA, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "card_number": number,
        "exp_month": 12,
        "exp_year": datetime.now(UTC).year + 3,
        "cvc": "737" if not number.startswith(("34", "37")) else "7373",
        "cardholder_name": "Ada Quillfeather",
        "billing_address": dict(ADDRESS),
    }
    body.update(changes)
    return body


@dataclass
class BillingService:
    """The billing service under test, with ways to sign in as anyone and to publish the
    events it consumes on their real topics."""

    app: FastAPI
    http: httpx.AsyncClient
    minter: TokenMinter
    producer: AIOKafkaProducer
    gateway: SandboxGateway
    spans: InMemorySpanExporter

    @property
    def deps(self) -> Dependencies:
        deps: Dependencies = self.app.state.deps
        return deps

    def as_(self, subject_id: uuid.UUID, role: Role = "client") -> dict[str, str]:
        return self.minter.headers(subject_id, role)

    async def publish(self, topic: str, *events: IntegrationEvent) -> None:
        await publish_events(self.producer, topic, *events)

    async def add_card(self, client: uuid.UUID, number: str = APPROVE_VISA) -> str:
        response = await self.http.post(
            "/v1/payment-methods", json=card_body(number), headers=self.as_(client)
        )
        assert response.status_code == 201, response.text
        payment_method_id: str = response.json()["payment_method_id"]
        return payment_method_id

    async def charge(
        self,
        client: uuid.UUID,
        payment_method_id: str,
        key: str | None = None,
        **body: Any,
    ) -> httpx.Response:
        request = {
            "payment_method_id": payment_method_id,
            "amount_cents": 15000,
            "currency": "USD",
            "description": "Session, 50 minutes",
        }
        request.update(body)
        request = {k: v for k, v in request.items() if v is not None}
        return await self.http.post(
            "/v1/charges",
            json=request,
            headers={**self.as_(client), "Idempotency-Key": key or uuid.uuid4().hex},
        )


@pytest.fixture(scope="session")
def spans() -> InMemorySpanExporter:
    # Installed before the service configures telemetry (once per process), recording spans.
    provider = configure_telemetry("confide-billing-test", "none", record_spans=True)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


@pytest.fixture(scope="session")
async def billing(
    infrastructure: Infrastructure,
    kafka_bootstrap: str,
    tmp_path_factory: pytest.TempPathFactory,
    spans: InMemorySpanExporter,
) -> AsyncIterator[BillingService]:
    minter = TokenMinter(kafka_bootstrap)
    await minter.publish_key()
    gateway = SandboxGateway()
    with scratch_database(infrastructure) as database_url:
        settings = BillingSettings(
            database_url=database_url,
            kafka_bootstrap=kafka_bootstrap,
            kek_file=Path(tmp_path_factory.mktemp("billing")) / "kek.json",
            consumer_group=f"billing-test-{uuid.uuid4().hex[:8]}",
            relay_poll_interval=0.2,
            gateway_timeout_seconds=GATEWAY_TIMEOUT,
        )
        app = create_app(settings, gateway=gateway)
        producer = idempotent_producer(kafka_bootstrap)
        await producer.start()
        try:
            async with serving(app) as http:
                service = BillingService(app, http, minter, producer, gateway, spans)
                await _until_key_known(minter, app.state.service.engine)
                yield service
        finally:
            await producer.stop()


async def _until_key_known(minter: TokenMinter, engine: AsyncEngine) -> None:
    """Wait until the service consumed the minter's key. A new consumer group reads
    identity.events from its start, which on a long-lived dev broker under load can take longer
    than `TokenMinter.wait_until_known`'s 30 s."""

    async def known() -> bool:
        async with engine.connect() as conn:
            return minter.kid in await load_signing_keys(conn)

    await eventually(known, timeout=180)


@pytest.fixture
def client() -> uuid.UUID:
    return uuid.uuid4()


@pytest.fixture
async def billing_events(kafka_bootstrap: str) -> AsyncIterator[TopicTap]:
    """A tap on billing.events from its current end."""
    async with tap(kafka_bootstrap, BILLING_EVENTS) as opened:
        yield opened
