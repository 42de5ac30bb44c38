"""Domain events: a service's private facts, small and immutable, named in the past tense. They
may hold ciphertext, never plaintext personal data; integration events are what crosses the
boundary, through the outbox.

Domain events are versioned as integration events are: each class names its `event_type` (the
name the event store records, which outlives a rename of the class) and its `schema_version`,
stored beside it. When a class changes shape, its `schema_version` goes up by one and an upcaster
turns the data of the version before into the new shape. `DomainEventTypes` is an aggregate's
registry of them: it refuses to write an unregistered type and reads stored data as the current
version of its type."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

from confide_events.upcasting import Upcaster, UpcasterKey, Upcasters
from pydantic import BaseModel, ConfigDict


class DomainEvent(BaseModel):
    """Base of a service's domain events: small, immutable facts named in the past tense.

    Every concrete event declares `event_type` and `schema_version` (the store refuses to
    register one that does not)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    stream_type: ClassVar[str] = ""
    event_type: ClassVar[str] = ""
    """The name the store records the event under. It stays when the class is renamed; events
    recorded before types were named keep the class name they were stored under."""
    schema_version: ClassVar[int] = 0
    """The version of the event's shape, from 1; up by one (with an upcaster) at each change."""


DomainUpcasters = Mapping[UpcasterKey, Upcaster]
"""Upcasters of domain events by (event_type, the schema version they read): each turns the
data of that version into the data of the next."""


class UnknownDomainEvent(Exception):
    """A stored event whose type or version this code does not know (written by newer code, or
    a type that was removed)."""


class DomainEventTypes:
    """The domain event types of one event store, by the name each is recorded under."""

    def __init__(
        self, event_types: Iterable[type[DomainEvent]], upcasters: DomainUpcasters | None = None
    ) -> None:
        """Raises TypeError when an event type lacks its name or version, two types share a
        name, or an upcaster from an older version of a type is missing."""
        self._types: dict[str, type[DomainEvent]] = {}
        self._upcasters = Upcasters(upcasters or {})
        for event_class in event_types:
            name, version = event_class.event_type, event_class.schema_version
            if not name or version < 1:
                raise TypeError(
                    f"{event_class.__name__} must declare event_type and schema_version"
                )
            if name in self._types:
                raise TypeError(f"two domain event types are named {name}")
            for older in range(1, version):
                if (name, older) not in self._upcasters:
                    raise TypeError(f"no upcaster for {name} v{older} -> v{older + 1}")
            self._types[name] = event_class

    def check(self, event: DomainEvent) -> None:
        """Raises TypeError for an event whose type is not registered here."""
        if self._types.get(type(event).event_type) is not type(event):
            raise TypeError(f"{type(event).__name__} is not a registered domain event type")

    def read(self, name: str, version: int, data: dict[str, Any]) -> DomainEvent:
        """The stored data as the current version of its type, upcast when it is older; raises
        `UnknownDomainEvent` for a type or version this code does not know."""
        event_class = self._types.get(name)
        if event_class is None or version > event_class.schema_version:
            raise UnknownDomainEvent(f"stored event {name} v{version} is not a known type")
        data = self._upcasters.upcast(
            name, data, from_version=version, to_version=event_class.schema_version
        )
        return event_class.model_validate(data)
