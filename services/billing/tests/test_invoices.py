"""Invoices through the HTTP API: one per month and currency, numbered without gaps per year
even under concurrent charges, downloadable as JSON and as a PDF that holds its totals (read
back with a PDF text extractor), and a superbill with dates, session types, amounts and the
therapist's id only."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from datetime import UTC, datetime

import pytest
from confide_billing.store import invoices
from sqlalchemy import select

from .conftest import BillingService

pytestmark = pytest.mark.integration


async def _invoice_of(billing: BillingService, client: uuid.UUID, charge: dict[str, str]) -> dict:  # type: ignore[type-arg]
    response = await billing.http.get(
        f"/v1/invoices/{charge['invoice_id']}", headers=billing.as_(client)
    )
    assert response.status_code == 200, response.text
    invoice: dict = response.json()  # type: ignore[type-arg]
    return invoice


async def test_a_months_charges_and_refunds_make_one_invoice_with_its_totals(
    billing: BillingService, client: uuid.UUID
) -> None:
    therapist = uuid.uuid4()
    card = await billing.add_card(client)
    first = (
        await billing.charge(
            client,
            card,
            amount_cents=None,
            currency="EUR",
            session_type="individual_50",
            therapist_id=str(therapist),
            description="Weekly session",
        )
    ).json()
    second = (
        await billing.charge(
            client,
            card,
            amount_cents=None,
            currency="EUR",
            session_type="intake_60",
            therapist_id=str(therapist),
            description="First session",
        )
    ).json()
    dollars = (await billing.charge(client, card, amount_cents=999, currency="USD")).json()
    assert first["invoice_id"] == second["invoice_id"] != dollars["invoice_id"]
    refunded = await billing.http.post(
        f"/v1/charges/{first['charge_id']}/refunds",
        json={"amount_cents": 2500, "reason": "goodwill"},
        headers=billing.as_(therapist, "therapist"),
    )
    assert refunded.status_code == 201

    invoice = await _invoice_of(billing, client, first)
    now = datetime.now(UTC)
    assert invoice["period"] == f"{now.year:04d}-{now.month:02d}"
    assert invoice["invoice_number"].startswith(f"{now.year}-")
    assert [line["amount_cents"] for line in invoice["lines"]] == [14000, 16500]
    assert [line["description"] for line in invoice["lines"]] == ["Weekly session", "First session"]
    assert (invoice["total_charged_cents"], invoice["total_refunded_cents"]) == (30500, 2500)
    assert invoice["total_cents"] == 28000
    assert invoice["bill_to"]["name"] == "Ada Quillfeather"
    assert invoice["person_erased"] is False
    listed = (await billing.http.get("/v1/invoices", headers=billing.as_(client))).json()
    assert {i["invoice_id"] for i in listed["items"]} == {
        first["invoice_id"],
        dollars["invoice_id"],
    }
    stranger = await billing.http.get(
        f"/v1/invoices/{first['invoice_id']}", headers=billing.as_(uuid.uuid4())
    )
    assert stranger.status_code == 404

    superbill = (
        await billing.http.get(
            f"/v1/invoices/{first['invoice_id']}/superbill", headers=billing.as_(client)
        )
    ).json()
    assert [
        (i["session_type"], i["amount_cents"], i["therapist_id"], i["refunded_cents"])
        for i in superbill["items"]
    ] == [("individual_50", 14000, str(therapist), 2500), ("intake_60", 16500, str(therapist), 0)]
    assert all(i["date"].startswith(f"{now.year:04d}-") for i in superbill["items"])
    assert "Weekly session" not in str(superbill)  # no description, nothing of the sessions


async def test_the_pdf_opens_and_holds_the_invoices_number_and_totals(
    billing: BillingService, client: uuid.UUID
) -> None:
    card = await billing.add_card(client)
    charged = (await billing.charge(client, card, amount_cents=12345, currency="EUR")).json()
    await billing.charge(client, card, amount_cents=55, currency="EUR")
    invoice = await _invoice_of(billing, client, charged)
    response = await billing.http.get(
        f"/v1/invoices/{charged['invoice_id']}/pdf", headers=billing.as_(client)
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/pdf"
    assert response.content.startswith(b"%PDF-")
    text = await _pdf_text(response.content)
    assert f"Invoice {invoice['invoice_number']}" in text
    assert "Total charged: 124.00 EUR" in text
    assert "Total: 124.00 EUR" in text
    assert "Ada Quillfeather" in text


async def _pdf_text(content: bytes) -> str:
    pdftotext = shutil.which("pdftotext")
    assert pdftotext, "pdftotext (poppler-utils) is needed to read the PDF back"
    extractor = await asyncio.create_subprocess_exec(
        pdftotext,
        "-layout",
        "-",
        "-",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await extractor.communicate(content)
    assert extractor.returncode == 0
    return out.decode()


async def test_the_superbill_pdf_holds_each_sessions_date_type_therapist_and_amount(
    billing: BillingService, client: uuid.UUID
) -> None:
    therapist = uuid.uuid4()
    card = await billing.add_card(client)
    charged = (
        await billing.charge(
            client,
            card,
            amount_cents=None,
            currency="USD",
            session_type="couples_80",
            therapist_id=str(therapist),
            description="Talked about Zebulon",
        )
    ).json()
    response = await billing.http.get(
        f"/v1/invoices/{charged['invoice_id']}/superbill/pdf", headers=billing.as_(client)
    )
    assert response.status_code == 200 and response.content.startswith(b"%PDF-")
    text = await _pdf_text(response.content)
    assert f"{datetime.now(UTC):%Y-%m-%d} couples_80 therapist {therapist} 220.00 USD" in text
    assert "Total paid: 220.00 USD" in text
    assert "Zebulon" not in text


async def test_invoice_numbers_have_no_gaps_under_concurrent_charges(
    billing: BillingService,
) -> None:
    clients = [uuid.uuid4() for _ in range(12)]
    cards = await asyncio.gather(*(billing.add_card(c) for c in clients))
    answers = await asyncio.gather(
        *(billing.charge(c, card, amount_cents=500) for c, card in zip(clients, cards, strict=True))
    )
    assert {a.status_code for a in answers} == {201}
    year = datetime.now(UTC).year
    async with billing.deps.engine.connect() as conn:
        numbers = sorted(
            (await conn.execute(select(invoices.c.number).where(invoices.c.year == year)))
            .scalars()
            .all()
        )
        mine = (
            (
                await conn.execute(
                    select(invoices.c.number).where(invoices.c.subject_id.in_(clients))
                )
            )
            .scalars()
            .all()
        )
    assert numbers == list(range(1, len(numbers) + 1))  # every invoice of the year, no gap
    assert len(set(mine)) == len(clients)
