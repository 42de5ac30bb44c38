"""Scenario 1, the event pipeline: integration events from a service's outbox through the relay,
Kafka and an idempotent consumer keeping its positions, beside raw aiokafka on the same broker.

Each side runs as two processes, as in production, where the producing service and the
consuming service are separate processes:

- the *producing service* commits service-like transactions (state-change rows and their
  `UserRegistered` events through `Outbox.put` or `Outbox.put_many`, inside a server span so
  that the envelope carries a `traceparent` as it does behind an HTTP request) and runs
  `OutboxRelay` as `Service` runs it (batch 500, notified only while it waits, polling while
  writers it was busy for are in flight, fallback poll 1 s), against its own database;
- the *consuming service* subscribes exactly as every service does
  (`subscriptions.subscribe_batches` with `kafka_batch_handler(InboxConsumer)`), against its
  own database; its effect is one projection row per event, written by an
  `inbox.BatchProjection` (one statement per run of events).

Latency is commit-to-consumed: from the client's clock right after COMMIT returned to right after
`InboxConsumer.consume_batch` returned (the consumer's transaction committed). Both processes read
CLOCK_MONOTONIC, which is system-wide on Linux. Every event has its own subject, so the subject
id (the record key) identifies it on both sides.

The raw baseline sends the same payload bytes (the same envelope, headers and key) with
`relay.idempotent_producer` (acks=all) from one process and reads them in a consumer group (auto
commit) in another: latency from the call to `send` to the record in hand."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.sharedctypes import Synchronized
from typing import Any

from bench import handwritten
from bench.commit_rates import (
    EVERY_COMMIT,
    NO_TRIGGER,
    WAITING_RELAY,
    CommitRates,
    measure_commit_rates,
)
from bench.figures import Figure, ScenarioResult, percentile
from bench.pipeline_sides import (
    WARM_UP_EVENTS,
    PipelineConfig,
    WriteShape,
    light_load,
    measurement_commands,
    payload,
    probe_commits,
    quiet_logs,
    start_profiler,
    stop_profiler,
)
from bench.stack import Stack, scratch_database, scratch_topics

logger = logging.getLogger(__name__)

SPAWN = multiprocessing.get_context("spawn")


# -- the producing service -----------------------------------------------------------------


def _producing_service(
    database_url: str,
    bootstrap: str,
    topic: str,
    config: PipelineConfig,
    applied_count: Synchronized,  # type: ignore[type-arg]
    pipe: Connection,
) -> None:
    quiet_logs()
    asyncio.run(_produce(database_url, bootstrap, topic, config, applied_count, pipe))


async def _produce(
    database_url: str,
    bootstrap: str,
    topic: str,
    config: PipelineConfig,
    applied_count: Synchronized,  # type: ignore[type-arg]
    pipe: Connection,
) -> None:
    from confide_events.identity import UserRegistered
    from confide_toolkit.clock import SystemClock
    from confide_toolkit.database import create_engine
    from confide_toolkit.heap import freeze_what_start_built
    from confide_toolkit.outbox import Outbox
    from confide_toolkit.relay import OutboxRelay
    from confide_toolkit.telemetry import configure_telemetry
    from opentelemetry import trace
    from sqlalchemy import text

    configure_telemetry("bench-producer", "none")
    tracer = trace.get_tracer("bench")
    clock = SystemClock()
    engine = create_engine(database_url)
    outbox = Outbox("identity", clock, topic=topic)
    relay = OutboxRelay(
        database_url,
        bootstrap,
        batch_size=config.relay_batch_size,
        poll_interval=config.relay_poll_interval,
    )
    stop = asyncio.Event()
    relay_task = asyncio.create_task(relay.run(stop))
    committed: dict[bytes, float] = {}
    sizes: list[int] = []

    register = text("INSERT INTO accounts (subject_id, registered_at) VALUES (:s, :t)")

    async def commit(count: int) -> None:
        """One service-like transaction: `count` state changes, each with its event (one
        event: `Outbox.put`; several: one statement for the rows and `Outbox.put_many`, as
        the hand-written baseline batches them too)."""
        subjects = [uuid.uuid4() for _ in range(count)]
        now = clock.now()
        events = [UserRegistered(subject_id=s, role="client", registered_at=now) for s in subjects]
        with tracer.start_as_current_span("POST /accounts", kind=trace.SpanKind.SERVER):
            async with engine.begin() as conn:
                if count == 1:
                    await conn.execute(register, {"s": subjects[0], "t": now})
                    await outbox.put(conn, events[0])
                else:
                    await conn.execute(register, [{"s": s, "t": now} for s in subjects])
                    await outbox.put_many(conn, events)
        done = time.monotonic()
        for subject in subjects:
            committed[subject.bytes] = done

    try:
        async with asyncio.timeout(30):
            while not relay.is_active:
                await asyncio.sleep(0.05)
        freeze_what_start_built()  # as `Service.start` ends
        await _warm_up(engine, commit)
        committed.clear()
        pipe.send(("ready",))
        while True:
            command = await asyncio.to_thread(pipe.recv)
            if command[0] == "throughput":
                shape: WriteShape = command[1]
                profiler = start_profiler(config) if command[2] else None
                cpu = time.process_time()
                before = len(committed)
                applied_before = applied_count.value
                remaining = [shape.events]
                deadline = time.monotonic() + config.write_seconds

                async def writer(
                    shape: WriteShape,
                    before: int,
                    applied_before: int,
                    remaining: list[int],
                    deadline: float,
                ) -> None:
                    while remaining[0] > 0 and time.monotonic() < deadline:
                        in_flight = len(committed) - before - (applied_count.value - applied_before)
                        if in_flight >= config.max_in_flight:
                            await asyncio.sleep(0.005)
                            continue
                        count = min(shape.per_transaction, remaining[0])
                        remaining[0] -= count
                        await commit(count)

                await asyncio.gather(
                    *(
                        writer(shape, before, applied_before, remaining, deadline)
                        for _ in range(shape.writers)
                    )
                )
                pipe.send(("written", len(committed) - before))
                # The relay keeps publishing after the last commit: the profile and CPU time
                # stop when the parent says the consumer applied everything.
                await asyncio.to_thread(pipe.poll, None)
                stop_profiler(profiler, config, "producing-service")
                pipe.send(("cpu", time.process_time() - cpu))
            elif command[0] == "light":
                before = len(committed)
                await light_load(config, lambda: commit(1))
                pipe.send(("written", len(committed) - before))
            elif command[0] == "continue":
                pass
            elif command[0] == "stop":
                break
        sizes = await _envelope_sizes(bootstrap, topic)
        pipe.send(("result", committed, sizes, relay.published))
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(relay_task, 20)
        await engine.dispose()


async def _warm_up(engine: Any, commit: Callable[[int], Any]) -> None:
    """Open the pool's connections and prepare the statements' plans before measuring; the
    warm-up events flow through the pipeline too (and are counted out of the figures)."""
    from sqlalchemy import text

    async with engine.begin() as conn:
        await conn.execute(
            text(
                "CREATE TABLE IF NOT EXISTS accounts ("
                " subject_id uuid PRIMARY KEY, registered_at timestamptz NOT NULL)"
            )
        )
    await asyncio.gather(*(commit(1) for _ in range(WARM_UP_EVENTS)))


async def _envelope_sizes(bootstrap: str, topic: str) -> list[int]:
    """The sizes of a sample of the record values on the topic, as published."""
    from aiokafka import AIOKafkaConsumer
    from confide_toolkit.fences import is_marker

    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    try:
        batches = await consumer.getmany(timeout_ms=3000, max_records=200)
        return [
            len(r.value)
            for records in batches.values()
            for r in records
            if not is_marker(r.headers)
        ]
    finally:
        await consumer.stop()


# -- the consuming service -----------------------------------------------------------------


def _consuming_service(
    database_url: str,
    bootstrap: str,
    topic: str,
    group: str,
    config: PipelineConfig,
    applied_count: Synchronized,  # type: ignore[type-arg]
    pipe: Connection,
) -> None:
    quiet_logs()
    asyncio.run(_consume(database_url, bootstrap, topic, group, config, applied_count, pipe))


async def _consume(
    database_url: str,
    bootstrap: str,
    topic: str,
    group: str,
    config: PipelineConfig,
    applied_count: Synchronized,  # type: ignore[type-arg]
    pipe: Connection,
) -> None:
    from confide_events.identity import UserRegistered
    from confide_toolkit.clock import SystemClock
    from confide_toolkit.database import create_engine, toolkit_metadata
    from confide_toolkit.heap import freeze_what_start_built
    from confide_toolkit.inbox import BatchProjection, InboxConsumer, Outcome
    from confide_toolkit.outbox import Outbox
    from confide_toolkit.relay import idempotent_producer
    from confide_toolkit.subscriptions import (
        kafka_record_handler,
        subscribe_batches,
        whole_message,
    )
    from confide_toolkit.telemetry import configure_telemetry
    from faststream.kafka import KafkaBroker
    from faststream.middlewares import AckPolicy
    from sqlalchemy import text

    from bench.prototypes import deferred_commit_handler

    configure_telemetry("bench-consumer", "none")
    engine = create_engine(database_url)
    async with engine.begin() as conn:
        await conn.run_sync(toolkit_metadata.create_all)
        await conn.execute(
            text(
                "CREATE TABLE registrations ("
                " subject_id uuid PRIMARY KEY, role text NOT NULL,"
                " registered_at timestamptz NOT NULL)"
            )
        )
    applied: list[tuple[bytes, float]] = []

    project = text(
        "INSERT INTO registrations (subject_id, role, registered_at) "
        "VALUES (:s, :r, :t) ON CONFLICT DO NOTHING"
    )

    async def project_registrations(events: Sequence[UserRegistered], conn: Any) -> None:
        # A read model, written as services write theirs: a `BatchProjection`, one statement
        # for each run of events.
        await conn.execute(
            project,
            [{"s": e.subject_id, "r": e.role, "t": e.registered_at} for e in events],
        )
        handled.extend(event.subject_id.bytes for event in events)

    # Subjects whose handler ran in the transaction under way; stamped once it committed.
    handled: list[bytes] = []

    def stamp() -> None:
        now = time.monotonic()
        applied.extend((subject, now) for subject in handled)
        with applied_count.get_lock():
            applied_count.value += len(handled)
        handled.clear()

    class TimedInboxConsumer(InboxConsumer):
        """The toolkit's consumer, noting when each event's transaction committed:
        right after `consume` returned APPLIED, or `consume_batch` returned."""

        async def consume(self, raw: Any) -> Outcome:
            handled.clear()
            outcome = await super().consume(raw)
            if outcome is Outcome.APPLIED:
                stamp()
            handled.clear()
            return outcome

        async def consume_batch(self, records: Any) -> list[Outcome]:
            handled.clear()
            outcomes = await super().consume_batch(records)
            stamp()
            return outcomes

    dead_letters = idempotent_producer(bootstrap)
    broker = KafkaBroker(
        bootstrap,
        graceful_timeout=15.0,
        logger=logging.getLogger("bench.consumer.broker"),
        log_level=logging.DEBUG,
    )
    consumer = TimedInboxConsumer(
        name="bench-consumer",
        engine=engine,
        outbox=Outbox("consent", SystemClock(), topic=f"{topic}.unused"),
        handlers={UserRegistered: BatchProjection(project_registrations)},
        dead_letters=dead_letters,
    )
    # Exactly as `Service._register_subscribers` subscribes (batches), unless the earlier
    # per-record mode or a prototype is asked for.
    if config.consumer == "toolkit":
        subscriber = subscribe_batches(broker, [topic], group, consumer)
    else:
        subscriber = broker.subscriber(
            topic,
            group_id=group,
            auto_offset_reset="earliest",
            ack_policy=AckPolicy.MANUAL,
            decoder=whole_message,
        )
        if config.consumer == "deferred-commit":
            subscriber(deferred_commit_handler(consumer))
        else:
            subscriber(kafka_record_handler(consumer))
    await dead_letters.start()
    await broker.start()
    try:
        async with asyncio.timeout(60):
            while not (subscriber.consumer and subscriber.consumer.assignment()):
                await asyncio.sleep(0.05)
        freeze_what_start_built()  # as `Service.start` ends
        pipe.send(("ready",))
        await measurement_commands(pipe, config, "consuming-service")
        pipe.send(("result", applied))
    finally:
        await broker.stop()
        await dead_letters.stop()
        await engine.dispose()


# -- the raw baseline ----------------------------------------------------------------------


def _raw_producer(
    bootstrap: str,
    topic: str,
    config: PipelineConfig,
    applied_count: Synchronized,  # type: ignore[type-arg]
    pipe: Connection,
) -> None:
    del applied_count  # raw Kafka keeps up; no flow control needed
    quiet_logs()
    asyncio.run(_raw_produce(bootstrap, topic, config, pipe))


async def _raw_produce(
    bootstrap: str, topic: str, config: PipelineConfig, pipe: Connection
) -> None:
    from confide_toolkit.relay import idempotent_producer

    producer = idempotent_producer(bootstrap)
    await producer.start()
    sent: dict[bytes, float] = {}
    try:
        # Warm-up: metadata, producer id, connections.
        for _ in range(WARM_UP_EVENTS):
            subject = uuid.uuid4()
            value, headers = payload(subject)
            await (
                await producer.send(topic, value=value, key=str(subject).encode(), headers=headers)
            )
        pipe.send(("ready",))
        while True:
            command = await asyncio.to_thread(pipe.recv)
            if command[0] == "throughput":
                events = command[1].events
                subjects = [uuid.uuid4() for _ in range(events)]
                payloads = [payload(s) for s in subjects]
                cpu = time.process_time()
                window: list[Any] = []
                for subject, (value, headers) in zip(subjects, payloads, strict=True):
                    sent[subject.bytes] = time.monotonic()
                    window.append(
                        await producer.send(
                            topic, value=value, key=str(subject).encode(), headers=headers
                        )
                    )
                    if len(window) >= 1000:
                        await asyncio.gather(*window)
                        window.clear()
                await asyncio.gather(*window)
                pipe.send(("written", events))
                await asyncio.to_thread(pipe.poll, None)
                pipe.send(("cpu", time.process_time() - cpu))
            elif command[0] == "light":
                total = round(config.light_rate * config.light_seconds)
                subjects = [uuid.uuid4() for _ in range(total)]
                payloads = [payload(s) for s in subjects]
                started = time.monotonic()
                for i, (subject, (value, headers)) in enumerate(
                    zip(subjects, payloads, strict=True)
                ):
                    delay = started + i / config.light_rate - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    sent[subject.bytes] = time.monotonic()
                    await (
                        await producer.send(
                            topic, value=value, key=str(subject).encode(), headers=headers
                        )
                    )
                pipe.send(("written", total))
            elif command[0] == "continue":
                pass
            elif command[0] == "stop":
                break
        pipe.send(("result", sent, [], 0))
    finally:
        await producer.stop()


def _raw_consumer(
    bootstrap: str,
    topic: str,
    group: str,
    config: PipelineConfig,
    applied_count: Synchronized,  # type: ignore[type-arg]
    pipe: Connection,
) -> None:
    quiet_logs()
    asyncio.run(_raw_consume(bootstrap, topic, group, config, applied_count, pipe))


async def _raw_consume(
    bootstrap: str,
    topic: str,
    group: str,
    config: PipelineConfig,
    applied_count: Synchronized,  # type: ignore[type-arg]
    pipe: Connection,
) -> None:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=True,
    )
    await consumer.start()
    received: list[tuple[bytes, float]] = []
    stopping = asyncio.Event()

    async def loop() -> None:
        while not stopping.is_set():
            batches = await consumer.getmany(timeout_ms=100)
            now = time.monotonic()
            for records in batches.values():
                for record in records:
                    received.append((uuid.UUID(record.key.decode()).bytes, now))
            if batches:
                count = sum(len(r) for r in batches.values())
                with applied_count.get_lock():
                    applied_count.value += count

    task = asyncio.create_task(loop())
    try:
        async with asyncio.timeout(60):
            while not consumer.assignment():
                await asyncio.sleep(0.05)
        pipe.send(("ready",))
        await measurement_commands(pipe, config, None)
        stopping.set()
        await task
        pipe.send(("result", received))
    finally:
        stopping.set()
        await consumer.stop()


# -- orchestration -------------------------------------------------------------------------


@dataclass
class PhaseTimes:
    """Per event: when it was committed (or sent) and when it was applied (or received)."""

    committed: dict[bytes, float]
    applied: dict[bytes, float]

    def latencies_ms(self, subjects: list[bytes]) -> list[float]:
        return [(self.applied[s] - self.committed[s]) * 1000 for s in subjects if s in self.applied]

    def rate(self, subjects: list[bytes]) -> float:
        first = min(self.committed[s] for s in subjects)
        last = max(self.applied[s] for s in subjects)
        return len(subjects) / (last - first)


@dataclass
class Throughput:
    """One throughput phase of one side."""

    events: int
    rate: float
    latency_ms: list[float]
    producer_cpu: float
    consumer_cpu: float
    row_writes: dict[str, dict[str, int]] = field(default_factory=dict)
    """Per role ("producer", "consumer"): rows inserted, updated or deleted per table of that
    side's database during the phase (empty for the raw side, which has none)."""

    def cpu_per_thousand(self, side: str) -> float:
        cpu = self.producer_cpu if side == "producer" else self.consumer_cpu
        return cpu / self.events * 1000

    def row_writes_per_event(self, side: str) -> float | None:
        tables = self.row_writes.get(side)
        return None if tables is None else sum(tables.values()) / self.events


@dataclass
class SideResult:
    batched: Throughput
    requests: Throughput
    light_latency_ms: list[float]
    light_events: int
    light_commit_ms: list[float]
    """`pipeline_sides.probe_commits` beside the light-load phase, in the consuming side's
    database (none for raw Kafka)."""
    envelope_sizes: list[int]


STATS_SETTLE_SECONDS = 11.0
"""How long a phase's table statistics may take to show: a PostgreSQL 15 backend that went idle
less than a second after its last report reports the rest up to 10 s later."""


async def _table_writes(database_url: str) -> dict[str, int]:
    """Rows inserted, updated and deleted so far, per table of the database (its statistics)."""
    import psycopg
    from confide_toolkit.database import libpq_url

    async with await psycopg.AsyncConnection.connect(libpq_url(database_url)) as conn:
        cursor = await conn.execute(
            "SELECT relname, n_tup_ins + n_tup_upd + n_tup_del FROM pg_stat_user_tables"
        )
        return {name: int(count) for name, count in await cursor.fetchall()}


async def _settled_writes(databases: dict[str, str]) -> dict[str, dict[str, int]]:
    await asyncio.sleep(STATS_SETTLE_SECONDS)
    return {role: await _table_writes(url) for role, url in databases.items()}


def _difference(
    after: dict[str, dict[str, int]], before: dict[str, dict[str, int]]
) -> dict[str, dict[str, int]]:
    return {
        role: {
            table: count - before[role].get(table, 0)
            for table, count in tables.items()
            if count != before[role].get(table, 0)
        }
        for role, tables in after.items()
    }


async def _run_side(
    name: str,
    producer_target: Callable[..., None],
    producer_args: tuple[Any, ...],
    consumer_target: Callable[..., None],
    consumer_args: tuple[Any, ...],
    config: PipelineConfig,
    databases: dict[str, str] | None = None,
) -> SideResult:
    """Run one side's phases; with `databases` (role → URL), also count each throughput
    phase's row writes in each database."""
    databases = databases or {}
    applied_count = SPAWN.Value("q", 0)
    consumer_pipe, consumer_end = SPAWN.Pipe()
    producer_pipe, producer_end = SPAWN.Pipe()
    consumer = SPAWN.Process(
        target=consumer_target,
        args=(*consumer_args, config, applied_count, consumer_end),
        name=f"{name}-consumer",
    )
    producer = SPAWN.Process(
        target=producer_target,
        args=(*producer_args, config, applied_count, producer_end),
        name=f"{name}-producer",
    )
    consumer.start()
    producer.start()
    # Events written, producer CPU, consumer CPU, row writes per role and table.
    phases: list[tuple[int, float, float, dict[str, dict[str, int]]]] = []
    try:
        await _expect(consumer_pipe, "ready", 90)
        await _expect(producer_pipe, "ready", 90)
        expected = WARM_UP_EVENTS
        await _wait_applied(applied_count, expected, config.phase_timeout)

        stop_probe = asyncio.Event()
        probe = (
            asyncio.create_task(probe_commits(databases["consumer"], stop_probe))
            if databases
            else None
        )
        producer_pipe.send(("light",))
        light = (await _expect(producer_pipe, "written", config.phase_timeout))[1]
        expected += light
        await _wait_applied(applied_count, expected, config.phase_timeout)
        stop_probe.set()
        light_commit_ms = await probe if probe else []
        logger.info("%s: light-load phase done (%d events)", name, light)

        writes_before = await _settled_writes(databases) if databases else {}
        for shape, profile in ((config.batched, True), (config.requests, False)):
            consumer_pipe.send(("measure", profile))
            producer_pipe.send(("throughput", shape, profile))
            written = (await _expect(producer_pipe, "written", config.phase_timeout))[1]
            expected += written
            await _wait_applied(applied_count, expected, config.phase_timeout)
            producer_pipe.send(("continue",))
            consumer_pipe.send(("measured",))
            producer_cpu = (await _expect(producer_pipe, "cpu", 60))[1]
            consumer_cpu = (await _expect(consumer_pipe, "cpu", 60))[1]
            writes: dict[str, dict[str, int]] = {}
            if databases:
                writes_after = await _settled_writes(databases)
                writes, writes_before = _difference(writes_after, writes_before), writes_after
            phases.append((written, producer_cpu, consumer_cpu, writes))
            logger.info(
                "%s: throughput phase done (%d events, %d per transaction)",
                name,
                written,
                shape.per_transaction,
            )

        producer_pipe.send(("stop",))
        _, committed, sizes, _published = await _expect(producer_pipe, "result", 120)
        consumer_pipe.send(("stop",))
        _, applied_pairs = await _expect(consumer_pipe, "result", 120)
    finally:
        for process in (producer, consumer):
            process.join(timeout=30)
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)

    times = PhaseTimes(committed, dict(applied_pairs))
    order = list(committed)
    missing = [s for s in order if s not in times.applied]
    if missing:
        raise RuntimeError(f"{name}: {len(missing)} events committed but never applied")
    # `committed` keeps insertion order: the light phase, then each throughput phase.
    light_subjects, start, throughputs = order[:light], light, []
    for written, producer_cpu, consumer_cpu, writes in phases:
        subjects = order[start : start + written]
        start += written
        throughputs.append(
            Throughput(
                written,
                times.rate(subjects),
                times.latencies_ms(subjects),
                producer_cpu,
                consumer_cpu,
                writes,
            )
        )
    return SideResult(
        batched=throughputs[0],
        requests=throughputs[1],
        light_latency_ms=times.latencies_ms(light_subjects),
        light_events=light,
        light_commit_ms=light_commit_ms,
        envelope_sizes=sizes,
    )


async def _expect(pipe: Connection, kind: str, timeout: float) -> tuple[Any, ...]:
    ready = await asyncio.to_thread(pipe.poll, timeout)
    if not ready:
        raise TimeoutError(f"no {kind!r} from a benchmark process within {timeout:.0f} s")
    message = pipe.recv()
    if message[0] != kind:
        raise RuntimeError(f"expected {kind!r}, got {message[0]!r}")
    return tuple(message)


async def _wait_applied(counter: Synchronized, target: int, timeout: float) -> None:  # type: ignore[type-arg]
    deadline = time.monotonic() + timeout
    while counter.value < target:
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"only {counter.value} of {target} events arrived in {timeout:.0f} s"
            )
        await asyncio.sleep(0.01)


async def run_pipeline(stack: Stack, config: PipelineConfig) -> ScenarioResult:
    labels = ["raw", "handwritten", "handsame", "pipeline"]
    async with scratch_topics(stack, labels, config.partitions) as (
        raw_topic,
        hand_topic,
        same_topic,
        topic,
    ):
        run = uuid.uuid4().hex[:8]
        raw = await _run_side(
            "raw",
            _raw_producer,
            (stack.kafka_bootstrap, raw_topic),
            _raw_consumer,
            (stack.kafka_bootstrap, raw_topic, f"bench-raw-{run}"),
            config,
        )
        hands = {}
        for design, hand_topic_of_design in (
            (handwritten.INBOX, hand_topic),
            (handwritten.POSITIONS, same_topic),
        ):
            with (
                scratch_database(stack, f"hand{design}producer") as producer_db,
                scratch_database(stack, f"hand{design}consumer") as consumer_db,
            ):
                hands[design] = await _run_side(
                    f"hand-written ({design})",
                    handwritten.producing_process,
                    (producer_db, stack.kafka_bootstrap, hand_topic_of_design, design),
                    handwritten.consuming_process,
                    (
                        consumer_db,
                        stack.kafka_bootstrap,
                        hand_topic_of_design,
                        f"bench-hand-{design}-{run}",
                        design,
                    ),
                    config,
                    {"producer": producer_db, "consumer": consumer_db},
                )
        with (
            scratch_database(stack, "producer") as producer_db,
            scratch_database(stack, "consumer") as consumer_db,
        ):
            await _prepare_producer_database(producer_db)
            pipeline = await _run_side(
                "pipeline",
                _producing_service,
                (producer_db, stack.kafka_bootstrap, topic),
                _consuming_service,
                (consumer_db, stack.kafka_bootstrap, topic, f"bench-pipeline-{run}"),
                config,
                {"producer": producer_db, "consumer": consumer_db},
            )
    with scratch_database(stack, "commitrates") as rates_db:
        rates = await measure_commit_rates(rates_db, seconds=config.commit_rate_seconds)
    logger.info("commit rates: %s", rates.per_second)
    return _pipeline_result(
        config, raw, hands[handwritten.INBOX], hands[handwritten.POSITIONS], pipeline, rates
    )


async def _prepare_producer_database(url: str) -> None:
    from confide_toolkit import keyring, outbox, positions, relay
    from confide_toolkit.database import create_engine, toolkit_metadata

    del keyring, outbox, positions, relay  # imported for their tables in `toolkit_metadata`
    engine = create_engine(url, pool_size=2)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(toolkit_metadata.create_all)
    finally:
        await engine.dispose()


SIDE_NAMES = {"producer": "producing", "consumer": "consuming"}


def _pipeline_result(
    config: PipelineConfig,
    raw: SideResult,
    hand: SideResult,
    same: SideResult,
    pipeline: SideResult,
    rates: CommitRates,
) -> ScenarioResult:
    """`hand`: the hand-written pipeline of the first design (an inbox row per event), kept as
    it was; `same`: hand-written, of the toolkit's design (fenced positions)."""
    from confide_toolkit.relay import WRITERS_POLL

    def p(values: list[float], q: float) -> float:
        return percentile(values, q)

    batched, requests = config.batched, config.requests
    size = sum(pipeline.envelope_sizes) / max(1, len(pipeline.envelope_sizes))
    light_p99 = p(pipeline.light_latency_ms, 99)
    per_tx = f"{batched.per_transaction} per transaction"
    one_tx = "1 per transaction"
    figures = [
        Figure(
            "1 pipeline",
            f"throughput, {pipeline.batched.events:,} events, {per_tx}",
            pipeline.batched.rate,
            "events/s",
            raw.batched.rate,
            "raw aiokafka",
            "≥ 0.25x raw",
            pipeline.batched.rate >= 0.25 * raw.batched.rate,
        ),
        Figure(
            "1 pipeline",
            f"throughput, hand-written, first design (inbox row per event), {per_tx}",
            hand.batched.rate,
            "events/s",
            raw.batched.rate,
            "raw aiokafka",
        ),
        Figure(
            "1 pipeline",
            f"throughput, hand-written, toolkit's design (fenced positions), {per_tx}",
            same.batched.rate,
            "events/s",
            raw.batched.rate,
            "raw aiokafka",
        ),
        Figure(
            "1 pipeline",
            f"throughput, {per_tx}, beside hand-written of the same design",
            pipeline.batched.rate,
            "events/s",
            same.batched.rate,
            "hand-written, same design",
        ),
        Figure(
            "1 pipeline",
            f"throughput, {pipeline.requests.events:,} events, {one_tx}",
            pipeline.requests.rate,
            "events/s",
            hand.requests.rate,
            "hand-written, first design",
            "≥ 1.0x hand-written",
            pipeline.requests.rate >= hand.requests.rate,
        ),
        Figure(
            "1 pipeline",
            f"throughput, {one_tx}, beside hand-written of the same design",
            pipeline.requests.rate,
            "events/s",
            same.requests.rate,
            "hand-written, same design",
        ),
        Figure(
            "1 pipeline",
            f"throughput, {one_tx}, beside raw (for information)",
            pipeline.requests.rate,
            "events/s",
            raw.requests.rate,
            "raw aiokafka",
        ),
        Figure(
            "1 pipeline",
            f"throughput, hand-written, first design, {one_tx}",
            hand.requests.rate,
            "events/s",
            raw.requests.rate,
            "raw aiokafka",
        ),
        Figure(
            "1 pipeline",
            f"throughput, hand-written, same design, {one_tx}",
            same.requests.rate,
            "events/s",
            raw.requests.rate,
            "raw aiokafka",
        ),
        Figure(
            "1 pipeline",
            f"commit→consumed p50 at full load, {per_tx}",
            p(pipeline.batched.latency_ms, 50),
            "ms",
            p(raw.batched.latency_ms, 50),
            "send→received",
        ),
        Figure(
            "1 pipeline",
            f"commit→consumed p99 at full load, {per_tx}",
            p(pipeline.batched.latency_ms, 99),
            "ms",
            p(raw.batched.latency_ms, 99),
            "send→received",
        ),
        Figure(
            "1 pipeline",
            f"commit→consumed p99 at full load, {one_tx}",
            p(pipeline.requests.latency_ms, 99),
            "ms",
            p(same.requests.latency_ms, 99),
            "hand-written, same design",
        ),
        Figure(
            "1 pipeline",
            f"commit→consumed p50 at {config.light_rate:.0f} events/s",
            p(pipeline.light_latency_ms, 50),
            "ms",
            p(raw.light_latency_ms, 50),
            "send→received",
        ),
        Figure(
            "1 pipeline",
            f"commit→consumed p99 at {config.light_rate:.0f} events/s",
            light_p99,
            "ms",
            p(raw.light_latency_ms, 99),
            "send→received",
            "≤ 25 ms",
            light_p99 <= 25,
        ),
        Figure(
            "1 pipeline",
            f"commit→consumed p99 at {config.light_rate:.0f} events/s, beside hand-written of "
            "the same design",
            light_p99,
            "ms",
            p(same.light_latency_ms, 99),
            "hand-written, same design",
        ),
    ]
    for side, result in (("toolkit", pipeline), ("hand-written, same design", same)):
        waits = result.light_commit_ms
        figures.append(
            Figure(
                "1 pipeline",
                f"one-row COMMIT beside the light load ({side}'s phase), slowest",
                max(waits) if waits else None,
                "ms",
                note=(
                    f"{len(waits)} COMMITs, p50 {p(waits, 50):.2f} ms, "
                    f"{sum(wait > 25 for wait in waits)} over 25 ms"
                    if waits
                    else ""
                ),
            )
        )
    for shape, label in (("batched", per_tx), ("requests", one_tx)):
        for role in ("producer", "consumer"):
            ours: Throughput = getattr(pipeline, shape)
            theirs: Throughput = getattr(same, shape)
            first: Throughput = getattr(hand, shape)
            figures.append(
                Figure(
                    "1 pipeline",
                    f"CPU of the {SIDE_NAMES[role]} side per 1,000 events, {label}",
                    ours.cpu_per_thousand(role),
                    "s",
                    theirs.cpu_per_thousand(role),
                    f"hand-written {role}, same design",
                    "≤ 1.2x hand-written",
                    ours.cpu_per_thousand(role) <= 1.2 * theirs.cpu_per_thousand(role),
                )
            )
            figures.append(
                Figure(
                    "1 pipeline",
                    f"row writes per event, {SIDE_NAMES[role]} database, {label}",
                    ours.row_writes_per_event(role),
                    "rows",
                    theirs.row_writes_per_event(role),
                    f"hand-written {role}, same design",
                )
            )
            figures.append(
                Figure(
                    "1 pipeline",
                    f"row writes per event, {SIDE_NAMES[role]} database, {label}, "
                    "beside the first design",
                    ours.row_writes_per_event(role),
                    "rows",
                    first.row_writes_per_event(role),
                    f"hand-written {role}, first design",
                )
            )
    figures.append(
        Figure(
            "1 pipeline",
            f"CPU of the raw aiokafka producer + consumer per 1,000 events, {per_tx}",
            raw.batched.cpu_per_thousand("producer") + raw.batched.cpu_per_thousand("consumer"),
            "s",
        )
    )
    for variant in (EVERY_COMMIT, WAITING_RELAY):
        figures.append(
            Figure(
                "1 pipeline",
                f"commits/s, {rates.writers} writers of one-row transactions, outbox trigger: "
                f"{variant}",
                rates.per_second[variant],
                "commits/s",
                rates.per_second[NO_TRIGGER],
                NO_TRIGGER,
            )
        )
    setup = [
        f"Two throughput phases, each as many events as asked or {config.write_seconds:.0f} s "
        f"of writing, whichever first (writers pause at {config.max_in_flight:,} events in "
        "flight): *batched*, "
        f"{batched.events:,} events asked, {batched.writers} writers, {batched.per_transaction} "
        "events per transaction (the pipeline's own capacity: how fast committed events get "
        f"through), then *request-shaped*, {requests.events:,} events asked, "
        f"{requests.writers} writers, one event per transaction (how a service behind HTTP "
        "requests writes: PostgreSQL's commit rate bounds it). "
        "`UserRegistered` events (CloudEvents envelope, structured mode, "
        f"mean {size:.0f} bytes as published, with its `traceparent`), one subject each, "
        f"on a {config.partitions}-partition topic.",
        "Producing service: each transaction the state-change rows and their events "
        "(`Outbox.put` for one, one statement for the rows and `Outbox.put_many` for several) "
        "inside a server span; the `OutboxRelay` in the same process "
        f"(batch {config.relay_batch_size}; LISTEN/NOTIFY, the trigger notifying only while "
        "the relay waits, which it does once no writer that saw it busy is still in its "
        f"transaction, else it reads again after {WRITERS_POLL * 1000:g} ms; fallback poll "
        f"{config.relay_poll_interval:g} s).",
        "Consuming service (another process, its own database): FastStream subscriber exactly "
        "as `Service._register_subscribers` wires it, `InboxConsumer` (positions and fences, "
        "no row per event; each batch's commit does not wait for its flush, as the position "
        "is lost with the effects in a crash and the events are read again) whose effect is one "
        "projection row per event, written by an `inbox.BatchProjection` (one statement per "
        "run of events, as the hand-written consumer writes its effects). The hand-written "
        "consumers wait for every flush, as they did.",
        "Throughput = events ÷ (first commit → last consumer commit). Light load: "
        f"{config.light_rate:.0f} events/s for {config.light_seconds:.0f} s "
        f"({pipeline.light_events} events), one event per transaction, one writer. Beside "
        "each side's light load, a one-row COMMIT ten times a second in its consuming database "
        "(`pipeline_sides.probe_commits`): how long a durable commit waits for its flush on "
        "this server in the same seconds, whoever commits.",
        "Raw baseline: the same payloads, key and headers sent with `idempotent_producer` "
        "(acks=all, linger 2 ms), 1,000 sends in flight, and read in a consumer group with "
        "auto-commit, also in two processes.",
        "Hand-written baselines (`bench/handwritten.py`), two designs, both with psycopg and "
        "aiokafka directly and the same envelope code, without the toolkit (no SQLAlchemy, "
        "FastStream, spans, trigger, retries or dead letters): the *first design* (outbox, "
        "relay deleting what it sent, an inbox row per event and the effect), kept as it was "
        "for the request-shaped target; and the *same design* as the toolkit's since issue 16 "
        "(relay fences, no inbox: one position update per partition and batch), for the CPU "
        "targets. They are what the durable writes themselves cost here, whoever writes the "
        "pipeline.",
        "Row writes: rows inserted, updated and deleted in each side's database during the phase "
        "(`pg_stat_user_tables`, read "
        f"{STATS_SETTLE_SECONDS:.0f} s after the phase so that every backend has reported), "
        "divided by the phase's events. Per table: "
        + "; ".join(
            f"{side} {shape}: "
            + ", ".join(
                f"{role} {table} {count / getattr(result, shape).events:.2f}"
                for role, tables in sorted(getattr(result, shape).row_writes.items())
                for table, count in sorted(tables.items())
            )
            for side, result in (
                ("toolkit", pipeline),
                ("hand-written same design", same),
                ("hand-written first design", hand),
            )
            for shape in ("batched", "requests")
        )
        + ".",
        f"Commits/s (`bench/commit_rates.py`): {rates.writers} writers, each on its own "
        "connection, commit one-row transactions back to back into tables that differ only in "
        "their trigger, the variants alternated "
        f"({rates.seconds:g} s each in all): the outbox's trigger as `core_0001` made it, as "
        "it is now (no relay waits here, as none does while writers keep it busy), and none. "
        "A NOTIFY holds a lock on the whole cluster from before its commit until the commit's "
        "flush is done, so notifying commits are flushed one at a time.",
    ]
    return ScenarioResult(
        name="pipeline",
        figures=figures,
        series={
            "pipeline_light_ms": pipeline.light_latency_ms,
            "raw_light_ms": raw.light_latency_ms,
            "pipeline_throughput_ms": pipeline.batched.latency_ms,
            "raw_throughput_ms": raw.batched.latency_ms,
            "config": asdict(config),
        },
        setup=setup,
    )
