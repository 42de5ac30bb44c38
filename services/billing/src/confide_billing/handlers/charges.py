"""Charging a card through the gateway, listing charges, refunding.

A charge takes the person's `Idempotency-Key` and runs in three steps:
1. in one transaction, the attempt is recorded (pending) under the key, before the gateway is
   called; the same key again finds it instead (the same request, or 422 for another);
2. the gateway is called with the attempt's id (outside any transaction). A retry of an attempt
   still pending (its earlier call timed out, or the process died) first asks the gateway what
   became of that attempt, and charges only if the gateway never saw it; gateways charge an
   attempt id once, so even two retries at once cannot charge twice;
3. in one transaction, the outcome is recorded: the account's event, the charge's invoice
   (created with the next number of the year for the first charge of a month), the integration
   event in the outbox, and the attempt marked settled.
A processor error charged nothing: the pending attempt is removed, so no half-recorded charge
stays and the same key may be tried again. A time-out leaves it pending, to be reconciled.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import UUID

from confide_events import billing as published
from confide_events.billing import RefundReason
from confide_toolkit.commands import run_command
from confide_toolkit.event_store import ConcurrencyConflict
from confide_toolkit.ids import uuid7
from sqlalchemy.ext.asyncio import AsyncConnection

from confide_billing import store
from confide_billing.domain import (
    AmountNotThePrice,
    ChargeDeclined,
    ChargeNotFound,
    ChargeNotRefundable,
    ChargeRecorded,
    ChargeRefused,
    CurrencyNotAccepted,
    GatewayTimedOut,
    IdempotencyKeyReused,
    PaymentMethodNotUsable,
    ProcessorFailed,
    RefundExceedsCharge,
    UnknownSessionType,
    seal_text,
)
from confide_billing.gateway import CardDetails, GatewayCharge, ProcessorError
from confide_billing.handlers import Dependencies
from confide_billing.handlers.sealing import open_card, open_record, seal_record
from confide_billing.prices import MINOR_UNIT_DIGITS, SESSION_PRICES, price_of
from confide_billing.store import Attempt, StoredCharge


@dataclass(frozen=True)
class Charge:
    subject_id: UUID
    idempotency_key: str
    payment_method_id: UUID
    currency: str
    description: str
    amount_cents: int | None = None
    session_type: str | None = None
    therapist_id: UUID | None = None


@dataclass(frozen=True)
class ChargeView:
    """A charge as its owner reads it; the description is None once erased."""

    charge: StoredCharge
    description: str | None


def priced(command: Charge) -> int:
    """The amount to charge: the session type's price, or the amount given when none is named."""
    if command.currency not in MINOR_UNIT_DIGITS:
        raise CurrencyNotAccepted()
    if command.session_type is None:
        if command.amount_cents is None:
            raise AmountNotThePrice(0)
        return command.amount_cents
    if command.session_type not in SESSION_PRICES:
        raise UnknownSessionType()
    price = price_of(command.session_type, command.currency)
    if price is None:
        raise CurrencyNotAccepted()
    if command.amount_cents is not None and command.amount_cents != price:
        raise AmountNotThePrice(price)
    return price


def _request_digest(command: Charge, amount_cents: int) -> str:
    """What makes two requests under one key the same charge (the description is left out:
    it is personal data, and hashing it would keep a fingerprint of it in the clear)."""
    request = [
        str(command.payment_method_id),
        amount_cents,
        command.currency,
        command.session_type,
        None if command.therapist_id is None else str(command.therapist_id),
    ]
    return hashlib.sha256(json.dumps(request).encode()).hexdigest()


async def charge(deps: Dependencies, command: Charge) -> StoredCharge:
    """Charge the card once per Idempotency-Key; the recorded charge when it succeeded.
    Raises `ChargeDeclined` (recorded as failed), `GatewayTimedOut` (pending, retry),
    `ProcessorFailed` (nothing recorded), or a refusal of the card or the request."""
    amount_cents = priced(command)
    digest = _request_digest(command, amount_cents)

    async def begin(conn: AsyncConnection) -> tuple[Attempt, bool]:
        earlier = await store.find_attempt(conn, command.subject_id, command.idempotency_key)
        if earlier is not None:
            if earlier.request_digest != digest:
                raise IdempotencyKeyReused()
            return earlier, True
        account = await deps.accounts.load(conn, command.subject_id)
        account.check_chargeable(command.payment_method_id)
        charge_id = uuid7()
        sealed = await seal_record(
            deps.keyring, conn, command.subject_id, charge_id, {"description": command.description}
        )
        attempt = Attempt(
            charge_id=charge_id,
            subject_id=command.subject_id,
            request_digest=digest,
            payment_method_id=command.payment_method_id,
            amount_cents=amount_cents,
            currency=command.currency,
            session_type=command.session_type,
            therapist_id=command.therapist_id,
            sealed_description=sealed,
            status="pending",
            failure_code=None,
        )
        if not await store.record_attempt(conn, attempt, command.idempotency_key, deps.clock.now()):
            # Another request took the key meanwhile: run again, and find its attempt.
            raise ConcurrencyConflict(charge_id, 0)
        return attempt, False

    attempt, retried = await run_command(deps.engine, begin)
    if attempt.status == "pending":
        outcome = await _gateway_outcome(deps, attempt, reconcile=retried)
        attempt = await _settle(deps, attempt.subject_id, command.idempotency_key, outcome)
    if attempt.status == "failed":
        raise ChargeDeclined(attempt.charge_id, attempt.failure_code or "card_declined")  # type: ignore[arg-type]
    async with deps.engine.connect() as conn:
        recorded = await store.find_charge(conn, attempt.charge_id)
    assert recorded is not None
    return recorded


async def _gateway_outcome(
    deps: Dependencies, attempt: Attempt, *, reconcile: bool
) -> GatewayCharge:
    if reconcile:
        found = await deps.gateway.find_charge(attempt.charge_id)
        if found is not None:
            return found
    card = await _chargeable_card(deps, attempt)
    try:
        return await asyncio.wait_for(
            deps.gateway.charge(attempt.charge_id, card, attempt.amount_cents, attempt.currency),
            timeout=deps.gateway_timeout,
        )
    except TimeoutError:
        raise GatewayTimedOut(attempt.charge_id) from None
    except ProcessorError:
        async with deps.engine.begin() as conn:
            await store.forget_attempt(conn, attempt.charge_id)
        raise ProcessorFailed() from None


async def reconcile_pending(deps: Dependencies, older_than: timedelta) -> int:
    """Settle the attempts left pending longer than `older_than` (a time-out nobody retried,
    a process that died mid-call): the gateway's record decides, and an attempt the gateway
    never saw is forgotten, as it charged nothing. A retry with the attempt's key afterwards
    answers what was settled. Returns how many were settled or forgotten."""
    async with deps.engine.connect() as conn:
        pending = await store.pending_attempts(conn, deps.clock.now() - older_than)
    for attempt, idempotency_key in pending:
        found = await deps.gateway.find_charge(attempt.charge_id)
        if found is None:
            async with deps.engine.begin() as conn:
                await store.forget_attempt(conn, attempt.charge_id)
        else:
            await _settle(deps, attempt.subject_id, idempotency_key, found)
    return len(pending)


async def _chargeable_card(deps: Dependencies, attempt: Attempt) -> CardDetails:
    """The card to charge, opened for the call; a card removed, erased or of a closed account
    since the attempt began is refused, and the attempt, which charged nothing, forgotten."""
    async with deps.engine.begin() as conn:
        account = await deps.accounts.load(conn, attempt.subject_id)
        stored = await store.find_card(conn, attempt.payment_method_id)
        card = (
            None
            if stored is None
            else await open_card(
                deps.keyring, conn, attempt.subject_id, stored.payment_method_id, stored.sealed_card
            )
        )
        try:
            account.check_chargeable(attempt.payment_method_id)
            if card is None:
                raise PaymentMethodNotUsable(attempt.payment_method_id)
        except Exception:
            await store.forget_attempt(conn, attempt.charge_id)
            raise
    return CardDetails(card.number, card.exp_month, card.exp_year)


async def _settle(
    deps: Dependencies, subject_id: UUID, idempotency_key: str, outcome: GatewayCharge
) -> Attempt:
    """Record the gateway's outcome once (a concurrent retry that settled first wins)."""

    async def work(conn: AsyncConnection) -> Attempt:
        account = await deps.accounts.load_for_change(conn, subject_id)
        attempt = await store.find_attempt(conn, subject_id, idempotency_key, lock=True)
        assert attempt is not None
        if attempt.status != "pending":
            return attempt
        now = deps.clock.now()
        if outcome.outcome == "approved":
            invoice_id = await _invoice_for(deps, conn, attempt, now)
            account.record_charge(
                ChargeRecorded(
                    charge_id=attempt.charge_id,
                    payment_method_id=attempt.payment_method_id,
                    amount_cents=attempt.amount_cents,
                    currency=attempt.currency,
                    session_type=attempt.session_type,
                    therapist_id=attempt.therapist_id,
                    sealed_description=seal_text(attempt.sealed_description),
                    gateway_reference=outcome.reference,
                    invoice_id=invoice_id,
                    succeeded_at=now,
                )
            )
            await deps.outbox.put(
                conn,
                published.ChargeSucceeded(
                    charge_id=attempt.charge_id,
                    subject_id=attempt.subject_id,
                    payment_method_id=attempt.payment_method_id,
                    amount_cents=attempt.amount_cents,
                    currency=attempt.currency,
                    succeeded_at=now,
                ),
            )
            status, failure_code = "succeeded", None
        else:
            failure_code = outcome.failure_code or "card_declined"
            account.record_refusal(
                ChargeRefused(
                    charge_id=attempt.charge_id,
                    payment_method_id=attempt.payment_method_id,
                    amount_cents=attempt.amount_cents,
                    currency=attempt.currency,
                    session_type=attempt.session_type,
                    therapist_id=attempt.therapist_id,
                    sealed_description=seal_text(attempt.sealed_description),
                    failure_code=failure_code,
                    failed_at=now,
                )
            )
            await deps.outbox.put(
                conn,
                published.ChargeFailed(
                    charge_id=attempt.charge_id,
                    subject_id=attempt.subject_id,
                    payment_method_id=attempt.payment_method_id,
                    amount_cents=attempt.amount_cents,
                    currency=attempt.currency,
                    failure_code=failure_code,
                    failed_at=now,
                ),
            )
            status = "failed"
        await deps.accounts.save(conn, account)
        await store.settle_attempt(conn, attempt.charge_id, status, failure_code)
        return Attempt(**{**attempt.__dict__, "status": status, "failure_code": failure_code})

    return await run_command(deps.engine, work)


async def _invoice_for(
    deps: Dependencies, conn: AsyncConnection, attempt: Attempt, now: datetime
) -> UUID:
    """The person's invoice of this month and currency, created with the year's next number
    for the month's first charge (in the charge's transaction: a rollback leaves no gap). Its
    addressee is the card's holder and billing address, sealed as a financial record."""
    period = f"{now.year:04d}-{now.month:02d}"
    existing = await store.invoice_of_period(conn, attempt.subject_id, period, attempt.currency)
    if existing is not None:
        return existing.invoice_id
    invoice_id = uuid7()
    stored = await store.find_card(conn, attempt.payment_method_id)
    card = (
        None
        if stored is None
        else await open_card(
            deps.keyring, conn, attempt.subject_id, stored.payment_method_id, stored.sealed_card
        )
    )
    bill_to = (
        {} if card is None else {"name": card.cardholder_name, "address": card.billing_address}
    )
    sealed = await seal_record(deps.keyring, conn, attempt.subject_id, invoice_id, bill_to)
    await store.add_invoice(
        conn,
        store.StoredInvoice(
            invoice_id=invoice_id,
            subject_id=attempt.subject_id,
            year=now.year,
            number=await store.next_invoice_number(conn, now.year),
            period=period,
            currency=attempt.currency,
            issued_at=now,
            sealed_bill_to=sealed,
        ),
    )
    return invoice_id


async def list_charges(
    deps: Dependencies, subject_id: UUID, *, limit: int, before: UUID | None
) -> list[ChargeView]:
    """The person's charges newest first, succeeded and failed."""
    async with deps.engine.connect() as conn:
        found = await store.list_charges(conn, subject_id, limit=limit, before=before)
        views = []
        for stored in found:
            record = await open_record(
                deps.keyring, conn, subject_id, stored.charge_id, stored.sealed_description
            )
            views.append(ChargeView(stored, None if record is None else record["description"]))
        return views


@dataclass(frozen=True)
class Refund:
    caller_id: UUID
    charge_id: UUID
    reason: RefundReason
    amount_cents: int | None = None
    """None refunds all that is left of the charge."""


async def refund(deps: Dependencies, command: Refund) -> published.RefundIssued:
    """Refund part or all of what is left of a charge, through the gateway; publishes
    `RefundIssued`. Only the charge's therapist may; to anyone else it does not exist."""

    async def work(conn: AsyncConnection) -> published.RefundIssued:
        charge = await store.find_charge(conn, command.charge_id)
        if charge is None or charge.therapist_id != command.caller_id:
            raise ChargeNotFound(command.charge_id)
        if charge.status != "succeeded" or charge.gateway_reference is None:
            raise ChargeNotRefundable(command.charge_id)
        account = await deps.accounts.load_for_change(conn, charge.subject_id)
        left = account.charges[command.charge_id].refundable
        amount = left if command.amount_cents is None else command.amount_cents
        if amount <= 0:
            raise RefundExceedsCharge(command.charge_id, left)
        now = deps.clock.now()
        recorded = account.refund(uuid7(), command.charge_id, amount, command.reason, now)
        # Under the account's lock: a second refund waits, and sees what this one took.
        await deps.gateway.refund(recorded.refund_id, charge.gateway_reference, amount)
        await deps.accounts.save(conn, account)
        issued = published.RefundIssued(
            refund_id=recorded.refund_id,
            charge_id=command.charge_id,
            subject_id=charge.subject_id,
            amount_cents=amount,
            currency=charge.currency,
            reason=command.reason,
            issued_at=now,
        )
        await deps.outbox.put(conn, issued)
        return issued

    return await run_command(deps.engine, work)
