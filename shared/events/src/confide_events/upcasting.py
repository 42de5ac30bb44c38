"""Upcasting: reading data written under an older schema version as the latest.

An upcaster is a pure function that turns the JSON data of one version of an
event type into the data of the next version (N -> N+1). Reading version 1 of an
event whose latest version is 3 applies the 1->2 then the 2->3 upcaster. Events
stored in Kafka and in event stores are never rewritten; they are upcast each
time they are read.
"""

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from confide_events.errors import MissingUpcaster

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
"""Turns the data of version N of an event type into the data of version N+1."""

UpcasterKey = tuple[str, int]
"""(event type, the version the upcaster reads)."""


class Upcasters:
    """The upcasters of every event type, keyed by (type, version they upgrade from)."""

    def __init__(self, upcasters: Mapping[UpcasterKey, Upcaster]) -> None:
        self._upcasters = MappingProxyType(dict(upcasters))

    def __contains__(self, key: object) -> bool:
        return key in self._upcasters

    def upcast(
        self, event_type: str, data: dict[str, Any], *, from_version: int, to_version: int
    ) -> dict[str, Any]:
        """Chain upcasters to turn `data` from `from_version` into `to_version`.

        Raises `MissingUpcaster` if a step of the chain is missing.
        """
        if from_version > to_version:
            raise ValueError("cannot downcast event data")
        for version in range(from_version, to_version):
            step = self._upcasters.get((event_type, version))
            if step is None:
                raise MissingUpcaster(f"no upcaster for {event_type} v{version} -> v{version + 1}")
            # Each step gets its own copy so an upcaster cannot alter the caller's data.
            data = step(dict(data))
        return data
