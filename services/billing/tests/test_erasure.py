"""Closing an account and retention's expiries, through Kafka: `AccountClosed` makes every card
of the person unusable at once; a `RetentionExpired` for billing.payment_methods shreds the card
key (the cards no longer open: 409 on a charge) while invoices stay readable; one for
billing.financial_records shreds that key, and invoices then show the person as erased while
their numbers and amounts stay. Each expiry is answered (`SubjectDataShredded`), "nothing held"
for a person billing never saw."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from confide_events.identity import AccountClosed
from confide_events.retention import RetentionExpired
from confide_events.topics import IDENTITY_EVENTS, RETENTION_EVENTS

from .conftest import BillingService, TopicTap, card_body

pytestmark = pytest.mark.integration

SHREDDED = "confide.billing.SubjectDataShredded"


async def _expire(billing: BillingService, subject_id: uuid.UUID, category: str) -> None:
    await billing.publish(
        RETENTION_EVENTS,
        RetentionExpired(
            subject_id=subject_id,
            category=category,  # type: ignore[arg-type]
            policy="billing.default",
            due_at=datetime.now(UTC),
        ),
    )


async def _shredded(
    billing: BillingService, tap: TopicTap, subject_id: uuid.UUID, category: str
) -> dict[str, Any]:
    """This billing's answer, the one that shredded: every billing deployment on this broker
    answers (the dev stack's "nothing held", for a person it never saw)."""

    def mine(e: dict[str, Any]) -> bool:
        return (
            e["subject_id"] == str(subject_id)
            and e["category"] == category
            and e["outcome"] == "shredded"
        )

    [answer] = [e for e in await tap.wait_for(SHREDDED, lambda f: any(map(mine, f))) if mine(e)]
    async with billing.deps.engine.connect() as conn:
        tombstones = await billing.deps.keyring.tombstones(conn, subject_id)
    assert answer["key_id"] in [str(t.key_id) for t in tombstones if t.category == category]
    return answer


async def test_account_closed_makes_every_card_unusable(
    billing: BillingService, client: uuid.UUID, billing_events: TopicTap
) -> None:
    cards = [await billing.add_card(client) for _ in range(2)]
    await billing.publish(
        IDENTITY_EVENTS, AccountClosed(subject_id=client, closed_at=datetime.now(UTC))
    )

    # The closure applied (its removals published), every card refuses a charge. (Retention,
    # where it runs on this broker, may also expire the cards on the closure: 409 just the same.)
    await billing_events.wait_for(
        "confide.billing.PaymentMethodRemoved",
        lambda f: {e["payment_method_id"] for e in f} >= set(cards),
    )
    for card in cards:
        refused = await billing.charge(client, card)
        assert refused.status_code == 409
        assert refused.json()["type"].endswith("/payment-method-not-usable")
    added = await billing.http.post(
        "/v1/payment-methods",
        json=card_body(),
        headers=billing.as_(client),
    )
    assert added.status_code == 409
    assert added.json()["type"].endswith("/account-not-open")


async def test_shredding_the_cards_keeps_invoices_then_shredding_records_erases_the_person(
    billing: BillingService, client: uuid.UUID, billing_events: TopicTap
) -> None:
    card = await billing.add_card(client)
    charged = (await billing.charge(client, card, amount_cents=4200, currency="EUR")).json()
    invoice_path = f"/v1/invoices/{charged['invoice_id']}"
    before = (await billing.http.get(invoice_path, headers=billing.as_(client))).json()

    await _expire(billing, client, "billing.payment_methods")
    await _shredded(billing, billing_events, client, "billing.payment_methods")
    refused = await billing.charge(client, card)
    assert refused.status_code == 409
    [listed] = (await billing.http.get("/v1/payment-methods", headers=billing.as_(client))).json()[
        "items"
    ]
    assert (listed["brand"], listed["last4"], listed["exp_year"]) == ("visa", None, None)
    # The invoice outlives the card: unchanged.
    assert (await billing.http.get(invoice_path, headers=billing.as_(client))).json() == before

    await _expire(billing, client, "billing.financial_records")
    await _shredded(billing, billing_events, client, "billing.financial_records")
    after = (await billing.http.get(invoice_path, headers=billing.as_(client))).json()
    assert after["person_erased"] is True and after["bill_to"] is None
    assert [line["description"] for line in after["lines"]] == [None]
    for kept in ("invoice_number", "period", "total_cents", "total_charged_cents", "currency"):
        assert after[kept] == before[kept]
    assert [line["amount_cents"] for line in after["lines"]] == [4200]
    pdf = await billing.http.get(f"{invoice_path}/pdf", headers=billing.as_(client))
    assert pdf.status_code == 200 and b"Quillfeather" not in pdf.content

    # A new card after the erasure is new data the person gives: it works, under a fresh key.
    fresh = await billing.add_card(client)
    assert (await billing.charge(client, fresh)).status_code == 201


async def test_an_expiry_for_a_person_billing_never_saw_is_answered_nothing_held(
    billing: BillingService, billing_events: TopicTap
) -> None:
    stranger = uuid.uuid4()
    await _expire(billing, stranger, "billing.financial_records")

    def about(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [e for e in found if e["subject_id"] == str(stranger)]

    answers = about(await billing_events.wait_for(SHREDDED, lambda f: bool(about(f))))
    # One answer per billing deployment on this broker (the dev stack's too), each the same.
    for answer in answers:
        assert (answer["outcome"], answer["key_id"]) == ("nothing_held", None)
        assert answer["category"] == "billing.financial_records"
