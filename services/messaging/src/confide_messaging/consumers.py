"""The events the messaging service consumes: who is who and who closed their account (from
identity), the consents disclosures check (the toolkit's `consent_view`), and the expiries of
its categories (from retention)."""

from __future__ import annotations

from confide_events.identity import AccountClosed, UserRegistered
from confide_events.retention import RetentionExpired
from confide_events.topics import CONSENT_EVENTS, IDENTITY_EVENTS, RETENTION_EVENTS
from confide_toolkit.consents import consent_handlers
from confide_toolkit.inbox import EventContext
from confide_toolkit.service import Service

from confide_messaging import handlers
from confide_messaging.handlers import Dependencies


def subscribe(service: Service, deps: Dependencies) -> None:
    """Register the messaging service's consumers (idempotent through the toolkit's inbox)."""

    async def on_user_registered(event: UserRegistered, ctx: EventContext) -> None:
        await handlers.record_person(deps, event, ctx)

    async def on_account_closed(event: AccountClosed, ctx: EventContext) -> None:
        await handlers.close_conversations_on_account_closed(deps, event, ctx)

    service.subscribe(
        IDENTITY_EVENTS, {UserRegistered: on_user_registered, AccountClosed: on_account_closed}
    )

    async def on_retention_expired(event: RetentionExpired, ctx: EventContext) -> None:
        await handlers.shred_on_retention_expired(deps, event, ctx)

    service.subscribe(CONSENT_EVENTS, consent_handlers())
    service.subscribe(RETENTION_EVENTS, {RetentionExpired: on_retention_expired})
