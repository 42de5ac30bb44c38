"""Refunds through the HTTP API: partial and whole, never above what the charge took, only by
the therapist the charge names, published as `RefundIssued`."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from confide_billing.gateway import CARD_DECLINED

from .conftest import BillingService, TopicTap

pytestmark = pytest.mark.integration


async def _charged(billing: BillingService, client: uuid.UUID, therapist: uuid.UUID) -> str:
    card = await billing.add_card(client)
    charged = await billing.charge(
        client, card, amount_cents=10_000, currency="USD", therapist_id=str(therapist)
    )
    assert charged.status_code == 201, charged.text
    charge_id: str = charged.json()["charge_id"]
    return charge_id


async def test_partial_then_whole_refunds_never_above_the_charge(
    billing: BillingService, client: uuid.UUID, billing_events: TopicTap
) -> None:
    therapist = uuid.uuid4()
    charge_id = await _charged(billing, client, therapist)
    as_therapist = billing.as_(therapist, "therapist")
    path = f"/v1/charges/{charge_id}/refunds"
    partial = await billing.http.post(
        path, json={"amount_cents": 3000, "reason": "goodwill"}, headers=as_therapist
    )
    assert partial.status_code == 201, partial.text
    assert (partial.json()["amount_cents"], partial.json()["currency"]) == (3000, "USD")
    too_much = await billing.http.post(
        path, json={"amount_cents": 7001, "reason": "goodwill"}, headers=as_therapist
    )
    assert too_much.status_code == 422
    assert [e["field"] for e in too_much.json()["errors"]] == ["body.amount_cents"]
    rest = await billing.http.post(path, json={"reason": "session_cancelled"}, headers=as_therapist)
    assert rest.status_code == 201 and rest.json()["amount_cents"] == 7000
    nothing_left = await billing.http.post(path, json={"reason": "goodwill"}, headers=as_therapist)
    assert nothing_left.status_code == 422
    [item] = (await billing.http.get("/v1/charges", headers=billing.as_(client))).json()["items"]
    assert item["refunded_cents"] == 10_000
    await billing_events.wait_for(
        "confide.billing.RefundIssued",
        lambda found: (
            sorted(e["amount_cents"] for e in found if e["charge_id"] == charge_id) == [3000, 7000]
        ),
    )


async def test_concurrent_refunds_together_never_exceed_the_charge(
    billing: BillingService, client: uuid.UUID
) -> None:
    therapist = uuid.uuid4()
    charge_id = await _charged(billing, client, therapist)
    answers = await asyncio.gather(
        *(
            billing.http.post(
                f"/v1/charges/{charge_id}/refunds",
                json={"amount_cents": 3000, "reason": "goodwill"},
                headers=billing.as_(therapist, "therapist"),
            )
            for _ in range(5)
        )
    )
    assert sorted(a.status_code for a in answers) == [201, 201, 201, 422, 422]
    [item] = (await billing.http.get("/v1/charges", headers=billing.as_(client))).json()["items"]
    assert item["refunded_cents"] == 9000


async def test_only_the_charges_therapist_refunds_and_only_a_charge_that_succeeded(
    billing: BillingService, client: uuid.UUID
) -> None:
    therapist = uuid.uuid4()
    charge_id = await _charged(billing, client, therapist)
    for who in (billing.as_(client), billing.as_(uuid.uuid4(), "therapist")):
        refused = await billing.http.post(
            f"/v1/charges/{charge_id}/refunds", json={"reason": "goodwill"}, headers=who
        )
        assert refused.status_code == 404
    card = await billing.add_card(client, CARD_DECLINED)
    declined = await billing.charge(client, card, therapist_id=str(therapist))
    refused = await billing.http.post(
        f"/v1/charges/{declined.json()['charge_id']}/refunds",
        json={"reason": "goodwill"},
        headers=billing.as_(therapist, "therapist"),
    )
    assert refused.status_code == 409
