"""What every side of scenario 1 shares: the toolkit's pipeline (`bench.pipeline`), the
hand-written one (`bench.handwritten`) and raw Kafka run the same phases, with the same
configuration and the same payload, in processes that follow the same protocol with the parent.

The parent (`bench.pipeline`) starts a producing and a consuming process per side and drives
them over a pipe: to the producer "light", then "throughput" and "continue" once its events were
applied; to the consumer "measure" and "measured" around each throughput phase
(`measurement_commands`); then "stop" to both. They answer "ready", "written" (the producer),
"cpu" and finally "result"."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from confide_events import CLOUDEVENTS_JSON, CONTENT_TYPE_HEADER, encode_envelope, to_envelope
from confide_events.identity import UserRegistered
from confide_toolkit.ids import uuid7

WARM_UP_EVENTS = 20
"""Events each side sends before measuring (connections, metadata, plans); not counted."""


@dataclass(frozen=True)
class WriteShape:
    """How the producing side writes during a throughput phase."""

    events: int
    writers: int
    """Concurrent writer tasks (as concurrent requests or jobs would be)."""
    per_transaction: int
    """Events committed per transaction."""


@dataclass(frozen=True)
class PipelineConfig:
    """The sizes and pace of scenario 1, the same for every side."""

    batched: WriteShape = WriteShape(events=100_000, writers=2, per_transaction=100)
    """The throughput phase that measures the pipeline itself: events committed 100 to a
    transaction (as a command or a consumed event causing many does), so that PostgreSQL's
    commit rate is not what is measured."""
    requests: WriteShape = WriteShape(events=20_000, writers=8, per_transaction=1)
    """The request-shaped throughput phase: one event per transaction, 8 at once."""
    light_rate: float = 100.0
    """Events per second of the light-load phase (one event per transaction, one writer)."""
    light_seconds: float = 15.0
    partitions: int = 3
    relay_batch_size: int = 500
    relay_poll_interval: float = 1.0
    write_seconds: float = 90.0
    """Time budget of each throughput phase's writes: it ends after its `events` or this,
    whichever comes first, so that a slow pipeline still finishes in minutes (the count is
    reported)."""
    max_in_flight: int = 2_000
    """Writers pause while this many committed events are not yet consumed: at most a bounded
    backlog is left to drain when the budget runs out (and latency under overload stays
    readable)."""
    phase_timeout: float = 420.0
    commit_rate_seconds: float = 3.0
    """Seconds of each round of each variant of the commit-rate figures (three rounds)."""
    consumer: str = "toolkit"
    """`toolkit` (as services subscribe), or a prototype of `bench.prototypes`:
    `deferred-commit` or `batch`."""
    profile_dir: str | None = None
    """When set, pyinstrument profiles both service processes during the throughput phase and
    writes `<role>.txt` and `<role>.html` here."""


def payload(subject: uuid.UUID) -> tuple[bytes, list[tuple[str, bytes]]]:
    """The exact bytes the outbox would write for this event: envelope, headers."""
    event_id = uuid7()
    traceparent = f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01"
    envelope = to_envelope(
        UserRegistered(subject_id=subject, role="client", registered_at=datetime.now(UTC)),
        event_id=event_id,
        time=datetime.now(UTC),
        correlation_id=str(event_id),
        traceparent=traceparent,
    )
    headers = [
        (CONTENT_TYPE_HEADER, CLOUDEVENTS_JSON.encode()),
        ("traceparent", traceparent.encode()),
    ]
    return encode_envelope(envelope), headers


async def light_load(config: PipelineConfig, commit_one: Callable[[], Awaitable[Any]]) -> None:
    """The light-load phase's writes: one event per transaction, one writer, at
    `config.light_rate` for `config.light_seconds`."""
    started = time.monotonic()
    total = round(config.light_rate * config.light_seconds)
    for i in range(total):
        delay = started + i / config.light_rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        await commit_one()


COMMIT_PROBE_RATE = 10.0
"""One-row COMMITs a second beside each light-load phase (`probe_commits`)."""


async def probe_commits(database_url: str, stop: asyncio.Event) -> list[float]:
    """How long a durable one-row COMMIT waits on this PostgreSQL (ms), `COMMIT_PROBE_RATE` a
    second until `stop` is set: the floor under any consumer that commits what it applied.

    A COMMIT waits for its WAL to reach the disk; when the disk stalls a flush, every consumer
    of the same server waits with it, whoever wrote it, and the events arriving meanwhile
    queue behind. The probe's table is dropped when it stops."""
    import psycopg
    from confide_toolkit.database import libpq_url

    waits: list[float] = []
    async with await psycopg.AsyncConnection.connect(libpq_url(database_url)) as conn:
        await conn.execute("CREATE TABLE bench_commit_probe (n bigint NOT NULL)")
        await conn.commit()
        while not stop.is_set():
            await conn.execute("INSERT INTO bench_commit_probe VALUES (%s)", (len(waits),))
            started = time.perf_counter()
            await conn.commit()
            waits.append((time.perf_counter() - started) * 1000)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1 / COMMIT_PROBE_RATE)
        await conn.execute("DROP TABLE bench_commit_probe")
        await conn.commit()
    return waits


async def measurement_commands(pipe: Connection, config: PipelineConfig, role: str | None) -> None:
    """A consumer process's CPU time (and profile) over the window the parent marks, until
    "stop"."""
    profiler, cpu = None, 0.0
    while True:
        message = await asyncio.to_thread(pipe.recv)
        command = message[0]
        if command == "measure":
            profiler = start_profiler(config) if role and message[1] else None
            cpu = time.process_time()
        elif command == "measured":
            if role:
                stop_profiler(profiler, config, role)
            pipe.send(("cpu", time.process_time() - cpu))
        elif command == "stop":
            return


def start_profiler(config: PipelineConfig) -> Any:
    """A running pyinstrument profiler when `config.profile_dir` is set, else None."""
    if not config.profile_dir:
        return None
    from pyinstrument import Profiler

    # Wall-clock stacks of the whole event loop: where the process spends its time, including
    # the waits on PostgreSQL and Kafka.
    profiler = Profiler(interval=0.001, async_mode="disabled")
    profiler.start()
    return profiler


def stop_profiler(profiler: Any, config: PipelineConfig, role: str) -> None:
    """Stops a profiler from `start_profiler` and writes `<role>.txt` and `<role>.html`."""
    if profiler is None or not config.profile_dir:
        return
    profiler.stop()
    directory = Path(config.profile_dir)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{role}.txt").write_text(
        profiler.output_text(unicode=True, color=False, show_all=False)
    )
    (directory / f"{role}.html").write_text(profiler.output_html())


def quiet_logs() -> None:
    """Logging for a side's process: warnings only, so that the parent's progress stays readable."""
    logging.basicConfig(level=logging.WARNING, format="%(processName)s %(levelname)s %(message)s")
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
