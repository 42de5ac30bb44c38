"""Confide's event contract: the CloudEvents envelope and every integration event.

Import the envelope, the registry and the vocabulary from here; import events
from the module of the service that produces them, e.g.
`from confide_events.consent import ConsentGranted`.
"""

from confide_events import billing, consent, identity, messaging, retention
from confide_events.base import IntegrationEvent
from confide_events.envelope import (
    CLOUDEVENTS_JSON,
    CONTENT_TYPE_HEADER,
    Envelope,
    dataschema_uri,
    decode_envelope,
    encode_envelope,
    source_uri,
)
from confide_events.errors import (
    EventDecodeError,
    MalformedEnvelope,
    MalformedEventData,
    MissingUpcaster,
    UnknownEventType,
)
from confide_events.registry import (
    CATALOGUE,
    REGISTRY,
    EventRegistry,
    decode_event,
    from_envelope,
    to_envelope,
)
from confide_events.shredding import SubjectDataShredded
from confide_events.topics import (
    ALL_EVENT_TOPICS,
    TOPIC_BY_PRODUCER,
    dead_letter_topic,
    topic_for,
)
from confide_events.vocabulary import DATA_CATEGORIES, DataCategory, UtcDateTime

__all__ = [
    "ALL_EVENT_TOPICS",
    "CATALOGUE",
    "CLOUDEVENTS_JSON",
    "CONTENT_TYPE_HEADER",
    "DATA_CATEGORIES",
    "REGISTRY",
    "TOPIC_BY_PRODUCER",
    "DataCategory",
    "Envelope",
    "EventDecodeError",
    "EventRegistry",
    "IntegrationEvent",
    "MalformedEnvelope",
    "MalformedEventData",
    "MissingUpcaster",
    "SubjectDataShredded",
    "UnknownEventType",
    "UtcDateTime",
    "billing",
    "consent",
    "dataschema_uri",
    "dead_letter_topic",
    "decode_envelope",
    "decode_event",
    "encode_envelope",
    "from_envelope",
    "identity",
    "messaging",
    "retention",
    "source_uri",
    "to_envelope",
    "topic_for",
]
