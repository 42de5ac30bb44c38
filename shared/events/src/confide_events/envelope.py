"""The CloudEvents 1.0 envelope every Confide event travels in.

Confide uses the *structured* content mode of the CloudEvents Kafka protocol
binding everywhere: the Kafka record value is the whole event as one JSON object
(the CloudEvents JSON format), and the record carries the header
`content-type: application/cloudevents+json`. The record key is the subject.

Why structured rather than binary mode: the record value alone is the complete,
self-describing event, so the outbox row, the dead-letter record, the audit
trail and a replay all store and hash the same bytes, and any CloudEvents SDK
reads it as a structured Kafka message. Never add `ce_*` headers: SDKs would
then take the record for binary mode.
"""

import re
from typing import Annotated, Any, Final, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from confide_events.errors import MalformedEnvelope
from confide_events.vocabulary import UtcDateTime

CONTENT_TYPE_HEADER: Final = "content-type"
"""The Kafka record header that announces the content mode."""

CLOUDEVENTS_JSON: Final = "application/cloudevents+json"
"""Value of `CONTENT_TYPE_HEADER` on every Confide record: structured mode, JSON format."""

SPECVERSION: Final = "1.0"
DATA_CONTENT_TYPE: Final = "application/json"

_UUID_TEXT = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
# W3C trace context: version-traceid-parentid-flags; the regex engine pydantic uses
# has no look-ahead, so the forbidden values are refused in a validator below.
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")


def dataschema_uri(event_type: str, schema_version: int) -> str:
    """The `dataschema` URI of one version of an event type.

    It names the committed JSON Schema `schemas/<type>.v<version>.json`.
    """
    return f"urn:confide:events:{event_type}:v{schema_version}"


def source_uri(producer: str) -> str:
    """The CloudEvents `source` of every event a producing service emits."""
    return f"/confide/{producer}"


class Envelope(BaseModel):
    """A CloudEvents 1.0 event as Confide writes it (structured mode, JSON format).

    Attribute names are the CloudEvents ones; the extension attributes
    (`schemaversion`, `correlationid`, `causationid`, `traceparent`) are lowercase
    alphanumeric, as the specification requires.
    """

    model_config = ConfigDict(frozen=True, strict=True, extra="forbid")

    id: UUID
    source: Annotated[str, Field(pattern=r"^/confide/[a-z][a-z0-9-]*$", max_length=64)]
    type: Annotated[str, Field(pattern=r"^confide\.[a-z][a-z0-9]*\.[A-Z][A-Za-z0-9]*$")]
    specversion: Literal["1.0"] = SPECVERSION
    time: UtcDateTime
    subject: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]+$", max_length=128)]
    datacontenttype: Literal["application/json"] = DATA_CONTENT_TYPE
    dataschema: str
    schemaversion: Annotated[int, Field(ge=1)]
    correlationid: str
    causationid: str | None = None
    traceparent: str | None = None
    # The Kafka protocol binding's partitioning extension: SDKs set it from the
    # record key when they read a record. Confide keys records by subject, so it
    # is optional here and, when present, must equal the subject.
    partitionkey: str | None = None
    data: dict[str, Any]

    @field_validator("id")
    @classmethod
    def _id_is_uuid7(cls, value: UUID) -> UUID:
        if value.version != 7:
            raise ValueError("must be a UUIDv7")
        return value

    @field_validator("correlationid", "causationid")
    @classmethod
    def _is_uuid_text(cls, value: str | None) -> str | None:
        if value is not None and not _UUID_TEXT.match(value):
            raise ValueError("must be a UUID in canonical lowercase text form")
        return value

    @field_validator("traceparent")
    @classmethod
    def _is_w3c_traceparent(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if not _TRACEPARENT.match(value):
            raise ValueError("must be a W3C traceparent (version-traceid-parentid-flags)")
        version, trace_id, parent_id, _flags = value.split("-")
        if version == "ff" or set(trace_id) == {"0"} or set(parent_id) == {"0"}:
            raise ValueError("is a W3C traceparent with a forbidden value")
        return value

    @model_validator(mode="after")
    def _attributes_agree(self) -> "Envelope":
        if self.dataschema != dataschema_uri(self.type, self.schemaversion):
            raise ValueError("dataschema must be the URI of this type and schemaversion")
        if self.partitionkey is not None and self.partitionkey != self.subject:
            raise ValueError("partitionkey must equal subject")
        return self


_OPTIONAL_ATTRIBUTES = tuple(
    name
    for name, field in Envelope.model_fields.items()
    if not field.is_required() and field.default is None
)


def encode_envelope(envelope: Envelope) -> bytes:
    """Serialise an envelope as the Kafka record value: compact UTF-8 JSON.

    Absent optional attributes are omitted rather than written as null, as the
    CloudEvents JSON format expects.
    """
    absent = {name for name in _OPTIONAL_ATTRIBUTES if getattr(envelope, name) is None}
    # pydantic's own JSON (compact, UTF-8) in one step: a third cheaper than model_dump and
    # json.dumps, byte for byte the same (no event carries a float).
    return envelope.model_dump_json(exclude=absent).encode()


def decode_envelope(raw: bytes) -> Envelope:
    """Parse a Kafka record value into an envelope.

    Raises `MalformedEnvelope` for anything that is not a valid Confide event:
    bad UTF-8 or JSON, a missing or invalid attribute, an unknown attribute.
    The message lists the failing attributes but never their values.
    """
    try:
        return Envelope.model_validate_json(raw)
    except ValidationError as error:
        raise MalformedEnvelope(f"not a valid Confide CloudEvent: {describe(error)}") from None


def describe(error: ValidationError) -> str:
    """Summarise a validation error by location and rule, without the input values."""
    parts = []
    for detail in error.errors(include_url=False, include_input=False, include_context=False):
        location = ".".join(str(part) for part in detail["loc"]) or "(document)"
        parts.append(f"{location}: {detail['msg']}")
    return "; ".join(parts)
