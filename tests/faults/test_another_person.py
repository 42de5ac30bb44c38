"""The authorisation matrix's last row: another person. A valid token of someone else, a client or
a therapist, reaches nothing of a client's through any operation that names it: not their
conversation, notes, card, charge, invoice, consent or erasure request, and their lists show
none of it. Every refusal is 403 or 404, and the client's data is as it was afterwards.

Runs against the running suite (`make up`), one person's data created through the APIs."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
import pytest

from .load import message_in_a_new_conversation, retry, signed_in

pytestmark = pytest.mark.integration

REFUSED = {403, 404}
SANDBOX_CARD = "4242424242424242"


@dataclass(frozen=True)
class Holdings:
    """What one client owns across the suite, by id."""

    client_id: str
    client: dict[str, str]
    therapist: dict[str, str]
    conversation_id: str
    consent_id: str
    payment_method_id: str
    charge_id: str
    invoice_id: str


async def _holdings(http: httpx.AsyncClient, urls: dict[str, str]) -> Holdings:
    client_id, client = await signed_in(http, urls["identity"], "owner", role="client")
    therapist_id, therapist = await signed_in(http, urls["identity"], "carer", role="therapist")
    conversation_id = await message_in_a_new_conversation(
        http, urls["messaging"], client, therapist_id, "mine alone"
    )
    await retry(
        "note",
        lambda: http.post(
            f"{urls['messaging']}/v1/clients/{client_id}/notes",
            json={"body": "a note about the owner"},
            headers=therapist,
        ),
        201,
    )
    purposes = (await http.get(f"{urls['consent']}/v1/purposes")).json()["items"]
    version = next(p["policy_version"] for p in purposes if p["purpose"] == "research")
    consent = await retry(
        "consent",
        lambda: http.post(
            f"{urls['consent']}/v1/consents",
            json={
                "purpose": "research",
                "data_categories": ["messaging.messages"],
                "policy_version": version,
            },
            headers=client,
        ),
        201,
    )
    card = await retry(
        "card",
        lambda: http.post(
            f"{urls['billing']}/v1/payment-methods",
            json={
                "card_number": SANDBOX_CARD,
                "exp_month": 12,
                "exp_year": datetime.now(UTC).year + 2,
                "cvc": "123",
                "cardholder_name": "Owner",
                "billing_address": {
                    "line1": "1 Main St",
                    "city": "Springfield",
                    "postal_code": "12345",
                    "country": "US",
                },
            },
            headers=client,
        ),
        201,
    )
    payment_method_id = card.json()["payment_method_id"]
    idempotency_key = str(uuid.uuid4())
    charge = await retry(
        "charge",
        lambda: http.post(
            f"{urls['billing']}/v1/charges",
            json={
                "payment_method_id": payment_method_id,
                "amount_cents": 5000,
                "currency": "USD",
                "description": "session",
            },
            headers={**client, "Idempotency-Key": idempotency_key},
        ),
        201,
    )
    return Holdings(
        client_id=client_id,
        client=client,
        therapist=therapist,
        conversation_id=conversation_id,
        consent_id=consent.json()["consent_id"],
        payment_method_id=payment_method_id,
        charge_id=charge.json()["charge_id"],
        invoice_id=charge.json()["invoice_id"],
    )


def _attempts(urls: dict[str, str], owner: Holdings) -> list[tuple[str, str, dict[str, object]]]:
    """Every operation that names something of the owner's: (method, url, body)."""
    messaging, billing, consent = urls["messaging"], urls["billing"], urls["consent"]
    conversation = f"{messaging}/v1/conversations/{owner.conversation_id}/messages"
    notes = f"{messaging}/v1/clients/{owner.client_id}/notes"
    invoice = f"{billing}/v1/invoices/{owner.invoice_id}"
    consent_url = f"{consent}/v1/consents/{owner.consent_id}"
    return [
        ("GET", conversation, {}),
        ("POST", conversation, {"body": "not yours"}),
        ("GET", notes, {}),
        ("POST", notes, {"body": "not your client"}),
        ("DELETE", f"{billing}/v1/payment-methods/{owner.payment_method_id}", {}),
        ("POST", f"{billing}/v1/charges/{owner.charge_id}/refunds", {"reason": "goodwill"}),
        ("GET", invoice, {}),
        ("GET", f"{invoice}/pdf", {}),
        ("GET", f"{invoice}/superbill", {}),
        ("GET", f"{invoice}/superbill/pdf", {}),
        ("GET", consent_url, {}),
        ("GET", f"{consent_url}/receipt", {}),
        ("GET", f"{consent_url}/validity", {}),
        ("DELETE", consent_url, {}),
    ]


async def test_another_person_reaches_nothing_of_a_clients(service_urls: dict[str, str]) -> None:
    urls = service_urls
    async with httpx.AsyncClient(timeout=60) as http:
        owner = await _holdings(http, urls)
        _, other_client = await signed_in(http, urls["identity"], "other", role="client")
        _, other_therapist = await signed_in(http, urls["identity"], "stranger", role="therapist")
        # An erasure request is the most personal of all: a second client asks for theirs.
        requester_id, requester = await signed_in(http, urls["identity"], "leaving", role="client")
        erasure = await retry(
            "erasure request",
            lambda: http.post(
                f"{urls['retention']}/v1/erasure-requests",
                json={"subject_id": requester_id},
                headers=requester,
            ),
            202,
        )
        request_url = f"{urls['retention']}/v1/erasure-requests/{erasure.json()['request_id']}"

        let_through = []
        tried = 0
        for who, token in [
            ("another client", other_client),
            ("another therapist", other_therapist),
        ]:
            for method, url, body in [*_attempts(urls, owner), ("GET", request_url, {})]:
                headers = {**token, "Idempotency-Key": str(uuid.uuid4())}
                answer = await http.request(method, url, json=body or None, headers=headers)
                tried += 1
                if answer.status_code not in REFUSED:
                    let_through.append(f"{who}: {method} {url} -> {answer.status_code}")
            listed = [
                (await http.get(f"{urls[service]}{path}", headers=token)).text
                for service, path in [
                    ("messaging", "/v1/conversations"),
                    ("billing", "/v1/payment-methods"),
                    ("billing", "/v1/charges"),
                    ("billing", "/v1/invoices"),
                ]
            ]
            if who == "another client":
                listed.append(
                    (await http.get(f"{urls['consent']}/v1/consents", headers=token)).text
                )
            owned = [
                owner.conversation_id,
                owner.payment_method_id,
                owner.charge_id,
                owner.invoice_id,
                owner.consent_id,
            ]
            let_through += [f"{who} lists {i}" for i in owned if any(i in text for text in listed)]
        print(
            f"another person: {tried} attempts on a client's data, {len(let_through)} let through"
        )
        assert not let_through

        # And the owner's data is as it was: nothing was withdrawn, removed or refunded.
        consent = await http.get(
            f"{urls['consent']}/v1/consents/{owner.consent_id}", headers=owner.client
        )
        assert consent.json()["status"] == "active"
        cards = await http.get(f"{urls['billing']}/v1/payment-methods", headers=owner.client)
        assert owner.payment_method_id in cards.text
        charges = await http.get(f"{urls['billing']}/v1/charges", headers=owner.client)
        charge = next(c for c in charges.json()["items"] if c["charge_id"] == owner.charge_id)
        assert charge["refunded_cents"] == 0
        messages = await http.get(
            f"{urls['messaging']}/v1/conversations/{owner.conversation_id}/messages",
            headers=owner.client,
        )
        assert [m["body"] for m in messages.json()["items"]] == ["mine alone"]
        notes = await http.get(
            f"{urls['messaging']}/v1/clients/{owner.client_id}/notes", headers=owner.therapist
        )
        assert [n["body"] for n in notes.json()["items"]] == ["a note about the owner"]
