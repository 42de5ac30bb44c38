"""What identity consumes: retention's verdicts on the profiles it keeps."""

from __future__ import annotations

from confide_events.retention import RetentionExpired
from confide_events.topics import RETENTION_EVENTS
from confide_toolkit.inbox import EventContext
from confide_toolkit.service import Service

from confide_identity.handlers import Dependencies, accounts


def subscribe(service: Service, deps: Dependencies) -> None:
    """Register identity's consumers on the service (before `create_app`)."""

    async def on_retention_expired(event: RetentionExpired, ctx: EventContext) -> None:
        await accounts.shred_profile(deps, event, ctx)

    service.subscribe(RETENTION_EVENTS, {RetentionExpired: on_retention_expired})
