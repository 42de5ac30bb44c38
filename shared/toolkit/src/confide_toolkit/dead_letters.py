"""Dead letters, listed and replayed by an operator once the cause is fixed.

A record a consumer could not apply after its retries goes to the topic's dead-letter topic
(`identity.events` → `identity.events.dlq`) with headers naming the consumer and the error
(`confide_toolkit.inbox`), and the partition flows on. Once the handler or the data is fixed:

    python -m confide_toolkit.dead_letters list consent     # what waits, and why
    python -m confide_toolkit.dead_letters replay consent   # apply it now

run with the service's own settings (its `CONFIDE_*` environment), beside the running service.
Replaying applies each dead letter of that service's consumers through the same handlers, in one
transaction with a position of its own on the dead-letter topic, so a record is replayed once
however often the command runs, and nothing is republished on the event topic (every other
consumer of it already applied the record). A record that fails again stops the replay of its
partition, its position left before it, with the error printed: fix, and run again.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from confide_events.topics import dead_letter_topic

from confide_toolkit.fences import FENCE_HEADER, SOURCE_HEADER
from confide_toolkit.inbox import (
    DEAD_LETTER_CONSUMER_HEADER,
    DEAD_LETTER_GROUP_HEADER,
    ConsumedRecord,
    InboxConsumer,
)
from confide_toolkit.service import Service


@dataclass
class DeadLetter:
    """A dead-lettered record waiting for its consumer, and why it is there."""

    topic: str
    partition: int
    offset: int
    original: str
    error: str


@dataclass
class Replay:
    """What one replay did: applied, not this service's, and the first failure per partition."""

    replayed: list[DeadLetter] = field(default_factory=list)
    failed: list[tuple[DeadLetter, str]] = field(default_factory=list)
    passed_over: int = 0


def _header(record: ConsumedRecord, name: str) -> str:
    return next((v.decode(errors="replace") for k, v in record.headers if k == name), "")


def _dead_letter(record: ConsumedRecord) -> DeadLetter:
    return DeadLetter(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        original=f"{_header(record, 'dlq-original-topic')}"
        f"[{_header(record, 'dlq-original-partition')}]@{_header(record, 'dlq-original-offset')}",
        error=f"{_header(record, 'dlq-error-type')}: {_header(record, 'dlq-error-message')}",
    )


def _as_replayed(record: ConsumedRecord) -> ConsumedRecord:
    """The record without its relay fence: the fence was judged on the event topic's partition
    before the record failed, and means nothing among the dead letters of every partition."""
    return ConsumedRecord(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=record.key,
        value=record.value,
        headers=tuple((k, v) for k, v in record.headers if k not in {SOURCE_HEADER, FENCE_HEADER}),
    )


async def _partitions(bootstrap: str, topic: str) -> list[TopicPartition]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        return [TopicPartition(topic, p) for p in sorted(await producer.partitions_for(topic))]
    finally:
        await producer.stop()


async def _waiting(
    bootstrap: str, replayer: InboxConsumer, topic: str
) -> list[list[ConsumedRecord]]:
    """Per partition, the dead letters after the replayer's position, up to the end as of now."""
    partitions = await _partitions(bootstrap, topic)
    positions = await replayer.positions.read([topic])
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await reader.start()
    try:
        reader.assign(partitions)
        ends = await reader.end_offsets(partitions)
        waiting: list[list[ConsumedRecord]] = []
        for tp in partitions:
            start = (
                positions[(topic, tp.partition)].next_offset
                if ((topic, tp.partition) in positions)
                else 0
            )
            records: list[ConsumedRecord] = []
            if start < ends[tp]:
                reader.seek(tp, start)
                while not records or records[-1].offset < ends[tp] - 1:
                    batch = await reader.getmany(tp, timeout_ms=2000)
                    fetched = [ConsumedRecord.of(r) for r in batch.get(tp, [])]
                    if not fetched:
                        break
                    records.extend(r for r in fetched if r.offset < ends[tp])
            waiting.append(records)
        return waiting
    finally:
        await reader.stop()


def _mine(consumer: InboxConsumer, record: ConsumedRecord) -> bool:
    """Whether a dead letter waits for this deployment: its consumer, in its group (several
    deployments of one service may share a broker: a staging beside a test)."""
    return (
        _header(record, DEAD_LETTER_CONSUMER_HEADER) == consumer.name
        and _header(record, DEAD_LETTER_GROUP_HEADER) == consumer.group
    )


async def list_dead_letters(service: Service) -> list[DeadLetter]:
    """Every dead letter of the service's consumers not replayed yet."""
    found: list[DeadLetter] = []
    for topic, consumer in service.consumers().items():
        replayer = consumer.for_dead_letters()
        for records in await _waiting(
            service.settings.kafka_bootstrap, replayer, dead_letter_topic(topic)
        ):
            found.extend(_dead_letter(r) for r in records if _mine(consumer, r))
    return found


async def replay_dead_letters(service: Service) -> Replay:
    """Apply every dead letter of the service's consumers once (see the module docstring)."""
    done = Replay()
    for topic, consumer in service.consumers().items():
        replayer = consumer.for_dead_letters()
        for records in await _waiting(
            service.settings.kafka_bootstrap, replayer, dead_letter_topic(topic)
        ):
            others: list[ConsumedRecord] = []  # other deployments' dead letters, passed over
            for record in records:
                if not _mine(consumer, record):
                    others.append(record)
                    continue
                await replayer.pass_over(others)
                done.passed_over += len(others)
                others = []
                try:
                    await replayer.replay(_as_replayed(record))
                except Exception as error:
                    done.failed.append((_dead_letter(record), f"{type(error).__name__}: {error}"))
                    break  # the rest of this partition waits behind it, in order
                done.replayed.append(_dead_letter(record))
            else:
                await replayer.pass_over(others)
                done.passed_over += len(others)
    return done


def _service_of(name: str) -> Service:
    """The named service as its application builds it, with its subscriptions, from its own
    settings (the environment)."""
    app_module = importlib.import_module(f"confide_{name}.app")
    app = app_module.create_app()
    service: Service = app.state.service
    return service


async def _run(command: str, name: str) -> int:
    service = _service_of(name)
    try:
        if command == "list":
            letters = await list_dead_letters(service)
            for letter in letters:
                print(
                    f"{letter.topic}[{letter.partition}]@{letter.offset} from {letter.original}: "
                    f"{letter.error}"
                )
            print(f"{len(letters)} dead letter(s) waiting for {name}")
            return 0
        replay = await replay_dead_letters(service)
        for letter in replay.replayed:
            print(
                f"replayed {letter.topic}[{letter.partition}]@{letter.offset} "
                f"(from {letter.original})"
            )
        for letter, error in replay.failed:
            print(f"FAILED {letter.topic}[{letter.partition}]@{letter.offset}: {error}")
        print(f"{len(replay.replayed)} replayed, {len(replay.failed)} failed again")
        return 1 if replay.failed else 0
    finally:
        await service.engine.dispose()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m confide_toolkit.dead_letters",
        description="List or replay a service's dead letters, with its own settings.",
    )
    parser.add_argument("command", choices=["list", "replay"])
    parser.add_argument("service", help="the service whose consumers failed: identity, consent...")
    args = parser.parse_args(argv)
    return asyncio.run(_run(args.command, args.service))


if __name__ == "__main__":
    sys.exit(main())
