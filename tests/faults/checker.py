"""The checker of the fault scenarios, in the manner of Jepsen's Kafka workload.

Every operation the load generator makes carries a unique value (an email, a consent id). The
checker records which ones the API acknowledged (2xx), then reads the effects, the topics from
offset 0 and the services' answers, and counts per scenario:

- lost: acknowledged, but its event never reached the topic or its effect never happened;
- applied twice: one operation with two effects (two events of different ids for one value);
- duplicated on the topic: one event (same id) more than once; allowed (at-least-once), counted;
- out of order: a subject whose events are on the topic in an order its history cannot have.

Lost and applied-twice must be 0 in every scenario.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from confide_events import decode_envelope
from confide_toolkit.fences import is_marker

from .load import Tally

VERDICTS = Path(__file__).resolve().parent / "verdicts"
"""Where each scenario's figures are kept until docs/reliability.md is written from them."""

SETTLE_SECONDS = 90
"""How long the effects of the acknowledged operations may take to show after the load."""


@dataclass(frozen=True)
class TopicEvent:
    """One event as a reader of the topic finds it."""

    partition: int
    offset: int
    event_id: str
    type: str
    subject: str
    data: dict[str, Any]


async def read_topic(bootstrap: str, topic: str) -> list[TopicEvent]:
    """Every event of `topic` from offset 0 to its end as of now, relay markers left out."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in await _partitions_of(bootstrap, topic)]
        assert partitions, f"no partitions found for {topic}"
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        events: list[TopicEvent] = []
        remaining = {tp for tp in partitions if ends[tp] > 0}
        while remaining:
            batches = await consumer.getmany(*remaining, timeout_ms=1000, max_records=5000)
            for tp, records in batches.items():
                for record in records:
                    if record.offset >= ends[tp] - 1:
                        remaining.discard(tp)
                    if record.offset >= ends[tp] or is_marker(record.headers):
                        continue
                    envelope = decode_envelope(record.value or b"")
                    events.append(
                        TopicEvent(
                            partition=tp.partition,
                            offset=record.offset,
                            event_id=str(envelope.id),
                            type=envelope.type.rsplit(".", 1)[-1],
                            subject=envelope.subject,
                            data=envelope.data,
                        )
                    )
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
        return events
    finally:
        await consumer.stop()


async def _partitions_of(bootstrap: str, topic: str) -> set[int]:
    # A consumer's metadata covers only what it subscribed to; a producer asks for the topic's.
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        return set(await producer.partitions_for(topic))
    finally:
        await producer.stop()


@dataclass
class Verdict:
    """One scenario's figures, as docs/reliability.md prints them."""

    scenario: str
    load: str
    faults: str
    attempted: int = 0
    acknowledged: int = 0
    lost: int = 0
    applied_twice: int = 0
    duplicates_on_topic: int = 0
    out_of_order: int = 0
    server_errors: int = 0
    unavailable_answers: int = 0
    examples: dict[str, list[str]] = field(default_factory=dict)

    def example(self, kind: str, value: str) -> None:
        listed = self.examples.setdefault(kind, [])
        if len(listed) < 5:
            listed.append(value)

    def line(self) -> str:
        return (
            f"{self.scenario}: acknowledged {self.acknowledged}/{self.attempted}, "
            f"lost {self.lost}, applied twice {self.applied_twice}, "
            f"duplicates on topic {self.duplicates_on_topic}, out of order {self.out_of_order}, "
            f"5xx {self.server_errors} (503 {self.unavailable_answers})"
        )


def count_effects(
    verdict: Verdict,
    acknowledged: Iterable[str],
    events: Iterable[TopicEvent],
    *,
    event_type: str,
    value_of: Callable[[TopicEvent], str],
) -> None:
    """Lost, applied twice and duplicated, for operations whose effect is one `event_type`
    event carrying the operation's value."""
    ids_by_value: dict[str, Counter[str]] = defaultdict(Counter)
    for event in events:
        if event.type == event_type:
            ids_by_value[value_of(event)][event.event_id] += 1
    for value in acknowledged:
        copies = ids_by_value.get(value)
        if not copies:
            verdict.lost += 1
            verdict.example("lost", value)
            continue
        if len(copies) > 1:
            verdict.applied_twice += 1
            verdict.example("applied twice", value)
        verdict.duplicates_on_topic += sum(n - 1 for n in copies.values())


def count_out_of_order(
    verdict: Verdict, events: Iterable[TopicEvent], subjects: set[str], order: list[str]
) -> None:
    """Subjects whose events of the types in `order` appear on the topic out of that order
    (one subject's events share a partition, so offsets order them)."""
    rank = {event_type: i for i, event_type in enumerate(order)}
    seen: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for event in events:
        if event.subject in subjects and event.type in rank:
            seen[event.subject].append((event.offset, rank[event.type]))
    for subject, placed in seen.items():
        ranks = [r for _, r in sorted(placed)]
        if ranks != sorted(ranks):
            verdict.out_of_order += 1
            verdict.example("out of order", subject)


def write_verdict(folder: Path, verdict: Verdict) -> None:
    """Keep a scenario's figures for docs/reliability.md (written at the session's end)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{verdict.scenario}.json").write_text(json.dumps(asdict(verdict), indent=2))


async def settled_topic(
    bootstrap: str, topic: str, done: Callable[[list[TopicEvent]], bool]
) -> list[TopicEvent]:
    """The topic once `done` holds of it (or as it is after SETTLE_SECONDS: the checker then
    counts what is missing as lost)."""
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        events = await read_topic(bootstrap, topic)
        if done(events) or time.monotonic() > deadline:
            return events
        await asyncio.sleep(1)


def tally_into(verdict: Verdict, tally: Tally) -> None:
    verdict.attempted = tally.attempted
    verdict.acknowledged = len(tally.acknowledged)
    verdict.server_errors = tally.server_errors
    verdict.unavailable_answers = tally.unavailable


def assert_nothing_lost_or_doubled(verdict: Verdict) -> None:
    print(verdict.line())
    assert verdict.acknowledged > 0, "the load generator got nothing acknowledged"
    assert verdict.lost == 0, verdict.examples
    assert verdict.applied_twice == 0, verdict.examples
    assert verdict.out_of_order == 0, verdict.examples
    assert verdict.server_errors == verdict.unavailable_answers, "a 5xx other than 503"
