"""Invoices and superbills as PDF documents, made with fpdf2 (no hand-written PDF).

The core Helvetica font needs no font file on the host; it covers Latin-1, so a character
outside it prints as "?" rather than failing the download."""

from __future__ import annotations

from fpdf import FPDF

from confide_billing.handlers.invoices import Invoice
from confide_billing.prices import format_amount

ERASED_PERSON = "[erased]"


def _latin1(text: str) -> str:
    return text.encode("latin-1", "replace").decode("latin-1")


def _document(title: str) -> FPDF:
    pdf = FPDF(format="A4")
    pdf.set_title(title)
    pdf.set_creator("Confide billing")
    pdf.add_page()
    pdf.set_font("Helvetica", style="B", size=16)
    pdf.cell(0, 10, _latin1(title), new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", size=10)
    return pdf


def _line(pdf: FPDF, text: str) -> None:
    pdf.cell(0, 6, _latin1(text), new_x="LMARGIN", new_y="NEXT")


def _bill_to(pdf: FPDF, invoice: Invoice) -> None:
    if invoice.bill_to is None:
        _line(pdf, f"Bill to: {ERASED_PERSON}")
        return
    _line(pdf, f"Bill to: {invoice.bill_to.get('name', '')}")
    address = invoice.bill_to.get("address") or {}
    for key in ("line1", "city", "postal_code", "country"):
        if address.get(key):
            _line(pdf, f"         {address[key]}")


def invoice_pdf(invoice: Invoice) -> bytes:
    """The invoice: number, period, addressee (or erased), each charge and refund, totals."""
    pdf = _document(f"Invoice {invoice.invoice_number}")
    _line(pdf, f"Period: {invoice.period}    Issued: {invoice.issued_at:%Y-%m-%d}")
    _line(pdf, f"Currency: {invoice.currency}")
    _bill_to(pdf, invoice)
    pdf.ln(4)
    pdf.set_font("Helvetica", style="B", size=10)
    _line(pdf, "Charges")
    pdf.set_font("Helvetica", size=10)
    for line in invoice.lines:
        what = line.description if line.description is not None else "[erased]"
        session = f" ({line.session_type})" if line.session_type else ""
        _line(
            pdf,
            f"{line.charged_at:%Y-%m-%d}  {what}{session}  "
            f"{format_amount(line.amount_cents, invoice.currency)}",
        )
    if invoice.refunds:
        pdf.ln(2)
        pdf.set_font("Helvetica", style="B", size=10)
        _line(pdf, "Refunds")
        pdf.set_font("Helvetica", size=10)
        for refund in invoice.refunds:
            _line(
                pdf,
                f"{refund.issued_at:%Y-%m-%d}  {refund.reason}  "
                f"{format_amount(-refund.amount_cents, invoice.currency)}",
            )
    pdf.ln(4)
    _line(pdf, f"Total charged: {format_amount(invoice.total_charged_cents, invoice.currency)}")
    _line(pdf, f"Total refunded: {format_amount(invoice.total_refunded_cents, invoice.currency)}")
    pdf.set_font("Helvetica", style="B", size=11)
    _line(pdf, f"Total: {format_amount(invoice.total_cents, invoice.currency)}")
    return bytes(pdf.output())


def superbill_pdf(invoice: Invoice) -> bytes:
    """The superbill a client files with their insurer: per session its date, type, amount
    (less any refund) and therapist's id; never a description, nothing from session notes."""
    pdf = _document(f"Superbill for invoice {invoice.invoice_number}")
    _line(pdf, f"Period: {invoice.period}    Currency: {invoice.currency}")
    name = ERASED_PERSON if invoice.bill_to is None else str(invoice.bill_to.get("name", ""))
    _line(pdf, f"Client: {name}")
    pdf.ln(4)
    refunded: dict[object, int] = {}
    for refund in invoice.refunds:
        refunded[refund.charge_id] = refunded.get(refund.charge_id, 0) + refund.amount_cents
    for line in invoice.lines:
        paid = line.amount_cents - refunded.get(line.charge_id, 0)
        _line(
            pdf,
            f"{line.charged_at:%Y-%m-%d}  {line.session_type or '-'}  "
            f"therapist {line.therapist_id or '-'}  {format_amount(paid, invoice.currency)}",
        )
    pdf.ln(4)
    pdf.set_font("Helvetica", style="B", size=11)
    _line(pdf, f"Total paid: {format_amount(invoice.total_cents, invoice.currency)}")
    return bytes(pdf.output())
