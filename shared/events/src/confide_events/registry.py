"""The catalogue of every event, and the translation between events and envelopes.

`CATALOGUE` lists every event class explicitly, older frozen versions included;
`REGISTRY` indexes it by (type, schema version) with the upcasters between
versions. Producers call `to_envelope`, consumers call `from_envelope`.
"""

from collections.abc import Iterable, Mapping
from datetime import datetime
from types import MappingProxyType
from typing import Final
from uuid import UUID

from confide_events import billing, consent, identity, messaging, retention, shredding
from confide_events.base import IntegrationEvent
from confide_events.envelope import Envelope, dataschema_uri, decode_envelope, source_uri
from confide_events.errors import MalformedEnvelope, MissingUpcaster, UnknownEventType
from confide_events.topics import TOPIC_BY_PRODUCER
from confide_events.upcasting import Upcaster, UpcasterKey, Upcasters

EventKey = tuple[str, int]
"""(CloudEvents type, schema version)."""


class EventRegistry:
    """Every known (type, schema version) of event, and how to upcast between versions.

    The constructor checks the catalogue is coherent, so a mistake fails at import
    time: duplicate versions, a type not named after its producer, an unknown
    producer, or a missing upcaster between two versions of a type.
    """

    def __init__(
        self,
        events: Iterable[type[IntegrationEvent]],
        upcasters: Mapping[UpcasterKey, Upcaster],
    ) -> None:
        models: dict[EventKey, type[IntegrationEvent]] = {}
        for event_class in events:
            key = (event_class.event_type, event_class.schema_version)
            if key in models:
                raise ValueError(f"{key[0]} v{key[1]} is registered twice")
            if event_class.producer not in TOPIC_BY_PRODUCER:
                raise ValueError(f"{event_class.__name__}: unknown producer {event_class.producer}")
            if not event_class.event_type.startswith(f"confide.{event_class.producer}."):
                raise ValueError(f"{event_class.event_type} must start with its producer's prefix")
            models[key] = event_class
        self._models = MappingProxyType(models)
        self._upcasters = Upcasters(upcasters)
        latest: dict[str, int] = {}
        oldest: dict[str, int] = {}
        for event_type, version in models:
            latest[event_type] = max(version, latest.get(event_type, version))
            oldest[event_type] = min(version, oldest.get(event_type, version))
        self._latest = MappingProxyType(latest)
        for event_type, first in oldest.items():
            for version in range(first, latest[event_type]):
                if (event_type, version) not in self._upcasters:
                    raise MissingUpcaster(
                        f"no upcaster for {event_type} v{version} -> v{version + 1}"
                    )

    @property
    def models(self) -> Mapping[EventKey, type[IntegrationEvent]]:
        """Every registered event class by (type, schema version), old versions included."""
        return self._models

    def latest_version(self, event_type: str) -> int:
        """The current schema version of a type; raises `UnknownEventType`."""
        try:
            return self._latest[event_type]
        except KeyError:
            raise UnknownEventType(f"unknown event type {event_type}") from None

    def latest_model(self, event_type: str) -> type[IntegrationEvent]:
        """The model of the current version of a type; raises `UnknownEventType`."""
        return self._models[(event_type, self.latest_version(event_type))]

    def to_envelope(
        self,
        event: IntegrationEvent,
        *,
        event_id: UUID,
        time: datetime,
        correlation_id: str,
        causation_id: str | None = None,
        traceparent: str | None = None,
    ) -> Envelope:
        """Wrap an event in its CloudEvents envelope, ready to be encoded and published.

        Only the latest version of a type may be produced. `event_id` must be a
        UUIDv7 and `time` timezone-aware; the subject is `event.subject()`.
        """
        event_type, version = event.event_type, event.schema_version
        if self._models.get((event_type, version)) is not type(event):
            raise ValueError(f"{type(event).__name__} is not a registered event class")
        if version != self.latest_version(event_type):
            raise ValueError(f"{event_type} v{version} is an old version; produce the latest")
        return Envelope(
            id=event_id,
            source=source_uri(event.producer),
            type=event_type,
            time=time,
            subject=event.subject(),
            dataschema=dataschema_uri(event_type, version),
            schemaversion=version,
            correlationid=correlation_id,
            causationid=causation_id,
            traceparent=traceparent,
            data=event.to_data(),
        )

    def from_envelope(self, envelope: Envelope) -> IntegrationEvent:
        """Read the event an envelope carries, as the latest version of its type.

        Data written under an older version is first validated against that
        version's frozen model (when it is still kept), then upcast step by step
        and validated against the latest model.

        Raises `UnknownEventType` for a type or a version newer than this
        contract knows, `MalformedEventData` if the data does not validate and
        `MalformedEnvelope` if the source or subject contradict the event.
        """
        latest = self.latest_version(envelope.type)
        if envelope.schemaversion > latest:
            raise UnknownEventType(
                f"{envelope.type} v{envelope.schemaversion} is newer than the known "
                f"v{latest}: upgrade confide-events"
            )
        event_class = self._models[(envelope.type, latest)]
        if envelope.schemaversion == latest:
            # Written as the latest version: one validation, nothing to upcast.
            event = event_class.from_data(envelope.data)
        else:
            written_as = self._models.get((envelope.type, envelope.schemaversion))
            if written_as is not None:
                written_as.from_data(envelope.data)
            data = self._upcasters.upcast(
                envelope.type, envelope.data, from_version=envelope.schemaversion, to_version=latest
            )
            event = event_class.from_data(data)
        if envelope.source != source_uri(event_class.producer):
            raise MalformedEnvelope(f"{envelope.type} must come from {event_class.producer}")
        if envelope.subject != event.subject():
            raise MalformedEnvelope(f"{envelope.type}: the subject does not match the event")
        return event


CATALOGUE: Final[tuple[type[IntegrationEvent], ...]] = (
    identity.UserRegistered,
    identity.AccountClosed,
    identity.PasswordChanged,
    identity.AccountLocked,
    identity.SessionsRevoked,
    identity.SigningKeyPublished,
    identity.SubjectDataShreddedV1,
    identity.SubjectDataShredded,
    consent.ConsentGrantedV1,
    consent.ConsentGranted,
    consent.ConsentRevoked,
    messaging.ConversationStarted,
    messaging.MessageSent,
    messaging.SessionNoteRecorded,
    messaging.RecordAccessed,
    messaging.RecordsDisclosed,
    messaging.SubjectDataShreddedV1,
    messaging.SubjectDataShredded,
    billing.PaymentMethodAdded,
    billing.PaymentMethodRemoved,
    billing.ChargeSucceeded,
    billing.ChargeFailed,
    billing.RefundIssued,
    billing.SubjectDataShreddedV1,
    billing.SubjectDataShredded,
    retention.ErasureRequested,
    retention.LegalHoldPlaced,
    retention.LegalHoldReleased,
    retention.RetentionExpired,
    retention.ErasureCompleted,
)
"""Every event class, older versions included. Add a new event or version here."""

UPCASTERS: Final[Mapping[UpcasterKey, Upcaster]] = MappingProxyType(
    {
        ("confide.consent.ConsentGranted", 1): consent.upcast_consent_granted_v1,
        ("confide.identity.SubjectDataShredded", 1): shredding.upcast_subject_data_shredded_v1,
        ("confide.messaging.SubjectDataShredded", 1): shredding.upcast_subject_data_shredded_v1,
        ("confide.billing.SubjectDataShredded", 1): shredding.upcast_subject_data_shredded_v1,
    }
)
"""Every upcaster, keyed by (type, the version it reads)."""

REGISTRY: Final = EventRegistry(CATALOGUE, UPCASTERS)
"""The registry of Confide's event contract."""


def to_envelope(
    event: IntegrationEvent,
    *,
    event_id: UUID,
    time: datetime,
    correlation_id: str,
    causation_id: str | None = None,
    traceparent: str | None = None,
) -> Envelope:
    """Wrap an event in its CloudEvents envelope (see `EventRegistry.to_envelope`)."""
    return REGISTRY.to_envelope(
        event,
        event_id=event_id,
        time=time,
        correlation_id=correlation_id,
        causation_id=causation_id,
        traceparent=traceparent,
    )


def from_envelope(envelope: Envelope) -> IntegrationEvent:
    """Read the event an envelope carries, upcast to the latest version.

    See `EventRegistry.from_envelope`.
    """
    return REGISTRY.from_envelope(envelope)


def decode_event(raw: bytes) -> IntegrationEvent:
    """Decode a Kafka record value straight into its (latest-version) event.

    Raises a subclass of `EventDecodeError` if the record cannot be read.
    """
    return REGISTRY.from_envelope(decode_envelope(raw))
