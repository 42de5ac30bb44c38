"""What the audit service consumes: every record of every event topic, whatever its type, as
raw bytes into the trail (the toolkit's `records.RecordConsumer`, subscribed as every consumer
is: exactly once in the trail, positions moved in the same transaction as the entries
appended)."""

from __future__ import annotations

from confide_toolkit.records import RecordConsumer
from confide_toolkit.service import Service
from confide_toolkit.subscriptions import subscribe_batches

from confide_audit import handlers, store
from confide_audit.settings import AuditSettings


def subscribe(service: Service, settings: AuditSettings) -> RecordConsumer:
    """Subscribe the trail to every record of the event topics; returns its consumer."""
    consumer = RecordConsumer(store.LIVE_CONSUMER, service.engine, handlers.keep_records)
    subscribe_batches(
        service.broker,
        settings.trail_topics,
        # A group of its own: in the service's group, identity.events' partitions would be
        # shared between the trail and the toolkit's consumer of signing keys, each seeing part.
        f"{settings.consumer_group or service.name}.trail",
        consumer,
        title=f"{','.join(settings.trail_topics)}:{service.name}",
        description="Every record, whatever its type, kept as raw bytes in the hash chain",
    )
    return consumer
