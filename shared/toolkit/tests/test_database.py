"""The engine's transactions on a real PostgreSQL: `begin()` commits what succeeded and nothing of
what failed, and a connection goes back to the pool out of any transaction, however it was
used."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from confide_toolkit.database import DatabaseEngine, create_engine
from psycopg import pq
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

ONE_CONNECTION = 1
"""So that every transaction of a test gets the connection the one before gave back."""


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[DatabaseEngine]:
    engine = create_engine(database_url, pool_size=ONE_CONNECTION)
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE notes (n integer PRIMARY KEY)"))
        await conn.execute(
            text("CREATE TABLE checked (n integer UNIQUE DEFERRABLE INITIALLY DEFERRED)")
        )
    try:
        yield engine
    finally:
        await engine.dispose()


async def _notes(engine: DatabaseEngine) -> list[int]:
    async with engine.connect() as conn:
        return list((await conn.scalars(text("SELECT n FROM notes ORDER BY n"))).all())


async def _status_of_pooled(engine: DatabaseEngine) -> pq.TransactionStatus:
    async with engine.connect() as conn:
        raw = await conn.get_raw_connection()
        status: pq.TransactionStatus = raw.driver_connection.info.transaction_status
        return status


async def test_begin_commits_what_the_block_wrote(engine: DatabaseEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(text("INSERT INTO notes VALUES (1), (2)"))

    assert await _notes(engine) == [1, 2]
    assert await _status_of_pooled(engine) == pq.TransactionStatus.IDLE


async def test_an_error_in_the_block_rolls_everything_back(engine: DatabaseEngine) -> None:
    with pytest.raises(RuntimeError, match="refused"):
        async with engine.begin() as conn:
            await conn.execute(text("INSERT INTO notes VALUES (1)"))
            raise RuntimeError("refused")

    assert await _notes(engine) == []
    assert await _status_of_pooled(engine) == pq.TransactionStatus.IDLE


async def test_a_commit_that_fails_raises_and_leaves_the_connection_usable(
    engine: DatabaseEngine,
) -> None:
    with pytest.raises(IntegrityError):
        async with engine.begin() as conn:
            await conn.execute(text("INSERT INTO notes VALUES (7)"))
            # Checked only at COMMIT.
            await conn.execute(text("INSERT INTO checked VALUES (1), (1)"))

    assert await _notes(engine) == []
    async with engine.begin() as conn:
        await conn.execute(text("INSERT INTO notes VALUES (8)"))
    assert await _notes(engine) == [8]


async def test_a_transaction_begun_on_the_driver_alone_is_rolled_back_when_given_back(
    engine: DatabaseEngine,
) -> None:
    """SQLAlchemy does not know of it, so only the pool's reset can end it: otherwise the next
    transaction on that connection would run inside it and commit its rows too."""
    async with engine.connect() as conn:
        raw = await conn.get_raw_connection()
        await raw.driver_connection.execute("INSERT INTO notes VALUES (3)")
        assert raw.driver_connection.info.transaction_status == pq.TransactionStatus.INTRANS

    assert await _status_of_pooled(engine) == pq.TransactionStatus.IDLE
    async with engine.begin() as conn:
        await conn.execute(text("INSERT INTO notes VALUES (4)"))
    assert await _notes(engine) == [4]


async def test_a_failed_statement_on_the_driver_is_rolled_back_when_given_back(
    engine: DatabaseEngine,
) -> None:
    async with engine.connect() as conn:
        raw = await conn.get_raw_connection()
        with pytest.raises(Exception, match="duplicate key"):
            await raw.driver_connection.execute("INSERT INTO notes VALUES (5), (5)")
        assert raw.driver_connection.info.transaction_status == pq.TransactionStatus.INERROR

    async with engine.begin() as conn:
        await conn.execute(text("INSERT INTO notes VALUES (6)"))
    assert await _notes(engine) == [6]
