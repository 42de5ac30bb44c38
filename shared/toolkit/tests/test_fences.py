"""The fence rule a consumer and a relay's scan share: a relay source's records count only if
fenced by its newest activation seen so far in the partition."""

from confide_toolkit.fences import (
    Admission,
    RelayFences,
    fenced_headers,
    is_marker,
    marker_headers,
)

CONTENT = [("content-type", b"application/cloudevents+json")]


def test_a_takeover_leaves_the_old_relays_late_records_stale() -> None:
    fences = RelayFences()
    assert fences.admit(marker_headers("a"), 10) is Admission.MARKER
    assert fences.admit(CONTENT + fenced_headers("a", 10), 11) is Admission.EVENT
    assert fences.admit(marker_headers("a"), 12) is Admission.MARKER  # the successor
    assert fences.admit(CONTENT + fenced_headers("a", 10), 13) is Admission.STALE
    assert fences.admit(CONTENT + fenced_headers("a", 12), 14) is Admission.EVENT
    assert fences.snapshot() == {"a": 12}


def test_sources_are_fenced_apart_and_unfenced_records_always_count() -> None:
    fences = RelayFences.of({"a": 50})
    # Another database's relay (a test, another environment) is not fenced by "a".
    assert fences.admit(CONTENT + fenced_headers("b", 3), 60) is Admission.EVENT
    assert fences.admit(CONTENT + fenced_headers("a", 40), 61) is Admission.STALE
    # Written by hand, or by a relay from before fences: nothing to judge it by.
    assert fences.admit(CONTENT, 62) is Admission.EVENT
    assert fences.snapshot() == {"a": 50, "b": 3}


def test_the_decision_depends_on_the_records_alone() -> None:
    """A consumer re-reading the partition from a restored position decides as the first time."""
    records = [
        (marker_headers("a"), 0),
        (fenced_headers("a", 0), 1),
        (marker_headers("a"), 2),
        (fenced_headers("a", 0), 3),
        (fenced_headers("a", 2), 4),
    ]
    first = RelayFences()
    decided = [first.admit(h, o) for h, o in records]
    restored = RelayFences()
    for headers, offset in records[:2]:
        restored.admit(headers, offset)
    assert [restored.admit(h, o) for h, o in records[2:]] == decided[2:]


def test_markers_are_told_apart_from_events() -> None:
    assert is_marker(marker_headers("a"))
    assert not is_marker(CONTENT + fenced_headers("a", 1))
    assert not is_marker(None)
