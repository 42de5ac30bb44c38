"""The consent service's commands, consumed events and reads, one function each.

Each command loads the person's ledger, lets the domain decide, and in one transaction appends
the ledger's new events (the `consents` projection follows in the same transaction) and puts
the integration events in the outbox. A refused command raises its domain exception before
anything is written. Two writers on the same ledger at once are settled by the event store's
optimistic concurrency and the toolkit's one retry policy (`run_command`): the loser reloads
and decides again, and after repeated conflicts gives up with `ConcurrentChange`.

Reads answer from the `consents` projection and the recipients, never from the ledgers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from confide_events import consent as published
from confide_events.consent import CollectionMethod
from confide_events.identity import AccountClosed
from confide_events.vocabulary import DataCategory
from confide_toolkit.auth import Caller
from confide_toolkit.clock import Clock
from confide_toolkit.commands import run_command
from confide_toolkit.ids import uuid7
from confide_toolkit.inbox import EventContext
from confide_toolkit.outbox import Outbox
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from confide_consent import store
from confide_consent.domain import (
    Consent,
    ConsentLedger,
    Receipt,
    RecipientKind,
    new_recipient,
    resolve_purpose,
)
from confide_consent.domain import Recipient as RecipientRecord
from confide_consent.errors import (
    ConsentNotFound,
    RecipientAlreadyRegistered,
)
from confide_consent.receipts import ReceiptIssuer, receipt_claims, sign_receipt
from confide_consent.store import Ledgers, ReceiptKeys


@dataclass(frozen=True)
class Dependencies:
    """What the handlers are wired with (built once, in app.py)."""

    engine: AsyncEngine
    ledgers: Ledgers
    receipt_keys: ReceiptKeys
    outbox: Outbox
    clock: Clock
    issuer: ReceiptIssuer


@dataclass(frozen=True)
class GrantConsent:
    subject_id: UUID
    purpose: str
    recipient_id: UUID | None
    data_categories: Sequence[DataCategory]
    policy_version: str
    policy_hash: str | None
    method: CollectionMethod


@dataclass(frozen=True)
class RegisterRecipient:
    name: str
    kind: RecipientKind
    purposes: Sequence[str]
    registered_by: UUID


def _granted(consent: Consent) -> published.ConsentGranted:
    return published.ConsentGranted(
        consent_id=consent.consent_id,
        subject_id=consent.subject_id,
        purpose=consent.purpose,
        recipient_id=consent.recipient_id,
        data_categories=consent.data_categories,
        policy_version=consent.policy_version,
        policy_hash=consent.policy_hash,
        method=consent.method,
        granted_at=consent.granted_at,
    )


def _revoked(consent: Consent) -> published.ConsentRevoked:
    assert consent.revoked_at is not None and consent.revoke_reason is not None
    return published.ConsentRevoked(
        consent_id=consent.consent_id,
        subject_id=consent.subject_id,
        revoked_at=consent.revoked_at,
        reason=consent.revoke_reason,
    )


async def grant_consent(deps: Dependencies, command: GrantConsent) -> Consent:
    """Record a consent with its signed receipt and publish `ConsentGranted`."""
    purpose = resolve_purpose(command.purpose)

    async def work(conn: AsyncConnection) -> Consent:
        recipient = (
            await store.find_recipient(conn, command.recipient_id)
            if command.recipient_id is not None
            else None
        )
        ledger = await deps.ledgers.load_for_change(conn, command.subject_id)
        consent = ledger.grant(
            consent_id=uuid7(),
            purpose=purpose,
            recipient_id=command.recipient_id,
            recipient=recipient,
            data_categories=command.data_categories,
            policy_version=command.policy_version,
            policy_hash=command.policy_hash,
            method=command.method,
            now=deps.clock.now(),
        )
        key = await deps.receipt_keys.current(conn)
        receipt_id = uuid7()
        jws = sign_receipt(
            receipt_claims(consent, receipt_id, recipient, deps.issuer), key.private_key, key.kid
        )
        receipted = ledger.issue_receipt(
            consent.consent_id, Receipt(receipt_id, key.kid, jws, consent.granted_at)
        )
        await deps.ledgers.save(conn, ledger)
        await deps.outbox.put(conn, _granted(consent))
        return receipted

    return await run_command(deps.engine, work)


async def revoke_consent(deps: Dependencies, subject_id: UUID, consent_id: UUID) -> Consent:
    """The person withdraws one of their consents, effective now; publishes `ConsentRevoked`.

    Raises `ConsentNotFound` for a consent that is not theirs. Revoking an already revoked
    consent changes nothing and publishes nothing."""

    async def work(conn: AsyncConnection) -> Consent:
        ledger = await deps.ledgers.load_for_change(conn, subject_id)
        if ledger.revoke(consent_id, deps.clock.now()):
            await deps.ledgers.save(conn, ledger)
            await deps.outbox.put(conn, _revoked(ledger.consent(consent_id)))
        return ledger.consent(consent_id)

    return await run_command(deps.engine, work)


async def withdraw_all_on_account_closed(
    deps: Dependencies, event: AccountClosed, ctx: EventContext
) -> list[Consent]:
    """A closed account's consents all end at the closing time, with reason `account_closed`;
    one `ConsentRevoked` each, in the consumed event's transaction. A redelivered
    `AccountClosed` withdraws nothing more."""
    ledger: ConsentLedger = await deps.ledgers.load_for_change(ctx.conn, event.subject_id)
    withdrawn = ledger.close(event.closed_at)
    if ledger.pending:
        await deps.ledgers.save(ctx.conn, ledger)
    for consent in withdrawn:
        await ctx.emit(_revoked(consent))
    return withdrawn


async def register_recipient(deps: Dependencies, command: RegisterRecipient) -> RecipientRecord:
    """Register a third party that consents may name (compliance staff only)."""
    recipient = new_recipient(uuid7(), command.name, command.kind, command.purposes)

    async def work(conn: AsyncConnection) -> RecipientRecord:
        if await store.recipient_name_taken(conn, recipient.name):
            raise RecipientAlreadyRegistered()
        await store.add_recipient(conn, recipient, deps.clock.now(), command.registered_by)
        return recipient

    return await run_command(deps.engine, work)


# --- reads -----------------------------------------------------------------------------------


async def visible_consent(deps: Dependencies, consent_id: UUID, caller: Caller) -> Consent:
    """The consent, for its subject or compliance staff. Raises `ConsentNotFound` for anyone
    else too: a consent someone may not see is, to them, a consent that does not exist."""
    async with deps.engine.connect() as conn:
        consent = await store.find_consent(conn, consent_id)
    if consent is None or (caller.role != "compliance" and consent.subject_id != caller.subject_id):
        raise ConsentNotFound(consent_id)
    return consent


async def list_consents(
    deps: Dependencies,
    subject_id: UUID,
    *,
    limit: int,
    after: UUID | None = None,
    valid_at: datetime | None = None,
    status: Literal["active", "revoked"] | None = None,
) -> list[Consent]:
    """A person's consents, newest first, after the cursor `after`: all of them, those in
    force at `valid_at`, or those `active` or `revoked` now."""
    async with deps.engine.connect() as conn:
        return await store.list_consents(
            conn, subject_id, limit=limit, after=after, valid_at=valid_at, status=status
        )


async def list_recipients(
    deps: Dependencies, *, limit: int, after: UUID | None = None
) -> list[RecipientRecord]:
    """The registered recipients, in id order, after the cursor `after`."""
    async with deps.engine.connect() as conn:
        return await store.list_recipients(conn, limit=limit, after=after)


async def receipt_keys(deps: Dependencies) -> dict[str, list[dict[str, Any]]]:
    """The JWKS of every key receipts were ever signed with (creating the first key if none)."""
    async with deps.engine.begin() as conn:
        return await deps.receipt_keys.jwks(conn)
