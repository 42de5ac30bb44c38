"""Billing's service layer: one function per command, query or consumed event, in one module
per topic.

- `payment_methods`: adding, listing and removing cards;
- `charges`: charging through the gateway with an Idempotency-Key, listing charges, refunds;
- `invoices`: invoices (JSON, PDF) and superbills;
- `accounts`: what billing does on identity's `AccountClosed` and retention's
  `RetentionExpired`;
- `sealing`: card data and financial records sealed under the person's keys.

Each handler takes the `Dependencies` below and the command's data; the routes and the
consumers only parse, call one handler, and answer. Handlers raise the domain's exceptions
(`domain.BillingError`), which `problems.py` maps to HTTP."""

from __future__ import annotations

from dataclasses import dataclass

from confide_toolkit.clock import Clock
from confide_toolkit.keyring import Keyring
from confide_toolkit.outbox import Outbox
from sqlalchemy.ext.asyncio import AsyncEngine

from confide_billing.gateway import PaymentGateway
from confide_billing.store import Accounts


@dataclass(frozen=True)
class Dependencies:
    """What the handlers are wired with (built once, in app.py)."""

    engine: AsyncEngine
    accounts: Accounts
    keyring: Keyring
    outbox: Outbox
    clock: Clock
    gateway: PaymentGateway
    gateway_timeout: float
    """Seconds billing waits for the gateway before answering that the outcome is unknown."""
