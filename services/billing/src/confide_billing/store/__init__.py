"""The billing service's tables, the payment-account repository and its projections.

- The payment accounts live in the toolkit's event store (`stored_events`), one stream per
  person (the stream id is the person's id); their events hold ciphertext, never card data.
- `payment_methods`, `charges` and `refunds` are the projection of those streams, written in
  the transaction of each append and rebuildable from them. A card (number, expiry, holder,
  billing address) is kept exactly as the keyring sealed it under the person's
  `billing.payment_methods` key; a charge's description under their
  `billing.financial_records` key. Only brands, amounts, currencies, times and ids are in the
  clear: what the books need after the person's data is gone.
- `charge_attempts` records each charge before the gateway is called, under the person's
  `Idempotency-Key`: a retry finds it and reconciles with the gateway instead of charging again.
- `invoices` (one per person, month and currency) and `invoice_counters` (the last number
  given each year, taken under the row's lock in the transaction that creates the invoice, so
  numbers have no gaps: a rolled-back invoice gives its number back).
"""

from confide_billing.store.accounts import Accounts, project_account
from confide_billing.store.records import (
    Attempt,
    StoredCard,
    StoredCharge,
    StoredInvoice,
    StoredRefund,
    add_invoice,
    cards_of,
    charges_of_invoice,
    find_attempt,
    find_card,
    find_charge,
    find_invoice,
    forget_attempt,
    invoice_of_period,
    list_charges,
    list_invoices,
    next_invoice_number,
    pending_attempts,
    record_attempt,
    refunds_of_invoice,
    settle_attempt,
)
from confide_billing.store.tables import (
    charge_attempts,
    charges,
    invoice_counters,
    invoices,
    metadata,
    payment_methods,
    refunds,
)

__all__ = [
    "Accounts",
    "Attempt",
    "StoredCard",
    "StoredCharge",
    "StoredInvoice",
    "StoredRefund",
    "add_invoice",
    "cards_of",
    "charge_attempts",
    "charges",
    "charges_of_invoice",
    "find_attempt",
    "find_card",
    "find_charge",
    "find_invoice",
    "forget_attempt",
    "invoice_counters",
    "invoice_of_period",
    "invoices",
    "list_charges",
    "list_invoices",
    "metadata",
    "next_invoice_number",
    "payment_methods",
    "pending_attempts",
    "project_account",
    "record_attempt",
    "refunds",
    "refunds_of_invoice",
    "settle_attempt",
]
