import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from uuid import UUID, uuid4

import pytest
from confide_events import (
    CLOUDEVENTS_JSON,
    CONTENT_TYPE_HEADER,
    Envelope,
    MalformedEnvelope,
    decode_envelope,
    encode_envelope,
)
from pydantic import ValidationError

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.fixture
def attributes(new_event_id: Callable[[], UUID], correlation_id: str) -> dict[str, Any]:
    return {
        "id": new_event_id(),
        "source": "/confide/consent",
        "type": "confide.consent.ConsentGranted",
        "time": datetime(2026, 3, 14, 9, 26, 53, 589000, tzinfo=UTC),
        "subject": "0195a3c2-1111-7abc-8def-0123456789ab",
        "dataschema": "urn:confide:events:confide.consent.ConsentGranted:v2",
        "schemaversion": 2,
        "correlationid": correlation_id,
        "causationid": str(new_event_id()),
        "traceparent": TRACEPARENT,
        "data": {"consent_id": "0195a3c2-3333-7abc-8def-0123456789ab", "count": 3},
    }


@pytest.fixture
def envelope(attributes: dict[str, Any]) -> Envelope:
    return Envelope(**attributes)


def test_structured_mode_header_constants() -> None:
    assert CONTENT_TYPE_HEADER == "content-type"
    assert CLOUDEVENTS_JSON == "application/cloudevents+json"


def test_envelope_round_trips_exactly(envelope: Envelope) -> None:
    raw = encode_envelope(envelope)

    assert decode_envelope(raw) == envelope
    assert encode_envelope(decode_envelope(raw)) == raw


def test_encoding_is_compact_utf8_json_with_cloudevents_attributes(envelope: Envelope) -> None:
    raw = encode_envelope(envelope)
    document = json.loads(raw.decode("utf-8"))

    assert b" " not in raw
    assert document["specversion"] == "1.0"
    assert document["datacontenttype"] == "application/json"
    assert document["id"] == str(envelope.id)
    assert document["time"] == "2026-03-14T09:26:53.589000Z"
    assert document["data"] == envelope.data
    # CloudEvents extension attribute names are lowercase letters and digits only.
    assert all(name.isalnum() and name.islower() for name in document)


def test_absent_optional_attributes_are_omitted_not_null(attributes: dict[str, Any]) -> None:
    envelope = Envelope(**{**attributes, "causationid": None, "traceparent": None})
    document = json.loads(encode_envelope(envelope))

    assert "causationid" not in document
    assert "traceparent" not in document
    assert decode_envelope(encode_envelope(envelope)) == envelope


def test_naive_time_is_refused(attributes: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="time"):
        Envelope(**{**attributes, "time": datetime(2026, 3, 14, 9, 0)})


def test_time_in_another_offset_is_normalised_to_utc(attributes: dict[str, Any]) -> None:
    paris = timezone(timedelta(hours=1))
    envelope = Envelope(**{**attributes, "time": datetime(2026, 3, 14, 10, 0, tzinfo=paris)})

    assert envelope.time == datetime(2026, 3, 14, 9, 0, tzinfo=UTC)
    assert envelope.time.utcoffset() == timedelta(0)


def test_id_must_be_a_uuid7(attributes: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="UUIDv7"):
        Envelope(**{**attributes, "id": uuid4()})


@pytest.mark.parametrize(
    "traceparent",
    [
        "not-a-traceparent",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    ],
)
def test_invalid_traceparent_is_refused(attributes: dict[str, Any], traceparent: str) -> None:
    with pytest.raises(ValidationError, match="traceparent"):
        Envelope(**{**attributes, "traceparent": traceparent})


def test_correlation_id_must_be_uuid_text(attributes: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="correlationid"):
        Envelope(**{**attributes, "correlationid": "request 42"})


def test_dataschema_must_match_type_and_version(attributes: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="dataschema"):
        Envelope(**{**attributes, "schemaversion": 1})


def test_envelope_is_frozen(envelope: Envelope) -> None:
    with pytest.raises(ValidationError):
        envelope.subject = "someone-else"  # type: ignore[misc]


def _record(envelope: Envelope, **changes: Any) -> bytes:
    document = json.loads(encode_envelope(envelope))
    document.update(changes)
    return json.dumps(document).encode()


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"not json",
        b"\xff\xfe\x00",
        b"[]",
        b'"a string"',
        b"{}",
    ],
)
def test_garbage_is_a_malformed_envelope(raw: bytes) -> None:
    with pytest.raises(MalformedEnvelope):
        decode_envelope(raw)


def test_unknown_attribute_is_a_malformed_envelope(envelope: Envelope) -> None:
    with pytest.raises(MalformedEnvelope, match="region"):
        decode_envelope(_record(envelope, region="eu-west-1"))


def test_missing_attribute_is_a_malformed_envelope(envelope: Envelope) -> None:
    document = json.loads(encode_envelope(envelope))
    del document["subject"]

    with pytest.raises(MalformedEnvelope, match="subject"):
        decode_envelope(json.dumps(document).encode())


def test_naive_time_on_the_wire_is_a_malformed_envelope(envelope: Envelope) -> None:
    with pytest.raises(MalformedEnvelope, match="time"):
        decode_envelope(_record(envelope, time="2026-03-14T09:26:53"))


def test_malformed_envelope_is_a_value_error_that_does_not_echo_values(
    envelope: Envelope,
) -> None:
    with pytest.raises(ValueError, match="subject") as caught:
        decode_envelope(_record(envelope, subject="jane.doe@example.com has trouble"))

    assert "jane" not in str(caught.value)
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


def test_the_official_cloudevents_sdk_reads_and_rewrites_the_kafka_record(
    envelope: Envelope,
) -> None:
    # Runs when the CloudEvents Python SDK (2.x) is installed; it is not a
    # dependency of the contract:  uv run --with cloudevents pytest shared/events/tests
    kafka = pytest.importorskip("cloudevents.core.bindings.kafka")
    record = kafka.KafkaMessage(
        headers={CONTENT_TYPE_HEADER: CLOUDEVENTS_JSON.encode()},
        key=envelope.subject.encode(),
        value=encode_envelope(envelope),
    )

    read = kafka.from_kafka_event(record)
    attributes = read.get_attributes()

    assert attributes["id"] == str(envelope.id)
    assert attributes["type"] == envelope.type
    assert attributes["subject"] == envelope.subject
    assert attributes["time"] == envelope.time
    assert attributes["schemaversion"] == 2
    assert attributes["traceparent"] == TRACEPARENT
    assert read.get_data() == envelope.data
    # The SDK maps the record key to the `partitionkey` extension, as the Kafka
    # binding requires; Confide accepts it when it equals the subject.
    assert attributes["partitionkey"] == envelope.subject
    rewritten = decode_envelope(kafka.to_structured_event(read).value)
    assert rewritten.model_copy(update={"partitionkey": None}) == envelope


def test_partitionkey_must_equal_subject(attributes: dict[str, Any]) -> None:
    assert Envelope(**attributes, partitionkey=attributes["subject"]).partitionkey
    with pytest.raises(ValidationError, match="partitionkey"):
        Envelope(**attributes, partitionkey="another-key")
