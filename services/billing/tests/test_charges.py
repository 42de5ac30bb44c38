"""Charges through the HTTP API and the sandbox gateway, against the real database and broker:
approved, declined, a processor error, a time-out; an Idempotency-Key that makes a retried
charge never charge twice, even when the first attempt's gateway call timed out."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import pytest
from confide_billing.gateway import (
    APPROVE_VISA,
    CARD_DECLINED,
    EXPIRED_CARD,
    INSUFFICIENT_FUNDS,
    PROCESSOR_ERROR,
    TIME_OUT,
)
from confide_billing.handlers.charges import reconcile_pending
from confide_billing.store import charge_attempts, charges
from sqlalchemy import func, select

from .conftest import BillingService, TopicTap

pytestmark = pytest.mark.integration

SUCCEEDED = "confide.billing.ChargeSucceeded"
FAILED = "confide.billing.ChargeFailed"


async def _rows(billing: BillingService, table: object, client: uuid.UUID) -> int:
    async with billing.deps.engine.connect() as conn:
        count: int = await conn.scalar(
            select(func.count()).select_from(table).where(table.c.subject_id == client)  # type: ignore[attr-defined]
        )
    return count


async def test_an_approved_charge_is_recorded_listed_and_published(
    billing: BillingService, client: uuid.UUID, billing_events: TopicTap
) -> None:
    card = await billing.add_card(client)
    charged = await billing.charge(client, card, amount_cents=12345, currency="EUR")
    assert charged.status_code == 201, charged.text
    body = charged.json()
    assert (body["status"], body["amount_cents"], body["currency"]) == ("succeeded", 12345, "EUR")
    listed = await billing.http.get("/v1/charges", headers=billing.as_(client))
    [item] = listed.json()["items"]
    assert item["charge_id"] == body["charge_id"]
    assert item["description"] == "Session, 50 minutes"
    published = await billing_events.wait_for(
        SUCCEEDED, lambda found: any(e["charge_id"] == body["charge_id"] for e in found)
    )
    event = next(e for e in published if e["charge_id"] == body["charge_id"])
    assert (event["amount_cents"], event["currency"], event["subject_id"]) == (
        12345,
        "EUR",
        str(client),
    )
    assert "description" not in event


async def test_a_session_type_is_charged_at_its_price(
    billing: BillingService, client: uuid.UUID
) -> None:
    card = await billing.add_card(client)
    priced = await billing.charge(
        client, card, amount_cents=None, currency="GBP", session_type="couples_80"
    )
    assert priced.status_code == 201, priced.text
    assert priced.json()["amount_cents"] == 17500
    wrong = await billing.charge(
        client, card, amount_cents=100, currency="GBP", session_type="couples_80"
    )
    assert wrong.status_code == 422
    assert [e["field"] for e in wrong.json()["errors"]] == ["body.amount_cents"]
    unknown = await billing.charge(client, card, session_type="massage")
    assert [e["field"] for e in unknown.json()["errors"]] == ["body.session_type"]
    currency = await billing.charge(client, card, currency="XYZ")
    assert [e["field"] for e in currency.json()["errors"]] == ["body.currency"]


@pytest.mark.parametrize(
    ("number", "code"),
    [
        (INSUFFICIENT_FUNDS, "insufficient_funds"),
        (CARD_DECLINED, "card_declined"),
        (EXPIRED_CARD, "expired_card"),
    ],
)
async def test_a_decline_answers_402_and_is_recorded_as_failed(
    billing: BillingService, client: uuid.UUID, billing_events: TopicTap, number: str, code: str
) -> None:
    card = await billing.add_card(client, number)
    declined = await billing.charge(client, card, key="first")
    assert declined.status_code == 402, declined.text
    problem = declined.json()
    assert problem["type"].endswith("/charge-declined") and problem["failure_code"] == code
    # The same key answers the same decline, without asking the gateway again.
    calls = billing.gateway.calls
    again = await billing.charge(client, card, key="first")
    assert (again.status_code, again.json()["charge_id"]) == (402, problem["charge_id"])
    assert billing.gateway.calls == calls
    [item] = (await billing.http.get("/v1/charges", headers=billing.as_(client))).json()["items"]
    assert (item["status"], item["failure_code"]) == ("failed", code)
    await billing_events.wait_for(
        FAILED,
        lambda found: any(
            e["charge_id"] == problem["charge_id"] and e["failure_code"] == code for e in found
        ),
    )


async def test_a_processor_error_leaves_no_half_recorded_charge(
    billing: BillingService, client: uuid.UUID
) -> None:
    card = await billing.add_card(client, PROCESSOR_ERROR)
    failed = await billing.charge(client, card, key="k")
    assert failed.status_code == 502, failed.text
    assert failed.json()["type"].endswith("/payment-processor-error")
    assert await _rows(billing, charges, client) == 0
    assert await _rows(billing, charge_attempts, client) == 0
    # The key is free again: a retry tries again (and fails again, here).
    assert (await billing.charge(client, card, key="k")).status_code == 502
    listed = await billing.http.get("/v1/charges", headers=billing.as_(client))
    assert listed.json()["items"] == []


async def test_a_retry_after_a_gateway_time_out_charges_exactly_once(
    billing: BillingService, client: uuid.UUID, billing_events: TopicTap
) -> None:
    card = await billing.add_card(client, TIME_OUT)
    timed_out = await billing.charge(client, card, key="after-timeout")
    assert timed_out.status_code == 503, timed_out.text
    assert timed_out.json()["type"].endswith("/payment-gateway-timeout")
    assert timed_out.headers["Retry-After"] == "1"
    assert await _rows(billing, charges, client) == 0  # outcome unknown: nothing charged yet
    calls = billing.gateway.calls

    retried = await billing.charge(client, card, key="after-timeout")
    assert retried.status_code == 201, retried.text
    charge_id = retried.json()["charge_id"]
    assert billing.gateway.calls == calls  # reconciled by asking, not by charging again
    at_gateway = [c for c in billing.gateway.approved_charges() if str(c.attempt_id) == charge_id]
    assert len(at_gateway) == 1
    again = await billing.charge(client, card, key="after-timeout")
    assert again.json()["charge_id"] == charge_id
    items = (await billing.http.get("/v1/charges", headers=billing.as_(client))).json()["items"]
    assert [i["charge_id"] for i in items] == [charge_id]
    await billing_events.wait_for(SUCCEEDED, lambda f: any(e["charge_id"] == charge_id for e in f))
    await asyncio.sleep(0.5)
    await billing_events.drain()
    assert [e["charge_id"] for e in billing_events.events(SUCCEEDED)].count(charge_id) == 1


async def test_a_time_out_nobody_retries_is_settled_from_the_gateways_record(
    billing: BillingService, client: uuid.UUID
) -> None:
    card = await billing.add_card(client, TIME_OUT)
    assert (await billing.charge(client, card, key="left")).status_code == 503
    assert await _rows(billing, charges, client) == 0

    assert await reconcile_pending(billing.deps, timedelta(0)) >= 1
    [item] = (await billing.http.get("/v1/charges", headers=billing.as_(client))).json()["items"]
    assert item["status"] == "succeeded"
    retried = await billing.charge(client, card, key="left")
    assert (retried.status_code, retried.json()["charge_id"]) == (201, item["charge_id"])
    assert await _rows(billing, charge_attempts, client) == 1


async def test_concurrent_retries_with_one_key_charge_once(
    billing: BillingService, client: uuid.UUID
) -> None:
    card = await billing.add_card(client, APPROVE_VISA)
    answers = await asyncio.gather(*(billing.charge(client, card, key="once") for _ in range(5)))
    assert {a.status_code for a in answers} == {201}
    assert len({a.json()["charge_id"] for a in answers}) == 1
    assert await _rows(billing, charges, client) == 1


async def test_a_key_reused_for_another_charge_is_refused(
    billing: BillingService, client: uuid.UUID
) -> None:
    card = await billing.add_card(client)
    assert (await billing.charge(client, card, key="same", amount_cents=1000)).status_code == 201
    other = await billing.charge(client, card, key="same", amount_cents=2000)
    assert other.status_code == 422
    assert [e["field"] for e in other.json()["errors"]] == ["header.Idempotency-Key"]
    assert await _rows(billing, charges, client) == 1


async def test_a_charge_needs_an_idempotency_key_and_the_owners_card(
    billing: BillingService, client: uuid.UUID
) -> None:
    card = await billing.add_card(client)
    missing = await billing.http.post(
        "/v1/charges",
        json={
            "payment_method_id": card,
            "amount_cents": 100,
            "currency": "USD",
            "description": "x",
        },
        headers=billing.as_(client),
    )
    assert missing.status_code == 422
    assert [e["field"] for e in missing.json()["errors"]] == ["header.Idempotency-Key"]
    stranger = await billing.charge(uuid.uuid4(), card)
    assert stranger.status_code == 404


async def test_charges_are_listed_newest_first_a_page_at_a_time(
    billing: BillingService, client: uuid.UUID
) -> None:
    card = await billing.add_card(client)
    made = [
        (await billing.charge(client, card, amount_cents=100 + i)).json()["charge_id"]
        for i in range(5)
    ]
    first = (await billing.http.get("/v1/charges?limit=3", headers=billing.as_(client))).json()
    assert [i["charge_id"] for i in first["items"]] == made[::-1][:3]
    second = (
        await billing.http.get(
            f"/v1/charges?limit=3&cursor={first['next_cursor']}", headers=billing.as_(client)
        )
    ).json()
    assert [i["charge_id"] for i in second["items"]] == made[::-1][3:]
    assert second["next_cursor"] is None
