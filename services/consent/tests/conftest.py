"""Fixtures for the consent service's tests: the service running in-process against the real
Kafka broker and PostgreSQL, with two registered recipients, signed-in callers, and valid
request payloads."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from confide_consent.app import create_app
from confide_consent.cli import NORTHSIDE_CLINIC, RIVERSIDE_HOSPITAL, seed_dev_recipients
from confide_consent.handlers import Dependencies
from confide_consent.settings import ConsentSettings
from confide_testing import Infrastructure, TokenMinter, scratch_database, serving
from confide_toolkit.service import Service
from fastapi import FastAPI


def share_with_provider(**overrides: Any) -> dict[str, Any]:
    """A valid grant of share_with_provider to a development clinic (registered per test)."""
    return {
        "purpose": "share_with_provider",
        "recipient_id": str(NORTHSIDE_CLINIC),
        "data_categories": ["messaging.session_notes"],
        "policy_version": "2026-01",
        "method": "web_form",
        **overrides,
    }


def research(**overrides: Any) -> dict[str, Any]:
    """A valid grant of research (no recipient)."""
    return {
        "purpose": "research",
        "data_categories": ["messaging.messages"],
        "policy_version": "2026-01",
        **overrides,
    }


class Payloads:
    """Valid request bodies, with overrides (tests ask for the `payloads` fixture)."""

    northside_clinic = NORTHSIDE_CLINIC
    riverside_hospital = RIVERSIDE_HOSPITAL
    share_with_provider = staticmethod(share_with_provider)
    research = staticmethod(research)


@pytest.fixture
def payloads() -> type[Payloads]:
    return Payloads


@dataclass
class ConsentService:
    """The consent service under test, with a client and a way to sign in as anyone."""

    app: FastAPI
    http: httpx.AsyncClient
    minter: TokenMinter
    settings: ConsentSettings
    client_id: uuid.UUID = field(default_factory=uuid.uuid4)

    @property
    def service(self) -> Service:
        service: Service = self.app.state.service
        return service

    @property
    def deps(self) -> Dependencies:
        deps: Dependencies = self.app.state.deps
        return deps

    def as_client(self, subject_id: uuid.UUID | None = None) -> dict[str, str]:
        return self.minter.headers(subject_id or self.client_id, "client")

    def as_compliance(self) -> dict[str, str]:
        return self.minter.headers(uuid.uuid4(), "compliance")

    async def grant(self, payload: dict[str, Any], subject_id: uuid.UUID | None = None) -> Any:
        response = await self.http.post(
            "/v1/consents", json=payload, headers=self.as_client(subject_id)
        )
        assert response.status_code == 201, response.text
        return response.json()


@pytest.fixture
def consent_settings(database_url: str, kafka_bootstrap: str, tmp_path: Path) -> ConsentSettings:
    return ConsentSettings(
        database_url=database_url,
        kafka_bootstrap=kafka_bootstrap,
        kek_file=tmp_path / "kek.json",
        consumer_group=f"consent-test-{uuid.uuid4().hex[:8]}",
        relay_poll_interval=0.2,
    )


@pytest.fixture
async def consent(
    consent_settings: ConsentSettings, token_minter: TokenMinter
) -> AsyncIterator[ConsentService]:
    app = create_app(consent_settings)
    async with serving(app) as http:
        service = ConsentService(app, http, token_minter, consent_settings)
        # No migration registers recipients: the tests name the development stack's two.
        await seed_dev_recipients(service.deps.engine, service.deps.clock)
        await token_minter.wait_until_known(app.state.service.engine)
        yield service


@pytest.fixture
def second_database_url(infrastructure: Infrastructure) -> Iterator[str]:
    """Another fresh database: the one a consuming service (say, messaging) owns."""
    with scratch_database(infrastructure) as url:
        yield url
