"""Kafka topics: one per producing service, keyed by subject, kept forever.

Dead letters for a topic go to `<topic>.dlq`.
"""

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from confide_events.base import IntegrationEvent

IDENTITY_EVENTS: Final = "identity.events"
CONSENT_EVENTS: Final = "consent.events"
MESSAGING_EVENTS: Final = "messaging.events"
BILLING_EVENTS: Final = "billing.events"
RETENTION_EVENTS: Final = "retention.events"

TOPIC_BY_PRODUCER: Final[Mapping[str, str]] = MappingProxyType(
    {
        "identity": IDENTITY_EVENTS,
        "consent": CONSENT_EVENTS,
        "messaging": MESSAGING_EVENTS,
        "billing": BILLING_EVENTS,
        "retention": RETENTION_EVENTS,
    }
)
"""The topic each producing service publishes to."""

ALL_EVENT_TOPICS: Final[tuple[str, ...]] = tuple(TOPIC_BY_PRODUCER.values())

DEAD_LETTER_SUFFIX: Final = ".dlq"


def dead_letter_topic(topic: str) -> str:
    """The dead-letter topic of an event topic: `identity.events` -> `identity.events.dlq`."""
    return topic + DEAD_LETTER_SUFFIX


def topic_for(event: IntegrationEvent | type[IntegrationEvent]) -> str:
    """The topic an event (or event class) is published to: its producer's topic."""
    return TOPIC_BY_PRODUCER[event.producer]
