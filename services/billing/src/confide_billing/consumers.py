"""The events the billing service consumes: who closed their account (from identity) and the
expiries of its categories (from retention)."""

from __future__ import annotations

from confide_events.identity import AccountClosed
from confide_events.retention import RetentionExpired
from confide_events.topics import IDENTITY_EVENTS, RETENTION_EVENTS
from confide_toolkit.inbox import EventContext
from confide_toolkit.service import Service

from confide_billing.handlers import Dependencies, accounts


def subscribe(service: Service, deps: Dependencies) -> None:
    """Register the billing service's consumers (exactly once through the toolkit's consumer)."""

    async def on_account_closed(event: AccountClosed, ctx: EventContext) -> None:
        await accounts.close_on_account_closed(deps, event, ctx)

    async def on_retention_expired(event: RetentionExpired, ctx: EventContext) -> None:
        await accounts.shred_on_retention_expired(deps, event, ctx)

    service.subscribe(IDENTITY_EVENTS, {AccountClosed: on_account_closed})
    service.subscribe(RETENTION_EVENTS, {RetentionExpired: on_retention_expired})
