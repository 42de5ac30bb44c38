"""The events the consent service consumes: `AccountClosed` withdraws every consent."""

from __future__ import annotations

from confide_events.identity import AccountClosed
from confide_events.topics import IDENTITY_EVENTS
from confide_toolkit.inbox import EventContext
from confide_toolkit.service import Service

from confide_consent import handlers
from confide_consent.handlers import Dependencies


def subscribe(service: Service, deps: Dependencies) -> None:
    """Register the consent service's consumers (idempotent through the toolkit's inbox)."""

    async def on_account_closed(event: AccountClosed, ctx: EventContext) -> None:
        await handlers.withdraw_all_on_account_closed(deps, event, ctx)

    service.subscribe(IDENTITY_EVENTS, {AccountClosed: on_account_closed})
