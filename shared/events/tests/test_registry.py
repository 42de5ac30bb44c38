import json
from collections.abc import Callable
from datetime import datetime
from typing import Any, ClassVar
from uuid import UUID

import pytest
from confide_events import (
    ALL_EVENT_TOPICS,
    CATALOGUE,
    REGISTRY,
    TOPIC_BY_PRODUCER,
    EventRegistry,
    IntegrationEvent,
    MalformedEnvelope,
    MissingUpcaster,
    UnknownEventType,
    consent,
    dead_letter_topic,
    decode_envelope,
    decode_event,
    encode_envelope,
    from_envelope,
    identity,
    to_envelope,
    topic_for,
)
from confide_events.shredding import SubjectDataShredded

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def _all_subclasses(cls: type[IntegrationEvent]) -> set[type[IntegrationEvent]]:
    found = set(cls.__subclasses__())
    for subclass in list(found):
        found |= _all_subclasses(subclass)
    return found


def test_every_event_class_is_in_the_catalogue() -> None:
    concrete = {cls for cls in _all_subclasses(IntegrationEvent) if "event_type" in vars(cls)}
    concrete = {cls for cls in concrete if cls.__module__.startswith("confide_events.")}

    assert concrete == set(CATALOGUE)
    assert SubjectDataShredded not in REGISTRY.models.values()


def test_every_producer_has_its_topic_and_dead_letter_topic() -> None:
    assert ALL_EVENT_TOPICS == (
        "identity.events",
        "consent.events",
        "messaging.events",
        "billing.events",
        "retention.events",
    )
    assert {cls.producer for cls in CATALOGUE} == set(TOPIC_BY_PRODUCER)
    assert dead_letter_topic("consent.events") == "consent.events.dlq"
    assert topic_for(consent.ConsentGranted) == "consent.events"


def test_to_envelope_fills_every_attribute(
    samples: list[IntegrationEvent],
    new_event_id: Callable[[], UUID],
    correlation_id: str,
    now: datetime,
) -> None:
    granted = next(e for e in samples if isinstance(e, consent.ConsentGranted))
    event_id, cause = new_event_id(), str(new_event_id())

    envelope = to_envelope(
        granted,
        event_id=event_id,
        time=now,
        correlation_id=correlation_id,
        causation_id=cause,
        traceparent=TRACEPARENT,
    )

    assert envelope.id == event_id
    assert envelope.source == "/confide/consent"
    assert envelope.type == "confide.consent.ConsentGranted"
    assert envelope.subject == str(granted.subject_id)
    assert envelope.dataschema == "urn:confide:events:confide.consent.ConsentGranted:v2"
    assert envelope.schemaversion == 2
    assert envelope.correlationid == correlation_id
    assert envelope.causationid == cause
    assert envelope.traceparent == TRACEPARENT
    assert envelope.data == granted.to_data()


def test_every_event_goes_through_kafka_bytes_unchanged(
    produced_event: IntegrationEvent,
    new_event_id: Callable[[], UUID],
    correlation_id: str,
    now: datetime,
) -> None:
    envelope = to_envelope(
        produced_event, event_id=new_event_id(), time=now, correlation_id=correlation_id
    )

    raw = encode_envelope(envelope)

    assert decode_envelope(raw) == envelope
    assert from_envelope(decode_envelope(raw)) == produced_event
    assert decode_event(raw) == produced_event


def test_an_old_version_cannot_be_produced(
    samples: list[IntegrationEvent],
    new_event_id: Callable[[], UUID],
    correlation_id: str,
    now: datetime,
) -> None:
    old = next(e for e in samples if isinstance(e, consent.ConsentGrantedV1))

    with pytest.raises(ValueError, match="old version"):
        to_envelope(old, event_id=new_event_id(), time=now, correlation_id=correlation_id)


def _envelope_document(
    event: IntegrationEvent, event_id: UUID, correlation_id: str, now: datetime
) -> dict[str, Any]:
    envelope = to_envelope(event, event_id=event_id, time=now, correlation_id=correlation_id)
    document: dict[str, Any] = json.loads(encode_envelope(envelope))
    return document


def test_unknown_type_is_refused(
    samples: list[IntegrationEvent],
    new_event_id: Callable[[], UUID],
    correlation_id: str,
    now: datetime,
) -> None:
    document = _envelope_document(samples[0], new_event_id(), correlation_id, now)
    document["type"] = "confide.identity.UserRenamed"
    document["dataschema"] = "urn:confide:events:confide.identity.UserRenamed:v1"

    with pytest.raises(UnknownEventType, match="UserRenamed"):
        decode_event(json.dumps(document).encode())


def test_a_newer_version_than_known_is_refused_as_unknown(
    samples: list[IntegrationEvent],
    new_event_id: Callable[[], UUID],
    correlation_id: str,
    now: datetime,
) -> None:
    document = _envelope_document(samples[0], new_event_id(), correlation_id, now)
    document["schemaversion"] = 9
    document["dataschema"] = document["dataschema"].replace(":v1", ":v9")

    with pytest.raises(UnknownEventType, match="upgrade"):
        decode_event(json.dumps(document).encode())


def test_an_envelope_from_the_wrong_source_is_refused(
    samples: list[IntegrationEvent],
    new_event_id: Callable[[], UUID],
    correlation_id: str,
    now: datetime,
) -> None:
    document = _envelope_document(samples[0], new_event_id(), correlation_id, now)
    document["source"] = "/confide/billing"

    with pytest.raises(MalformedEnvelope, match="identity"):
        decode_event(json.dumps(document).encode())


def test_an_envelope_whose_subject_contradicts_its_event_is_refused(
    samples: list[IntegrationEvent],
    new_event_id: Callable[[], UUID],
    correlation_id: str,
    now: datetime,
) -> None:
    document = _envelope_document(samples[0], new_event_id(), correlation_id, now)
    document["subject"] = "0195a3c2-9999-7abc-8def-0123456789ab"

    with pytest.raises(MalformedEnvelope, match="subject"):
        decode_event(json.dumps(document).encode())


def test_data_with_an_unknown_field_is_refused(
    samples: list[IntegrationEvent],
    new_event_id: Callable[[], UUID],
    correlation_id: str,
    now: datetime,
) -> None:
    document = _envelope_document(samples[0], new_event_id(), correlation_id, now)
    document["data"]["email"] = "jane@example.com"

    with pytest.raises(ValueError, match="email") as caught:
        decode_event(json.dumps(document).encode())
    assert "jane" not in str(caught.value)


class _Renamed(IntegrationEvent):
    event_type: ClassVar[str] = "confide.identity.Renamed"
    schema_version: ClassVar[int] = 1
    producer: ClassVar[str] = "identity"

    subject_id: UUID


class _RenamedV2(_Renamed):
    schema_version: ClassVar[int] = 2


def test_registry_refuses_a_version_without_an_upcaster_from_the_previous() -> None:
    with pytest.raises(MissingUpcaster, match="v1 -> v2"):
        EventRegistry([_Renamed, _RenamedV2], {})


def test_registry_refuses_a_version_registered_twice() -> None:
    with pytest.raises(ValueError, match="twice"):
        EventRegistry([_Renamed, _Renamed], {})


def test_registry_refuses_a_type_outside_its_producer_namespace() -> None:
    class Misplaced(_Renamed):
        producer: ClassVar[str] = "billing"

    with pytest.raises(ValueError, match="prefix"):
        EventRegistry([Misplaced], {})


def test_registry_refuses_an_unknown_producer() -> None:
    class Stray(_Renamed):
        producer: ClassVar[str] = "analytics"

    with pytest.raises(ValueError, match="producer"):
        EventRegistry([Stray], {})


def test_signing_keys_partition_by_kid(
    samples: list[IntegrationEvent],
    new_event_id: Callable[[], UUID],
    correlation_id: str,
    now: datetime,
) -> None:
    published = next(e for e in samples if isinstance(e, identity.SigningKeyPublished))

    envelope = to_envelope(
        published, event_id=new_event_id(), time=now, correlation_id=correlation_id
    )

    assert envelope.subject == "2026-03-key-1"
