"""Cards through the HTTP API against the real database and broker: added, listed masked,
removed; every refusal names its field and never echoes what was submitted."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from confide_billing.gateway import APPROVE_AMEX, CVC_REFUSED

from .conftest import BillingService, TopicTap, card_body

pytestmark = pytest.mark.integration


async def test_a_card_is_added_and_read_back_masked(
    billing: BillingService, client: uuid.UUID, billing_events: TopicTap
) -> None:
    added = await billing.http.post(
        "/v1/payment-methods", json=card_body(APPROVE_AMEX), headers=billing.as_(client)
    )
    assert added.status_code == 201, added.text
    body = added.json()
    year = datetime.now(UTC).year + 3
    assert {k: body[k] for k in ("brand", "last4", "exp_month", "exp_year")} == {
        "brand": "amex",
        "last4": "0005",
        "exp_month": 12,
        "exp_year": year,
    }
    listed = await billing.http.get("/v1/payment-methods", headers=billing.as_(client))
    assert listed.status_code == 200
    assert listed.json()["items"] == [body]
    published = await billing_events.wait_for(
        "confide.billing.PaymentMethodAdded",
        lambda found: any(e["subject_id"] == str(client) for e in found),
    )
    mine = [e for e in published if e["subject_id"] == str(client)]
    assert mine[0]["brand"] == "amex" and mine[0]["payment_method_id"] == body["payment_method_id"]
    # Nobody else sees it.
    other = await billing.http.get("/v1/payment-methods", headers=billing.as_(uuid.uuid4()))
    assert other.json()["items"] == []


async def test_a_removed_card_is_gone_from_the_list_and_refused_at_once(
    billing: BillingService, client: uuid.UUID, billing_events: TopicTap
) -> None:
    card = await billing.add_card(client)
    assert (await billing.charge(client, card)).status_code == 201
    stranger = await billing.http.delete(
        f"/v1/payment-methods/{card}", headers=billing.as_(uuid.uuid4())
    )
    assert stranger.status_code == 404
    removed = await billing.http.delete(f"/v1/payment-methods/{card}", headers=billing.as_(client))
    assert removed.status_code == 204
    refused = await billing.charge(client, card)
    assert refused.status_code == 409
    assert refused.json()["type"].endswith("/payment-method-not-usable")
    listed = await billing.http.get("/v1/payment-methods", headers=billing.as_(client))
    assert listed.json()["items"] == []
    again = await billing.http.delete(f"/v1/payment-methods/{card}", headers=billing.as_(client))
    assert again.status_code == 204
    await billing_events.wait_for(
        "confide.billing.PaymentMethodRemoved",
        lambda found: [e["payment_method_id"] for e in found].count(card) == 1,
    )


async def test_only_a_client_adds_a_card(billing: BillingService) -> None:
    refused = await billing.http.post(
        "/v1/payment-methods", json=card_body(), headers=billing.as_(uuid.uuid4(), "therapist")
    )
    assert refused.status_code == 403
    unsigned = await billing.http.post("/v1/payment-methods", json=card_body())
    assert unsigned.status_code == 401


NEXT_YEAR = datetime.now(UTC).year + 1

REFUSALS: list[tuple[dict[str, Any], str]] = [
    (card_body("4242424242424241"), "body.card_number"),  # Luhn
    (card_body("4242 4242 42x2 4242"), "body.card_number"),  # not digits
    (card_body("42424242424"), "body.card_number"),  # length
    (card_body("9999999999999995"), "body.card_number"),  # no issuer
    (card_body("4" * 40), "body.card_number"),  # longer than any number
    (card_body(exp_month=13), "body.exp_month"),
    (card_body(exp_month="twelve"), "body.exp_month"),
    (card_body(exp_year=2020), "body.exp_year"),
    (card_body(exp_month=1, exp_year=datetime.now(UTC).year - 1), "body.exp_year"),
    (card_body(cvc="73"), "body.cvc"),
    (card_body(APPROVE_AMEX, cvc="737"), "body.cvc"),
    (card_body(CVC_REFUSED), "body.cvc"),  # the gateway refused it
    (card_body(cardholder_name=""), "body.cardholder_name"),
    (
        card_body(billing_address={"line1": "x", "city": "y", "postal_code": "z"}),
        "body.billing_address.country",
    ),
    (
        card_body(billing_address={**card_body()["billing_address"], "country": "Britain"}),
        "body.billing_address.country",
    ),
]


@pytest.mark.parametrize(("body", "field"), REFUSALS)
async def test_a_refused_card_names_the_field_and_echoes_nothing(
    billing: BillingService, client: uuid.UUID, body: dict[str, Any], field: str
) -> None:
    response = await billing.http.post(
        "/v1/payment-methods", json=body, headers=billing.as_(client)
    )
    assert response.status_code == 422, response.text
    assert field in [e["field"] for e in response.json()["errors"]]
    digits = str(body["card_number"]).replace(" ", "")
    # Not the number, nor any run of it beyond what a masked card shows.
    for start in range(len(digits) - 5):
        assert digits[start : start + 6] not in response.text
    assert f'"{body["cvc"]}"' not in response.text
    listed = await billing.http.get("/v1/payment-methods", headers=billing.as_(client))
    assert listed.json()["items"] == []  # nothing was kept
