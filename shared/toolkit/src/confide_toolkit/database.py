"""The service's PostgreSQL database: one async engine, one metadata for the toolkit's own
tables (event store, outbox, consumer positions, keyring, signing keys), transactions that
carry the outbox.

Every service owns exactly one database; the toolkit's tables live in it beside the service's."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg import pq
from sqlalchemy import Connection, Engine, MetaData, RootTransaction, event
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import PoolResetState
from sqlalchemy.util import greenlet_spawn

# Constraint names are deterministic so that Alembic migrations stay stable.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

toolkit_metadata = MetaData(naming_convention=NAMING_CONVENTION)
"""The tables every service has; a service's Alembic environment includes them."""


class DatabaseEngine(AsyncEngine):
    """SQLAlchemy's async engine with a cheaper `begin()`: the connection is checked out and its
    transaction begun in one greenlet, then committed (or rolled back) and given back in one
    more, where SQLAlchemy's `begin()` spawns four greenlets (connect, begin, commit, close) and
    a task for the close. With the pool's reset below, a two-row transaction costs the client
    about 70 us less CPU, of about 870 (`python -m bench.transaction_path`).

    Its semantics are SQLAlchemy's: commit when the block ends, roll back when it raises, the
    connection back in the pool either way. When the caller is cancelled during the commit,
    the close still runs (a `finally` in the same greenlet) before the cancellation reaches
    the caller."""

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncConnection]:
        connection, transaction = await greenlet_spawn(_connect_and_begin, self.sync_engine)
        try:
            yield AsyncConnection(self, connection)
        except BaseException as error:
            await greenlet_spawn(_end, connection, transaction, error)
            raise
        await greenlet_spawn(_end, connection, transaction, None)


def _connect_and_begin(engine: Engine) -> tuple[Connection, RootTransaction]:
    connection = engine.connect()
    try:
        transaction = connection.begin()
        transaction.__enter__()  # as SQLAlchemy's `async with conn.begin()` does
    except BaseException:
        connection.close()
        raise
    return connection, transaction


def _end(connection: Connection, transaction: RootTransaction, error: BaseException | None) -> None:
    try:
        if error is None:
            transaction.__exit__(None, None, None)
        else:
            transaction.__exit__(type(error), error, error.__traceback__)
    finally:
        connection.close()


def _roll_back_if_in_transaction(
    dbapi_connection: Any, _record: Any, state: PoolResetState
) -> None:
    """The pool's reset of a connection given back, a rollback only when one is needed. A
    transaction through SQLAlchemy has ended by then (committed, or rolled back by the
    connection's close), a transaction begun on the driver alone has not. The pool's own reset
    rolled back every time: a driver call and a greenlet switch on every transaction."""
    if state.terminate_only or not state.asyncio_safe:
        return  # the connection is being closed, not reused
    if dbapi_connection.driver_connection.info.transaction_status != pq.TransactionStatus.IDLE:
        dbapi_connection.rollback()


def create_engine(url: str, *, pool_size: int = 20, echo: bool = False) -> DatabaseEngine:
    """An async engine on psycopg 3 for a `postgresql+psycopg://` URL.

    The pool opens connections as transactions need them (a quiet service holds few), keeps
    every one it opened, and never holds more than `pool_size`: a transaction beyond waits for
    one to be given back. No overflow: a connection beyond those kept is closed when given
    back, so under steady concurrency each transaction beyond them opens a new one (a server
    process forked and authenticated); with 10 kept and 10 of overflow, consent's grants at 32
    clients spent a tenth of the service's CPU in `connect` alone (py-spy).

    A connection given back is rolled back only when it is still in a transaction
    (`_roll_back_if_in_transaction`), not every time.

    Pooled connections are not pinged before use: the ping is a round trip on every
    transaction (0.2-0.5 ms of the client's CPU each, here). After a database restart, the
    first statement on a stale connection fails instead; SQLAlchemy then discards every
    connection of the pool made before it, and that one request answers 503 with Retry-After
    (`availability`), an event waits and is tried again (`inbox`)."""
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    # Only the engine under SQLAlchemy's own async one is kept: that one is gone (and out of
    # SQLAlchemy's registry of async proxies) before ours takes its place there.
    sync_engine = create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=0,
        pool_pre_ping=False,
        pool_reset_on_return=None,
        echo=echo,
    ).sync_engine
    event.listen(sync_engine, "reset", _roll_back_if_in_transaction)
    return DatabaseEngine(sync_engine)


def libpq_url(url: str) -> str:
    """The same URL without the SQLAlchemy driver suffix, for psycopg's own connections."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def create_scratch_database(admin_url: str, prefix: str = "t") -> tuple[str, str]:
    """A new empty database named `<prefix>_<random>` on the server of `admin_url` (a role
    allowed to create databases), for tests and benchmarks; returns (name, URL)."""
    name = f"{prefix}_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(libpq_url(admin_url), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = admin_url.rpartition("/")
    return name, f"{base}/{name}"


def drop_database(admin_url: str, name: str) -> None:
    """Drop a database, ending the sessions still connected to it."""
    with psycopg.connect(libpq_url(admin_url), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def driver_connection(conn: AsyncConnection) -> Any:
    """The psycopg connection under `conn`, in its transaction, for the toolkit's own statements
    on every event or batch (the outbox rows, a consumer's positions): SQLAlchemy's statement
    path (compiling, a bind processor per value, a greenlet switch per driver call) cost more
    CPU than building the events themselves."""
    if not conn.in_transaction():
        # What SQLAlchemy's own first statement would do: without it, the caller's
        # `conn.commit()` would find no transaction to commit and the rows would be lost.
        await conn.begin()
    checked_out = conn.sync_connection
    if checked_out is None or checked_out.invalidated or checked_out.closed:
        return (await conn.get_raw_connection()).driver_connection  # reconnects, or raises
    # An attribute of the connection in hand: `get_raw_connection` would switch greenlets
    # to read it (about 50 us per call here, several per event).
    return checked_out.connection.driver_connection
