"""The events the retention service consumes: the facts that start retention clocks (identity's
closures, messaging's messages and notes, billing's cards and charges), and every owner's
answer to an expiry (`SubjectDataShredded` of identity, messaging and billing)."""

from __future__ import annotations

from confide_events import billing, identity, messaging
from confide_events.topics import BILLING_EVENTS, IDENTITY_EVENTS, MESSAGING_EVENTS
from confide_toolkit.inbox import EventContext
from confide_toolkit.service import Service

from confide_retention import handlers
from confide_retention.handlers import Dependencies


def subscribe(service: Service, deps: Dependencies) -> None:
    """Register the retention service's consumers (idempotent through the toolkit's inbox)."""

    async def on_account_closed(event: identity.AccountClosed, ctx: EventContext) -> None:
        await handlers.start_clock(deps, ctx, event.subject_id, "account_closed", event.closed_at)

    async def on_message_sent(event: messaging.MessageSent, ctx: EventContext) -> None:
        await handlers.start_clock(deps, ctx, event.subject_id, "last_message", event.sent_at)

    async def on_note_recorded(event: messaging.SessionNoteRecorded, ctx: EventContext) -> None:
        await handlers.start_clock(deps, ctx, event.subject_id, "last_note", event.recorded_at)

    async def on_payment_method_added(event: billing.PaymentMethodAdded, ctx: EventContext) -> None:
        await handlers.note_payment_method_added(
            deps, ctx, event.payment_method_id, event.subject_id
        )

    async def on_payment_method_removed(
        event: billing.PaymentMethodRemoved, ctx: EventContext
    ) -> None:
        await handlers.note_payment_method_removed(
            deps, ctx, event.payment_method_id, event.subject_id, event.removed_at
        )

    async def on_charge_succeeded(event: billing.ChargeSucceeded, ctx: EventContext) -> None:
        await handlers.start_clock(deps, ctx, event.subject_id, "last_charge", event.succeeded_at)

    async def on_answer(
        event: identity.SubjectDataShredded
        | messaging.SubjectDataShredded
        | billing.SubjectDataShredded,
        ctx: EventContext,
    ) -> None:
        await handlers.record_owner_answer(deps, event, ctx)

    service.subscribe(
        IDENTITY_EVENTS,
        {identity.AccountClosed: on_account_closed, identity.SubjectDataShredded: on_answer},
    )
    service.subscribe(
        MESSAGING_EVENTS,
        {
            messaging.MessageSent: on_message_sent,
            messaging.SessionNoteRecorded: on_note_recorded,
            messaging.SubjectDataShredded: on_answer,
        },
    )
    service.subscribe(
        BILLING_EVENTS,
        {
            billing.PaymentMethodAdded: on_payment_method_added,
            billing.PaymentMethodRemoved: on_payment_method_removed,
            billing.ChargeSucceeded: on_charge_succeeded,
            billing.SubjectDataShredded: on_answer,
        },
    )
