"""`IntegrationEvent`, the base of every event that crosses a service boundary."""

import json
from collections.abc import Mapping
from typing import Any, ClassVar, Self
from uuid import UUID

from pydantic import BaseModel, ConfigDict, ValidationError

from confide_events.envelope import describe
from confide_events.errors import MalformedEventData


class IntegrationEvent(BaseModel):
    """A fact one service publishes for the others: immutable, strict, closed.

    Subclasses set three class attributes: `event_type` (the full CloudEvents
    type, `confide.<producer>.<EventName>`), `schema_version` and `producer`
    (the name of the service that emits it). Fields hold pseudonymous ids, codes,
    times, counts and amounts only, never personal data.

    Strict mode means Python code must pass real `UUID`, `datetime` and `tuple`
    values; events coming off the wire are read with `from_data`, which validates
    the JSON form (where a UUID or a time is a string) and stays strict otherwise.
    """

    model_config = ConfigDict(frozen=True, strict=True, extra="forbid")

    event_type: ClassVar[str]
    schema_version: ClassVar[int]
    producer: ClassVar[str]

    def subject(self) -> str:
        """The pseudonymous id this event is about: the CloudEvents subject and partition key.

        By default the `subject_id` field; events that are not about a person
        (such as a published signing key) override it.
        """
        subject_id = getattr(self, "subject_id", None)
        if not isinstance(subject_id, UUID):
            raise NotImplementedError(f"{type(self).__name__} must define subject()")
        return str(subject_id)

    def to_data(self) -> dict[str, Any]:
        """The event's fields in JSON form, as they go into the envelope's `data`."""
        return self.model_dump(mode="json")

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> Self:
        """Validate an event from the JSON form of its fields (an envelope's `data`).

        Raises `MalformedEventData` naming the failing fields (never their values).
        """
        try:
            # Validating the JSON text, not the dict, is what lets strict mode
            # accept UUIDs and times as strings while refusing "12" for an int.
            return cls.model_validate_json(json.dumps(dict(data)))
        except (ValidationError, TypeError) as error:
            detail = describe(error) if isinstance(error, ValidationError) else "not JSON data"
            raise MalformedEventData(f"invalid {cls.__name__} data: {detail}") from None
