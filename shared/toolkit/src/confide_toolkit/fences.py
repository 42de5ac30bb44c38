"""Relay fences: how a consumer tells a relay's duplicate from a new event without keeping a row
per event it handled.

A relay publishes an outbox row and deletes it once Kafka acknowledged it. If the relay dies
between the two, or loses its database session while its producer still sends, the row is
still pending and its successor publishes it again. Consumers used to recognise that copy by
an inbox row per handled event; instead, every relay activation fences each partition it
publishes to:

1. it appends a marker record to the partition, headed with the relay's source (a uuid kept in
   its database, so it survives a restore) and flagged as a marker: the marker's offset is
   the activation's *fence* in that partition;
2. it reads the partition from where its previous activation's fence (or a later checkpoint)
   was up to the new marker, and deletes from its outbox every pending row it finds there,
   already published;
3. it publishes the rest, each record headed with its source and its fence.

A consumer applies a record of a source only if its fence is not below the highest fence of
that source it has seen in that partition (`RelayFences.admit`): whatever a superseded relay
appends after its successor's marker is ignored, and whatever it appended before the marker
its successor found and did not publish again. The rule is a function of the partition's
records alone, so a consumer and a relay's scan decide alike, and a consumer that re-reads the
partition from a restored position decides again exactly as it did the first time.

Records without a relay source (written by hand, or by a relay before fences) are applied as
they come."""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

SOURCE_HEADER = "confide-relay-source"
"""The relay source (a uuid in the producing database) that published the record."""
FENCE_HEADER = "confide-relay-fence"
"""The offset of its relay activation's marker in this partition."""
MARKER_HEADER = "confide-relay-marker"
"""Present (value "1") on a relay activation's marker record, which carries no event."""


class Admission(enum.Enum):
    EVENT = "event"
    """An event to apply: fenced by the newest activation of its source, or unfenced."""
    STALE = "stale"
    """Published by a superseded relay activation: its successor publishes it (or did)."""
    MARKER = "marker"
    """A relay activation's marker: no event."""


@dataclass
class RelayFences:
    """The highest fence seen per relay source in one partition, up to some offset."""

    highest: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, stored: Mapping[str, int] | None) -> RelayFences:
        return cls(dict(stored or {}))

    def admit(self, headers: Iterable[tuple[str, bytes]], offset: int) -> Admission:
        """Decide about the record at `offset` with these headers, and remember its fence."""
        source = fence = None
        marker = False
        for name, value in headers:
            if name == SOURCE_HEADER:
                source = value.decode()
            elif name == FENCE_HEADER:
                fence = int(value)
            elif name == MARKER_HEADER:
                marker = True
        if source is None:
            return Admission.EVENT
        highest = self.highest.get(source, -1)
        if marker:
            self.highest[source] = max(highest, offset)
            return Admission.MARKER
        if fence is None:
            return Admission.EVENT  # not from a relay of ours: never drop what we cannot judge
        if fence < highest:
            return Admission.STALE
        self.highest[source] = fence
        return Admission.EVENT

    def snapshot(self) -> dict[str, int]:
        return dict(self.highest)


def is_marker(headers: Iterable[tuple[str, bytes]] | None) -> bool:
    """Whether a record is a relay activation's marker: a reader of a topic skips it (it is no
    event)."""
    return any(name == MARKER_HEADER for name, _ in headers or ())


def source_of(headers: Iterable[tuple[str, bytes]] | None) -> str | None:
    """The relay source that published a record; None for a record not published by a relay."""
    for name, value in headers or ():
        if name == SOURCE_HEADER:
            return value.decode()
    return None


def marker_headers(source: str) -> list[tuple[str, bytes]]:
    return [(SOURCE_HEADER, source.encode()), (MARKER_HEADER, b"1")]


def fenced_headers(source: str, fence: int) -> list[tuple[str, bytes]]:
    return [(SOURCE_HEADER, source.encode()), (FENCE_HEADER, str(fence).encode())]
