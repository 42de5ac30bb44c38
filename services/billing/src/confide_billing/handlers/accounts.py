"""What billing does when a person's account closes, and when retention ends a category of
their data."""

from __future__ import annotations

from confide_events import billing as published
from confide_events.identity import AccountClosed
from confide_events.retention import RetentionExpired
from confide_toolkit.inbox import EventContext

from confide_billing.domain import billing_category
from confide_billing.handlers import Dependencies


async def close_on_account_closed(
    deps: Dependencies, event: AccountClosed, ctx: EventContext
) -> None:
    """The person closed their account: every card of theirs is removed at once (a charge on
    it answers 409 from the commit on) and each removal is published, starting its retention
    clock. A redelivered `AccountClosed` removes nothing more."""
    account = await deps.accounts.load_for_change(ctx.conn, event.subject_id)
    removed = account.close(event.closed_at)
    if not account.pending:
        return
    await deps.accounts.save(ctx.conn, account)
    for payment_method_id in removed:
        await ctx.emit(
            published.PaymentMethodRemoved(
                payment_method_id=payment_method_id,
                subject_id=event.subject_id,
                removed_at=event.closed_at,
            )
        )


async def shred_on_retention_expired(
    deps: Dependencies, event: RetentionExpired, ctx: EventContext
) -> None:
    """RetentionExpired for billing.payment_methods or billing.financial_records: destroy the
    person's key for that category and answer, shredded with the key's id, or nothing held when
    billing never had a key for them. Shredding the cards makes every card of theirs unusable
    (it no longer opens) while invoices stay; shredding the financial records erases the
    invoices' addressee and the charges' descriptions, while amounts and numbers stay for the
    books. A redelivered expiry answers the same tombstone again."""
    category = billing_category(event.category)
    if category is None:
        return
    tombstone = await deps.keyring.shred(ctx.conn, event.subject_id, category)
    await ctx.emit(
        published.SubjectDataShredded(
            subject_id=event.subject_id,
            category=category,
            outcome="nothing_held" if tombstone is None else "shredded",
            key_id=None if tombstone is None else tombstone.key_id,
            answered_at=deps.clock.now() if tombstone is None else tombstone.shredded_at,
            erasure_case_id=event.erasure_case_id,
        )
    )
