"""Identity and consent as two real processes that trust each other only through Kafka:
consent verifies identity's tokens with the keys identity published as events, refuses a closed
account's tokens and withdraws its consents when identity's events reach it."""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import sqlalchemy

ServiceStarter = Callable[..., Any]  # the `start_service` fixture of conftest.py

pytestmark = pytest.mark.integration


def until(check: Callable[[], Any], timeout: float = 60, what: str = "condition") -> Any:
    """Poll `check` until it returns something truthy (events cross Kafka asynchronously)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.25)
    pytest.fail(f"timed out waiting for {what}")


def test_consent_granted_with_an_identity_token_is_withdrawn_when_the_account_closes(
    start_service: ServiceStarter,
) -> None:
    identity = start_service("identity")
    consent = start_service("consent")
    email = f"journey-{uuid.uuid4().hex[:8]}@example.org"
    password = f"correct horse {uuid.uuid4().hex[:6]} battery"
    display_name = "Journey Person"

    registered = httpx.post(
        f"{identity.url}/v1/accounts",
        json={"email": email, "password": password, "display_name": display_name, "role": "client"},
        timeout=30,
    )
    assert registered.status_code == 201, registered.text
    assert uuid.UUID(registered.json()["user_id"])

    def sign_in() -> httpx.Response | None:
        answer = httpx.post(
            f"{identity.url}/v1/sessions", json={"email": email, "password": password}, timeout=30
        )
        return answer if answer.status_code == 200 else None

    tokens = until(sign_in, what="identity to sign in").json()
    headers = {"Authorization": f"Bearer {tokens['access_token']}"}

    research = next(
        p
        for p in httpx.get(f"{consent.url}/v1/purposes", timeout=10).json()["items"]
        if p["purpose"] == "research"
    )

    def grant() -> httpx.Response | None:
        answer = httpx.post(
            f"{consent.url}/v1/consents",
            json={
                "purpose": "research",
                "data_categories": ["messaging.messages"],
                "policy_version": research["policy_version"],
            },
            headers=headers,
            timeout=10,
        )
        # 401 until consent has consumed identity's SigningKeyPublished from Kafka.
        return answer if answer.status_code != 401 else None

    granted = until(grant, what="consent to learn identity's signing key")
    assert granted.status_code == 201, granted.text
    consent_id = granted.json()["consent_id"]

    closed = httpx.post(f"{identity.url}/v1/accounts/me/close", headers=headers, timeout=10)
    assert closed.status_code == 202, closed.text

    # Consent never calls identity: it learns of the closure from identity.events, refuses the
    # closed session's token (SessionsRevoked) and withdraws the consents (AccountClosed).
    def refused() -> bool:
        answer = httpx.get(f"{consent.url}/v1/consents", headers=headers, timeout=10)
        return answer.status_code == 401

    until(refused, what="consent to refuse the closed session's token")

    def withdrawn() -> str | None:
        # Read in consent's own database: nobody may sign in as the closed account any more.
        engine = sqlalchemy.create_engine(consent.database_url)
        try:
            with engine.connect() as connection:
                reason: str | None = connection.scalar(
                    sqlalchemy.text("SELECT revoke_reason FROM consents WHERE consent_id = :id"),
                    {"id": consent_id},
                )
                return reason
        finally:
            engine.dispose()

    reason = until(withdrawn, what="consent to withdraw the closed account's consent")
    assert reason == "account_closed"

    # Both stop cleanly on SIGTERM, as an orchestrator stops them: uvicorn finishes the
    # shutdown (consumers drained, relay flushed) and then re-raises the signal.
    for service in (identity, consent):
        assert service.stop() == -signal.SIGTERM
        log = service.log()
        assert '"message": "service stopped"' in log
        assert email not in log and display_name not in log and password not in log
