"""Card data stays where the card rules put it: a card number, CVC and billing address submitted
(accepted or refused) and charged are never found, in plaintext, in any response, log line,
span attribute, record billing publishes, or row of billing's database."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import text

from .conftest import BillingService, TopicTap, card_body

pytestmark = pytest.mark.integration

NUMBER = "5555555555554444"
CVC = "913"
STREET = "88 Zephyrine Mews"
POSTCODE = "ZX4 8QW"


def _needles() -> list[bytes]:
    found = [
        NUMBER.encode(),
        NUMBER[:12].encode(),
        NUMBER[2:14].encode(),
        STREET.encode(),
        b"Zephyrine",
        POSTCODE.encode(),
        f'"{CVC}"'.encode(),
        f"cvc={CVC}".encode(),
    ]
    return found + [n.hex().encode() for n in found[:4]]


def _address() -> dict[str, str]:
    return {"line1": STREET, "city": "Oxbridge", "postal_code": POSTCODE, "country": "GB"}


async def test_card_data_appears_in_no_response_log_span_record_or_row(
    billing: BillingService,
    client: uuid.UUID,
    billing_events: TopicTap,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    headers = billing.as_(client)
    answers: list[Any] = []
    # Refused on every path first (a luhn-failing variant, a wrong CVC, an expired card).
    for body in (
        card_body(NUMBER[:-1] + "5", cvc=CVC, billing_address=_address()),
        card_body(NUMBER, cvc=CVC + "1", billing_address=_address()),
        card_body(NUMBER, cvc=CVC, exp_year=2021, billing_address=_address()),
        card_body(NUMBER, cvc=CVC, billing_address={**_address(), "country": "??"}),
    ):
        answers.append(await billing.http.post("/v1/payment-methods", json=body, headers=headers))
    assert [a.status_code for a in answers] == [422] * 4
    added = await billing.http.post(
        "/v1/payment-methods",
        json=card_body(NUMBER, cvc=CVC, billing_address=_address()),
        headers=headers,
    )
    assert added.status_code == 201
    answers.append(added)
    card = added.json()["payment_method_id"]
    charged = await billing.charge(client, card, amount_cents=777)
    assert charged.status_code == 201
    answers.append(charged)
    answers.append(await billing.http.get("/v1/payment-methods", headers=headers))
    answers.append(await billing.http.get("/v1/charges", headers=headers))
    invoice = await billing.http.get(
        f"/v1/invoices/{charged.json()['invoice_id']}", headers=headers
    )
    assert STREET in invoice.text  # the owner's own invoice names their billing address
    await billing_events.wait_for(
        "confide.billing.ChargeSucceeded",
        lambda found: any(e["subject_id"] == str(client) for e in found),
    )

    needles = _needles()
    for answer in answers:
        assert not any(n in answer.content for n in needles), answer.request.url
    async with billing.deps.engine.connect() as conn:
        tables = (
            await conn.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'"))
        ).scalars()
        for table in list(tables):
            rows = (await conn.execute(text(f'SELECT t::text FROM "{table}" t'))).scalars()
            dumped = "\n".join(rows).encode()
            assert not any(n in dumped for n in needles), f"card data in table {table}"
    for record in billing_events.records:
        assert not any(n in (record.value or b"") for n in needles)
        assert all(not any(n in value for n in needles) for _, value in record.headers)
    logged = (caplog.text + capsys.readouterr().out).encode()
    assert not any(n in logged for n in needles)
    spans = billing.spans.get_finished_spans()
    assert spans, "the service recorded no span to search"
    for span in spans:
        attributes = repr(dict(span.attributes or {})) + repr(
            [dict(e.attributes or {}) for e in span.events]
        )
        assert not any(n.decode() in attributes for n in needles), span.name
