import json
from typing import Any, ClassVar
from uuid import UUID

import pytest
from confide_events import (
    EventRegistry,
    IntegrationEvent,
    MalformedEventData,
    MissingUpcaster,
    consent,
    decode_event,
    encode_envelope,
    identity,
    messaging,
)
from confide_events.envelope import Envelope
from confide_events.upcasting import Upcasters

# A ConsentGranted record exactly as the consent service wrote it under schema
# version 1, before the collection method was recorded. Kept verbatim: history in
# Kafka is never rewritten, so this must stay readable forever.
CONSENT_GRANTED_V1_RECORD = (
    b'{"id":"0195a3c2-5555-7abc-8def-0123456789ab","source":"/confide/consent",'
    b'"type":"confide.consent.ConsentGranted","specversion":"1.0",'
    b'"time":"2025-07-01T12:00:00Z","subject":"0195a3c2-1111-7abc-8def-0123456789ab",'
    b'"datacontenttype":"application/json",'
    b'"dataschema":"urn:confide:events:confide.consent.ConsentGranted:v1",'
    b'"schemaversion":1,"correlationid":"0195a3c2-6666-7abc-8def-0123456789ab",'
    b'"data":{"consent_id":"0195a3c2-7777-7abc-8def-0123456789ab",'
    b'"subject_id":"0195a3c2-1111-7abc-8def-0123456789ab","purpose":"treatment.referral",'
    b'"recipient_id":null,"data_categories":["messaging.session_notes"],'
    b'"policy_version":"2025-06","policy_hash":"' + b"b" * 64 + b'",'
    b'"granted_at":"2025-07-01T12:00:00Z"}}'
)


def test_a_v1_consent_is_read_as_v2_with_an_unspecified_method() -> None:
    event = decode_event(CONSENT_GRANTED_V1_RECORD)

    assert isinstance(event, consent.ConsentGranted)
    assert event.schema_version == 2
    assert event.method == "unspecified"
    assert event.consent_id == UUID("0195a3c2-7777-7abc-8def-0123456789ab")
    assert event.purpose == "treatment.referral"


def test_v1_data_is_checked_against_the_frozen_v1_model() -> None:
    document = json.loads(CONSENT_GRANTED_V1_RECORD)
    document["data"]["method"] = "api"  # v1 had no such field

    with pytest.raises(MalformedEventData, match="ConsentGrantedV1"):
        decode_event(json.dumps(document).encode())


# An identity SubjectDataShredded exactly as identity wrote it under schema version 1, when
# every answer named a key. Kept verbatim, like the consent record above.
SUBJECT_DATA_SHREDDED_V1_RECORD = (
    b'{"id":"0195a3c2-8888-7abc-8def-0123456789ab","source":"/confide/identity",'
    b'"type":"confide.identity.SubjectDataShredded","specversion":"1.0",'
    b'"time":"2026-11-02T08:00:00Z","subject":"0195a3c2-1111-7abc-8def-0123456789ab",'
    b'"datacontenttype":"application/json",'
    b'"dataschema":"urn:confide:events:confide.identity.SubjectDataShredded:v1",'
    b'"schemaversion":1,"correlationid":"0195a3c2-6666-7abc-8def-0123456789ab",'
    b'"data":{"subject_id":"0195a3c2-1111-7abc-8def-0123456789ab",'
    b'"category":"identity.profile","key_id":"0195a3c2-9999-7abc-8def-0123456789ab",'
    b'"shredded_at":"2026-11-02T07:59:59Z","erasure_case_id":null}}'
)


def test_a_v1_shredding_is_read_as_v2_with_its_key_and_time() -> None:
    event = decode_event(SUBJECT_DATA_SHREDDED_V1_RECORD)

    assert isinstance(event, identity.SubjectDataShredded)
    assert event.schema_version == 2
    assert event.outcome == "shredded"
    assert event.key_id == UUID("0195a3c2-9999-7abc-8def-0123456789ab")
    assert event.answered_at.isoformat() == "2026-11-02T07:59:59+00:00"
    assert event.category == "identity.profile"


def test_a_v1_shredding_without_a_key_is_refused() -> None:
    document = json.loads(SUBJECT_DATA_SHREDDED_V1_RECORD)
    document["data"]["key_id"] = None

    with pytest.raises(MalformedEventData, match="SubjectDataShreddedV1"):
        decode_event(json.dumps(document).encode())


def test_every_producer_reads_its_v1_shreddings_as_v2() -> None:
    document = json.loads(SUBJECT_DATA_SHREDDED_V1_RECORD)
    document.update(
        source="/confide/messaging",
        type="confide.messaging.SubjectDataShredded",
        dataschema="urn:confide:events:confide.messaging.SubjectDataShredded:v1",
    )
    document["data"]["category"] = "messaging.session_notes"

    event = decode_event(json.dumps(document).encode())

    assert isinstance(event, messaging.SubjectDataShredded)
    assert (event.outcome, event.category) == ("shredded", "messaging.session_notes")


def test_the_upcaster_does_not_alter_the_data_it_reads() -> None:
    data: dict[str, Any] = {"consent_id": "x"}

    upcast = consent.upcast_consent_granted_v1(data)

    assert data == {"consent_id": "x"}
    assert upcast == {"consent_id": "x", "method": "unspecified"}


def test_upcasters_chain_from_any_older_version_to_the_latest() -> None:
    upcasters = Upcasters(
        {
            ("confide.identity.Renamed", 1): lambda d: {**d, "steps": ["1->2"]},
            ("confide.identity.Renamed", 2): lambda d: {**d, "steps": [*d["steps"], "2->3"]},
        }
    )

    assert upcasters.upcast("confide.identity.Renamed", {}, from_version=1, to_version=3) == {
        "steps": ["1->2", "2->3"]
    }
    assert upcasters.upcast(
        "confide.identity.Renamed", {"steps": []}, from_version=2, to_version=3
    ) == {"steps": ["2->3"]}
    assert upcasters.upcast("confide.identity.Renamed", {"a": 1}, from_version=3, to_version=3) == {
        "a": 1
    }


def test_a_missing_step_is_reported() -> None:
    upcasters = Upcasters({("confide.identity.Renamed", 1): lambda d: d})

    with pytest.raises(MissingUpcaster, match="v2 -> v3"):
        upcasters.upcast("confide.identity.Renamed", {}, from_version=1, to_version=3)


class _RenamedV1(IntegrationEvent):
    event_type: ClassVar[str] = "confide.identity.Renamed"
    schema_version: ClassVar[int] = 1
    producer: ClassVar[str] = "identity"

    subject_id: UUID
    label: str


class _Renamed(IntegrationEvent):
    event_type: ClassVar[str] = "confide.identity.Renamed"
    schema_version: ClassVar[int] = 3
    producer: ClassVar[str] = "identity"

    subject_id: UUID
    label_code: str
    revision: int


def test_a_registry_reads_a_version_whose_model_was_dropped() -> None:
    # v2's model is gone; its upcaster remains, so v1 and v2 data are still read.
    registry = EventRegistry(
        [_RenamedV1, _Renamed],
        {
            ("confide.identity.Renamed", 1): lambda d: {**d, "revision": 1},
            ("confide.identity.Renamed", 2): lambda d: {
                "subject_id": d["subject_id"],
                "label_code": d.pop("label"),
                "revision": d["revision"],
            },
        },
    )
    subject = "0195a3c2-1111-7abc-8def-0123456789ab"
    v2 = json.loads(CONSENT_GRANTED_V1_RECORD)
    v2.update(
        type="confide.identity.Renamed",
        source="/confide/identity",
        schemaversion=2,
        dataschema="urn:confide:events:confide.identity.Renamed:v2",
        data={"subject_id": subject, "label": "intake", "revision": 4},
    )
    envelope = Envelope.model_validate_json(json.dumps(v2))

    event = registry.from_envelope(envelope)

    assert event == _Renamed(subject_id=UUID(subject), label_code="intake", revision=4)
    assert encode_envelope(envelope)
