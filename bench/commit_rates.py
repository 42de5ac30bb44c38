"""What the outbox's NOTIFY costs PostgreSQL's commit rate (scenario 1, for information).

A NOTIFY takes a lock on the whole cluster before its transaction commits and keeps it until
the commit's flush is done, so two notifying transactions never share a flush (group commit).
Eight writers commit one-row transactions, in turn, into three tables that differ only in
their trigger: the outbox's trigger as `core_0001` made it (every insert notifies), as it is
now (`confide_toolkit.outbox`: only a relay that waits is notified, and none waits here, as
none does while writers keep it busy), and no trigger at all."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import psycopg

WRITERS = 8

EVERY_COMMIT = "every commit notifies (core_0001)"
WAITING_RELAY = "only a waiting relay is notified (now)"
NO_TRIGGER = "no trigger"


@dataclass(frozen=True)
class CommitRates:
    """Commits per second of each variant, over all its rounds."""

    per_second: dict[str, float]
    writers: int
    seconds: float


async def measure_commit_rates(
    database_url: str, *, seconds: float = 3.0, rounds: int = 3
) -> CommitRates:
    """Each variant `rounds` times for `seconds`, the variants alternated so that the disk's
    moods fall on all of them."""
    from confide_toolkit import outbox
    from confide_toolkit.database import libpq_url
    from confide_toolkit.migrations.versions import core_0001_tables

    functions = {
        EVERY_COMMIT: core_0001_tables.NOTIFY_FUNCTION,
        WAITING_RELAY: outbox.NOTIFY_FUNCTION,
    }
    tables = {EVERY_COMMIT: "notify_every", WAITING_RELAY: "notify_waiting", NO_TRIGGER: "plain"}
    dsn = libpq_url(database_url)
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as setup:
        for variant, table in tables.items():
            await setup.execute(
                f"CREATE TABLE {table} (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
                " value text NOT NULL)"
            )
            if variant in functions:
                function = f"{table}_notify"
                await setup.execute(functions[variant].replace("confide_outbox_notify", function))
                await setup.execute(
                    f"CREATE TRIGGER {table}_notify AFTER INSERT ON {table}"
                    f" FOR EACH STATEMENT EXECUTE FUNCTION {function}()"
                )
    writers = [await psycopg.AsyncConnection.connect(dsn) for _ in range(WRITERS)]
    commits = dict.fromkeys(tables, 0)
    try:
        for _ in range(rounds):
            for variant, table in tables.items():
                commits[variant] += await _commit_for(writers, table, seconds)
    finally:
        for conn in writers:
            await conn.close()
    return CommitRates(
        {variant: count / (rounds * seconds) for variant, count in commits.items()},
        WRITERS,
        seconds * rounds,
    )


async def _commit_for(writers: list[psycopg.AsyncConnection], table: str, seconds: float) -> int:
    deadline = time.monotonic() + seconds
    counts = [0] * len(writers)

    async def write(i: int, conn: psycopg.AsyncConnection) -> None:
        while time.monotonic() < deadline:
            async with conn.transaction():
                await conn.execute(f"INSERT INTO {table} (value) VALUES ('x')")
            counts[i] += 1

    await asyncio.gather(*(write(i, conn) for i, conn in enumerate(writers)))
    return sum(counts)
