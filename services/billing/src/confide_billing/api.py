"""The billing service's HTTP API (contract: API.md, "billing"): parse, authorise, call one
handler, answer. The handlers' refusals answer as `problems.PROBLEM_TYPES` declares.

Who may do what:
- a signed-in client: add cards, list and remove their own, charge them (with an
  `Idempotency-Key`), list their charges, read and download their invoices and superbills;
- the therapist a charge names: refund it, partly or wholly (to anyone else a charge does not
  exist).
Card numbers, security codes and addresses are never answered, nor echoed by a refusal.
"""

# No `from __future__ import annotations` here: FastAPI must evaluate the route annotations,
# and the caller dependencies they name are local to `router`.
from datetime import datetime
from typing import Annotated
from uuid import UUID

from confide_events.billing import RefundReason
from confide_toolkit.auth import Caller, CallerDependency, require_role
from confide_toolkit.pagination import IdCursor, Page, PageSize, page_of
from fastapi import APIRouter, Depends, Header, Response
from pydantic import BaseModel, ConfigDict, Field

from confide_billing import pdf
from confide_billing.handlers import Dependencies, charges, invoices, payment_methods
from confide_billing.handlers.invoices import Invoice
from confide_billing.handlers.payment_methods import MaskedCard

IdempotencyKey = Annotated[
    str,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        description="Required. A key of the client's choosing, one per intended charge: a "
        "retry with the same key answers the first attempt's outcome and never charges twice, "
        "even after a time-out.",
    ),
]
PDF = "application/pdf"


# --- bodies ----------------------------------------------------------------------------------


class _Body(BaseModel):
    # Unknown fields are refused, so a misspelt field is not silently ignored.
    model_config = ConfigDict(extra="forbid")


# Card data is left out of the models' repr, so no log line or traceback can show it.


class BillingAddress(_Body):
    line1: str = Field(min_length=1, max_length=200)
    city: str = Field(min_length=1, max_length=100)
    postal_code: str = Field(min_length=1, max_length=20)
    country: str = Field(pattern=r"^[A-Z]{2}$", description="ISO 3166-1 alpha-2")


class AddCardRequest(_Body):
    card_number: str = Field(
        min_length=1, max_length=32, repr=False, description="Digits; spaces allowed."
    )
    exp_month: int
    exp_year: int = Field(ge=2000, le=2200)
    cvc: str = Field(min_length=1, max_length=8, repr=False, description="Verified, never kept.")
    cardholder_name: str = Field(min_length=1, max_length=200)
    billing_address: BillingAddress = Field(repr=False)


class ChargeRequest(_Body):
    payment_method_id: UUID
    amount_cents: int | None = Field(
        default=None,
        gt=0,
        le=100_000_000,
        description="In the currency's minor unit; may be left out when `session_type` names "
        "a priced session (it must then equal the price).",
    )
    currency: str = Field(pattern=r"^[A-Z]{3}$", description="ISO 4217")
    description: str = Field(min_length=1, max_length=500)
    session_type: str | None = Field(default=None, min_length=1, max_length=64)
    therapist_id: UUID | None = None


class RefundRequest(_Body):
    amount_cents: int | None = Field(
        default=None, gt=0, le=100_000_000, description="Left out: all that is left."
    )
    reason: RefundReason


class PaymentMethodOut(BaseModel):
    payment_method_id: UUID
    brand: str
    last4: str | None = Field(description="Null once the card's data was erased.")
    exp_month: int | None
    exp_year: int | None


class PaymentMethodsOut(BaseModel):
    items: list[PaymentMethodOut]


class ChargeOut(BaseModel):
    charge_id: UUID
    status: str = Field(description="succeeded or failed")
    failure_code: str | None
    payment_method_id: UUID
    amount_cents: int
    refunded_cents: int
    currency: str
    session_type: str | None
    therapist_id: UUID | None
    description: str | None = Field(description="Null once the financial records were erased.")
    invoice_id: UUID | None
    charged_at: datetime


class ChargedOut(BaseModel):
    charge_id: UUID
    status: str
    amount_cents: int
    currency: str
    invoice_id: UUID | None
    charged_at: datetime


class RefundOut(BaseModel):
    refund_id: UUID
    charge_id: UUID
    amount_cents: int
    currency: str
    reason: str
    issued_at: datetime


class InvoiceLineOut(BaseModel):
    charge_id: UUID
    date: datetime
    session_type: str | None
    therapist_id: UUID | None
    description: str | None
    amount_cents: int


class InvoiceRefundOut(BaseModel):
    refund_id: UUID
    charge_id: UUID
    date: datetime
    reason: str
    amount_cents: int


class InvoiceOut(BaseModel):
    invoice_id: UUID
    invoice_number: str = Field(description="<year>-<number>, numbered without gaps per year")
    period: str
    currency: str
    issued_at: datetime
    person_erased: bool
    bill_to: dict[str, object] | None
    lines: list[InvoiceLineOut]
    refunds: list[InvoiceRefundOut]
    total_charged_cents: int
    total_refunded_cents: int
    total_cents: int


class SuperbillLineOut(BaseModel):
    date: datetime
    session_type: str | None
    therapist_id: UUID | None
    amount_cents: int
    refunded_cents: int


class SuperbillOut(BaseModel):
    invoice_number: str
    period: str
    currency: str
    client_name: str | None = Field(description="Null once erased.")
    person_erased: bool
    items: list[SuperbillLineOut]
    total_cents: int


# --- answers ---------------------------------------------------------------------------------


def _card_out(card: MaskedCard) -> PaymentMethodOut:
    return PaymentMethodOut(
        payment_method_id=card.payment_method_id,
        brand=card.brand,
        last4=card.last4,
        exp_month=card.exp_month,
        exp_year=card.exp_year,
    )


def _charge_out(view: charges.ChargeView) -> ChargeOut:
    c = view.charge
    return ChargeOut(
        charge_id=c.charge_id,
        status=c.status,
        failure_code=c.failure_code,
        payment_method_id=c.payment_method_id,
        amount_cents=c.amount_cents,
        refunded_cents=c.refunded_cents,
        currency=c.currency,
        session_type=c.session_type,
        therapist_id=c.therapist_id,
        description=view.description,
        invoice_id=c.invoice_id,
        charged_at=c.charged_at,
    )


def _invoice_out(invoice: Invoice) -> InvoiceOut:
    return InvoiceOut(
        invoice_id=invoice.invoice_id,
        invoice_number=invoice.invoice_number,
        period=invoice.period,
        currency=invoice.currency,
        issued_at=invoice.issued_at,
        person_erased=invoice.person_erased,
        bill_to=invoice.bill_to,
        lines=[
            InvoiceLineOut(
                charge_id=line.charge_id,
                date=line.charged_at,
                session_type=line.session_type,
                therapist_id=line.therapist_id,
                description=line.description,
                amount_cents=line.amount_cents,
            )
            for line in invoice.lines
        ],
        refunds=[
            InvoiceRefundOut(
                refund_id=r.refund_id,
                charge_id=r.charge_id,
                date=r.issued_at,
                reason=r.reason,
                amount_cents=r.amount_cents,
            )
            for r in invoice.refunds
        ],
        total_charged_cents=invoice.total_charged_cents,
        total_refunded_cents=invoice.total_refunded_cents,
        total_cents=invoice.total_cents,
    )


def _superbill_out(invoice: Invoice) -> SuperbillOut:
    refunded: dict[UUID, int] = {}
    for r in invoice.refunds:
        refunded[r.charge_id] = refunded.get(r.charge_id, 0) + r.amount_cents
    name = None if invoice.bill_to is None else invoice.bill_to.get("name")
    return SuperbillOut(
        invoice_number=invoice.invoice_number,
        period=invoice.period,
        currency=invoice.currency,
        client_name=None if name is None else str(name),
        person_erased=invoice.person_erased,
        items=[
            SuperbillLineOut(
                date=line.charged_at,
                session_type=line.session_type,
                therapist_id=line.therapist_id,
                amount_cents=line.amount_cents,
                refunded_cents=refunded.get(line.charge_id, 0),
            )
            for line in invoice.lines
        ],
        total_cents=invoice.total_cents,
    )


# --- routes ----------------------------------------------------------------------------------


def router(deps: Dependencies, current_caller: CallerDependency) -> APIRouter:
    """The /v1 routes of the billing service, bound to its dependencies and its token check."""
    api = APIRouter(prefix="/v1", tags=["billing"])
    signed_in = Annotated[Caller, Depends(current_caller)]
    client = Annotated[Caller, Depends(require_role("client", caller=current_caller))]

    # -- payment methods ----------------------------------------------------------------------

    @api.post(
        "/payment-methods",
        status_code=201,
        summary="Add a card (signed-in client); answers brand, last 4 and expiry only",
        responses={
            422: {"description": "A field failed its check; named, never echoed"},
            409: {"description": "The account is closed"},
        },
    )
    async def post_payment_method(body: AddCardRequest, caller: client) -> PaymentMethodOut:
        card = await payment_methods.add_card(
            deps,
            payment_methods.AddCard(
                subject_id=caller.subject_id,
                card_number=body.card_number,
                exp_month=body.exp_month,
                exp_year=body.exp_year,
                cvc=body.cvc,
                cardholder_name=body.cardholder_name,
                billing_address=body.billing_address.model_dump(),
            ),
        )
        return _card_out(card)

    @api.get("/payment-methods", summary="The caller's cards in use, masked")
    async def get_payment_methods(caller: signed_in) -> PaymentMethodsOut:
        cards = await payment_methods.list_cards(deps, caller.subject_id)
        return PaymentMethodsOut(items=[_card_out(c) for c in cards])

    @api.delete(
        "/payment-methods/{payment_method_id}",
        status_code=204,
        summary="Remove a card (its owner): it can no longer be charged",
        responses={404: {"description": "No such card of the caller's"}},
    )
    async def delete_payment_method(payment_method_id: UUID, caller: signed_in) -> Response:
        await payment_methods.remove_card(deps, caller.subject_id, payment_method_id)
        return Response(status_code=204)

    # -- charges ------------------------------------------------------------------------------

    @api.post(
        "/charges",
        status_code=201,
        summary="Charge a card of the caller's, once per Idempotency-Key",
        responses={
            402: {"description": "The issuer declined (charge-declined, with failure_code)"},
            409: {"description": "The card was removed, erased, or the account closed"},
            502: {"description": "The processor failed; nothing was charged or recorded"},
            503: {"description": "The gateway timed out: retry with the same key"},
        },
    )
    async def post_charge(
        body: ChargeRequest, caller: client, idempotency_key: IdempotencyKey
    ) -> ChargedOut:
        charged = await charges.charge(
            deps,
            charges.Charge(
                subject_id=caller.subject_id,
                idempotency_key=idempotency_key,
                payment_method_id=body.payment_method_id,
                currency=body.currency,
                description=body.description,
                amount_cents=body.amount_cents,
                session_type=body.session_type,
                therapist_id=body.therapist_id,
            ),
        )
        return ChargedOut(
            charge_id=charged.charge_id,
            status=charged.status,
            amount_cents=charged.amount_cents,
            currency=charged.currency,
            invoice_id=charged.invoice_id,
            charged_at=charged.charged_at,
        )

    @api.get("/charges", summary="The caller's charges, newest first")
    async def get_charges(
        caller: signed_in, limit: PageSize = 50, cursor: IdCursor = None
    ) -> Page[ChargeOut]:
        found = await charges.list_charges(deps, caller.subject_id, limit=limit + 1, before=cursor)
        items, next_cursor = page_of(found, limit, lambda v: v.charge.charge_id)
        return Page[ChargeOut](items=[_charge_out(v) for v in items], next_cursor=next_cursor)

    @api.post(
        "/charges/{charge_id}/refunds",
        status_code=201,
        summary="Refund part or all of a charge (the therapist the charge names)",
        responses={
            404: {"description": "No such charge naming the caller"},
            422: {"description": "More than is left of the charge"},
        },
    )
    async def post_refund(charge_id: UUID, body: RefundRequest, caller: signed_in) -> RefundOut:
        issued = await charges.refund(
            deps,
            charges.Refund(
                caller_id=caller.subject_id,
                charge_id=charge_id,
                reason=body.reason,
                amount_cents=body.amount_cents,
            ),
        )
        return RefundOut(
            refund_id=issued.refund_id,
            charge_id=issued.charge_id,
            amount_cents=issued.amount_cents,
            currency=issued.currency,
            reason=issued.reason,
            issued_at=issued.issued_at,
        )

    # -- invoices -----------------------------------------------------------------------------

    @api.get("/invoices", summary="The caller's invoices, newest first")
    async def get_invoices(
        caller: signed_in, limit: PageSize = 50, cursor: IdCursor = None
    ) -> Page[InvoiceOut]:
        found = await invoices.list_invoices(
            deps, caller.subject_id, limit=limit + 1, before=cursor
        )
        items, next_cursor = page_of(found, limit, lambda i: i.invoice_id)
        return Page[InvoiceOut](items=[_invoice_out(i) for i in items], next_cursor=next_cursor)

    @api.get("/invoices/{invoice_id}", summary="One invoice of the caller's (JSON)")
    async def get_invoice(invoice_id: UUID, caller: signed_in) -> InvoiceOut:
        return _invoice_out(await invoices.read_invoice(deps, caller.subject_id, invoice_id))

    @api.get(
        "/invoices/{invoice_id}/pdf",
        summary="One invoice of the caller's, as a PDF",
        response_class=Response,
        responses={200: {"content": {PDF: {}}}},
    )
    async def get_invoice_pdf(invoice_id: UUID, caller: signed_in) -> Response:
        invoice = await invoices.read_invoice(deps, caller.subject_id, invoice_id)
        return Response(
            pdf.invoice_pdf(invoice),
            media_type=PDF,
            headers={"Content-Disposition": f'attachment; filename="{invoice.invoice_number}.pdf"'},
        )

    @api.get(
        "/invoices/{invoice_id}/superbill",
        summary="The invoice's superbill: per session its date, type, amount and therapist",
    )
    async def get_superbill(invoice_id: UUID, caller: signed_in) -> SuperbillOut:
        return _superbill_out(await invoices.read_invoice(deps, caller.subject_id, invoice_id))

    @api.get(
        "/invoices/{invoice_id}/superbill/pdf",
        summary="The invoice's superbill, as a PDF",
        response_class=Response,
        responses={200: {"content": {PDF: {}}}},
    )
    async def get_superbill_pdf(invoice_id: UUID, caller: signed_in) -> Response:
        invoice = await invoices.read_invoice(deps, caller.subject_id, invoice_id)
        filename = f"superbill-{invoice.invoice_number}.pdf"
        return Response(
            pdf.superbill_pdf(invoice),
            media_type=PDF,
            headers={"Content-Disposition": f'attachment; filename="{filename}"'},
        )

    return api
