"""What one short transaction costs the client's CPU on each path a service's write could take:
statements through SQLAlchemy (as services write), SQLAlchemy's transaction with the statements
on its psycopg connection (as the outbox and the consumer positions write), a psycopg
transaction on a connection of SQLAlchemy's pool (what writing through psycopg from the same
pool would cost), and psycopg alone, as the hand-written pipeline writes. Each transaction
inserts two rows; the paths take turns, five rounds each, one transaction at a time, on the
toolkit's `create_engine`.

    uv run python -m bench.transaction_path [--transactions N]

Not part of `make bench`: it measures one mechanism, for the findings (bench/findings.md)."""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import psycopg
from confide_toolkit.database import create_engine, driver_connection, libpq_url
from sqlalchemy import text
from sqlalchemy.util import greenlet_spawn

from bench.stack import scratch_database, stack_from_environment

ROUNDS = 5
INSERT = text("INSERT INTO accounts (subject_id, registered_at) VALUES (:s, :t)")
INSERT_ON_DRIVER = "INSERT INTO accounts (subject_id, registered_at) VALUES (%s, %s)"


async def measure(database_url: str, transactions: int) -> dict[str, float]:
    """Microseconds of this process's CPU per transaction, per path."""
    engine = create_engine(database_url)
    driver = await psycopg.AsyncConnection.connect(libpq_url(database_url))
    async with engine.begin() as conn:
        await conn.execute(
            text("CREATE TABLE accounts (subject_id uuid PRIMARY KEY, registered_at timestamptz)")
        )

    async def on_sqlalchemy() -> None:
        async with engine.begin() as conn:
            await conn.execute(INSERT, {"s": uuid.uuid4(), "t": datetime.now(UTC)})
            await conn.execute(INSERT, {"s": uuid.uuid4(), "t": datetime.now(UTC)})

    async def in_sqlalchemy_transaction_on_driver() -> None:
        async with engine.begin() as conn:
            on_driver = await driver_connection(conn)
            await on_driver.execute(INSERT_ON_DRIVER, (uuid.uuid4(), datetime.now(UTC)))
            await on_driver.execute(INSERT_ON_DRIVER, (uuid.uuid4(), datetime.now(UTC)))

    async def on_pooled_psycopg() -> None:
        pooled = await engine.raw_connection()
        try:
            on_driver = pooled.driver_connection
            assert isinstance(on_driver, psycopg.AsyncConnection)
            async with on_driver.transaction():
                await on_driver.execute(INSERT_ON_DRIVER, (uuid.uuid4(), datetime.now(UTC)))
                await on_driver.execute(INSERT_ON_DRIVER, (uuid.uuid4(), datetime.now(UTC)))
        finally:
            await greenlet_spawn(pooled.close)  # back to the pool: its reset awaits the driver

    async def on_psycopg() -> None:
        async with driver.transaction():
            await driver.execute(INSERT_ON_DRIVER, (uuid.uuid4(), datetime.now(UTC)))
            await driver.execute(INSERT_ON_DRIVER, (uuid.uuid4(), datetime.now(UTC)))

    paths: dict[str, Callable[[], Awaitable[None]]] = {
        "statements through SQLAlchemy": on_sqlalchemy,
        "SQLAlchemy's transaction, statements on psycopg": in_sqlalchemy_transaction_on_driver,
        "psycopg, on a connection of SQLAlchemy's pool": on_pooled_psycopg,
        "psycopg alone": on_psycopg,
    }
    try:
        for path in paths.values():  # connections, prepared statements, caches
            for _ in range(200):
                await path()
        cpu = dict.fromkeys(paths, 0.0)
        for _ in range(ROUNDS):
            for name, path in paths.items():
                started = time.process_time()
                for _ in range(transactions // ROUNDS):
                    await path()
                cpu[name] += time.process_time() - started
        return {name: seconds / transactions * 1e6 for name, seconds in cpu.items()}
    finally:
        await driver.close()
        await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transactions", type=int, default=5_000)
    args = parser.parse_args()
    with scratch_database(stack_from_environment(), "transactionpath") as url:
        cpu = asyncio.run(measure(url, args.transactions))
    floor = cpu["psycopg alone"]
    for name, microseconds in cpu.items():
        ratio = microseconds / floor
        print(f"{name:48s} {microseconds:5.0f} us of CPU per transaction ({ratio:.2f}x)")


if __name__ == "__main__":
    main()
