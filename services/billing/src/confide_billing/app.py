"""Wiring of the billing service: settings, the toolkit runtime, the payment gateway, handlers'
dependencies, consumers, routes and how refusals answer."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from confide_events.billing import (
    ChargeFailed,
    ChargeSucceeded,
    PaymentMethodAdded,
    PaymentMethodRemoved,
    RefundIssued,
    SubjectDataShredded,
)
from confide_toolkit.clock import Clock
from confide_toolkit.service import Service, run
from fastapi import FastAPI

from confide_billing import api, consumers
from confide_billing.gateway import PaymentGateway, SandboxGateway
from confide_billing.handlers import Dependencies, charges
from confide_billing.problems import PROBLEM_TYPES
from confide_billing.settings import BillingSettings
from confide_billing.store import Accounts, project_account
from confide_billing.store.tables import charges as charges_table
from confide_billing.store.tables import payment_methods, refunds

MIGRATIONS = Path(__file__).parent / "migrations"

DESCRIPTION = """Payment methods, charges, refunds and invoices.

A card's number and billing address are stored only encrypted under the person's
`billing.payment_methods` key, and every read answers its brand, last 4 digits and expiry only;
its security code goes to the payment gateway for verification and is never kept. Charges go
through a payment-gateway port (built in: a sandbox gateway with test card numbers) and take an
`Idempotency-Key`: a retried charge never charges twice, even after a gateway time-out.
Financial records (charge descriptions, invoice addressees) live under the person's
`billing.financial_records` key, apart from card data, so invoices outlive the cards: once the
records expire, invoices show the person as erased while numbers and amounts stay."""


def build(
    settings: BillingSettings, clock: Clock | None = None, gateway: PaymentGateway | None = None
) -> tuple[Service, Dependencies]:
    """The service runtime and the handlers' dependencies, built once."""
    service = Service(settings, migrations=MIGRATIONS, clock=clock)
    deps = Dependencies(
        engine=service.engine,
        accounts=Accounts(service.clock),
        keyring=service.keyring,
        outbox=service.outbox,
        clock=service.clock,
        gateway=gateway or SandboxGateway(),
        gateway_timeout=settings.gateway_timeout_seconds,
    )
    return service, deps


def create_app(
    settings: BillingSettings | None = None,
    clock: Clock | None = None,
    gateway: PaymentGateway | None = None,
) -> FastAPI:
    """The billing service's application; `app.state.service` and `app.state.deps` expose its
    runtime to tests and tools."""
    settings = settings or BillingSettings()  # from the environment
    service, deps = build(settings, clock, gateway)
    # A signed-out or closed session's tokens are refused here too, not only at identity.
    service.refuse_revoked_sessions()
    consumers.subscribe(service, deps)
    # Rebuilt from its own event store by `python -m confide_toolkit.read_models rebuild billing`.
    service.read_model(
        "payment_accounts",
        tables=[payment_methods, charges_table, refunds],
        store=deps.accounts.events,
        projection=project_account,
    )

    async def reconcile_left_pending() -> None:
        # Attempts an earlier process left pending (it died mid-call, or a time-out nobody
        # retried): settled from the gateway's record. Twice the timeout: none still in flight.
        await charges.reconcile_pending(
            deps, timedelta(seconds=2 * settings.gateway_timeout_seconds)
        )

    service.after_start(reconcile_left_pending)
    service.document_publications(
        [
            PaymentMethodAdded,
            PaymentMethodRemoved,
            ChargeSucceeded,
            ChargeFailed,
            RefundIssued,
            SubjectDataShredded,
        ]
    )
    return service.create_app(
        title="Confide billing",
        description=DESCRIPTION,
        routers=[api.router(deps, service.current_caller)],
        deps=deps,
        problem_types=PROBLEM_TYPES,
    )


def main() -> None:
    """Serve the billing service (`python -m confide_billing`)."""
    settings = BillingSettings()  # from the environment
    run(lambda: create_app(settings), settings)
