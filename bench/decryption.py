"""Scenario 4, decryption on read: listing 1,000 encrypted records of one person, against reading
the same rows in plaintext.

Both listings are one query through the same engine, returning the same (record id, time, text)
triples, and both read their rows the same way (unpacking each row as a tuple). The encrypted one
reads as a service listing one person's records should: `join_data_keys` (the key row comes in
the same query), one `Keyring.opener` per key of the result (the key unwrapped once, the per-key
work done once) and `KeyOpener.open` per row, with the query's results in psycopg's binary format
(`binary_results`) so that bytea arrives as raw bytes rather than hex text. It is measured *cold*,
with a fresh `Keyring` per listing (so every listing pays its one unwrap, as the first listing in
a process does), and *warm*, with the process's keyring. A counting KEK provider checks the number
of unwraps. For context, the plaintext listing is also timed with binary results, and the
encrypted one through `Keyring.open` per row (the path before the opener)."""

from __future__ import annotations

import contextlib
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import psycopg
from confide_toolkit.kek import LocalKeyFile
from confide_toolkit.keyring import KeyOpener, Keyring, WrappedDataKey, join_data_keys
from psycopg.pq import Format
from sqlalchemy import Column, DateTime, LargeBinary, MetaData, Table, Text, Uuid, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bench.figures import Figure, ScenarioResult
from bench.stack import Stack, scratch_database

CATEGORY = "messaging.messages"

metadata = MetaData()
encrypted_messages = Table(
    "encrypted_messages",
    metadata,
    Column("message_id", Uuid, primary_key=True),
    Column("sender_id", Uuid, nullable=False, index=True),
    Column("sent_at", DateTime(timezone=True), nullable=False),
    Column("body", LargeBinary, nullable=False),
)
plaintext_messages = Table(
    "plaintext_messages",
    metadata,
    Column("message_id", Uuid, primary_key=True),
    Column("sender_id", Uuid, nullable=False, index=True),
    Column("sent_at", DateTime(timezone=True), nullable=False),
    Column("body", Text, nullable=False),
)


@dataclass(frozen=True)
class DecryptionConfig:
    records: int = 1_000
    repetitions: int = 40
    body_chars: int = 280
    background_people: int = 20

    @classmethod
    def quick(cls) -> DecryptionConfig:
        return cls(repetitions=10, background_people=5)


class CountingKeks:
    """The local key file, counting unwraps."""

    def __init__(self, keks: LocalKeyFile) -> None:
        self._keks = keks
        self.unwraps = 0

    @property
    def current_version(self) -> int:
        return self._keks.current_version

    def wrap(self, data_key: bytes) -> tuple[int, bytes]:
        return self._keks.wrap(data_key)

    def unwrap(self, version: int, wrapped: bytes) -> bytes:
        self.unwraps += 1
        return self._keks.unwrap(version, wrapped)


def _body(i: int, chars: int) -> str:
    text = f"Message {i}: I have been feeling better since our last session, mostly. "
    return (text * (chars // len(text) + 1))[:chars]


class _BinaryCursor(psycopg.AsyncCursor[Any]):
    """A psycopg cursor whose results come in binary format unless `execute` says otherwise."""

    def __init__(self, connection: psycopg.AsyncConnection[Any], **kwargs: Any) -> None:
        super().__init__(connection, **kwargs)
        self.format = Format.BINARY


@contextlib.asynccontextmanager
async def binary_results(conn: AsyncConnection) -> AsyncIterator[None]:
    """Statements executed on `conn` inside the block get their results in binary format.

    SQLAlchemy has no execution option for psycopg's `binary=True`, so the block swaps the
    cursor class of the underlying psycopg connection and puts it back. bytea then arrives as its
    bytes (text format sends it hex-encoded, twice the size, decoded on the client), uuid as 16
    bytes, timestamps as integers. Meant for queries of built-in types only: a type psycopg has
    no binary loader for (an enum, an extension type) would come back as raw bytes."""
    driver = (await conn.get_raw_connection()).driver_connection
    assert isinstance(driver, psycopg.AsyncConnection)
    previous = driver.cursor_factory
    driver.cursor_factory = _BinaryCursor
    try:
        yield
    finally:
        driver.cursor_factory = previous


def _plaintext_listing(person: uuid.UUID) -> Any:
    return (
        select(
            plaintext_messages.c.message_id,
            plaintext_messages.c.sent_at,
            plaintext_messages.c.body,
        )
        .where(plaintext_messages.c.sender_id == person)
        .order_by(plaintext_messages.c.sent_at)
    )


def _encrypted_listing(person: uuid.UUID) -> Any:
    return join_data_keys(
        select(
            encrypted_messages.c.message_id, encrypted_messages.c.sent_at, encrypted_messages.c.body
        )
        .where(encrypted_messages.c.sender_id == person)
        .order_by(encrypted_messages.c.sent_at),
        encrypted_messages.c.sender_id,
        CATEGORY,
    )


async def list_plaintext(
    engine: AsyncEngine, person: uuid.UUID, *, binary: bool = False
) -> list[tuple[Any, ...]]:
    async with engine.connect() as conn:
        if binary:
            async with binary_results(conn):
                rows = await conn.execute(_plaintext_listing(person))
        else:
            rows = await conn.execute(_plaintext_listing(person))
        return [(message_id, sent_at, body) for message_id, sent_at, body in rows]


def _open_listing(
    keyring: Keyring, person: uuid.UUID, rows: Iterable[Any]
) -> list[tuple[Any, ...]]:
    listing = []
    opener: KeyOpener | None = None
    for message_id, sent_at, ciphertext, key_id, kek_version, wrapped_key in rows:
        # One opener per key of the result; each row is checked against it, so a result with
        # several keys (or with none: ERASED) is opened correctly as well.
        if opener is None or opener.key_id != key_id:
            wrapped = None if key_id is None else WrappedDataKey(key_id, kek_version, wrapped_key)
            opener = keyring.opener(wrapped, person, CATEGORY)
        body = opener.open(str(message_id), ciphertext)
        listing.append((message_id, sent_at, body.decode() if body else body))
    return listing


async def list_encrypted(
    engine: AsyncEngine, keyring: Keyring, person: uuid.UUID
) -> list[tuple[Any, ...]]:
    """One person's records as a service should list them: see the module's docstring."""
    async with engine.connect() as conn:
        async with binary_results(conn):
            rows = await conn.execute(_encrypted_listing(person))
        return _open_listing(keyring, person, rows)


async def list_encrypted_per_row(
    engine: AsyncEngine, keyring: Keyring, person: uuid.UUID
) -> list[tuple[Any, ...]]:
    """The same listing through `Keyring.open` per row, in text format (the path before)."""
    async with engine.connect() as conn:
        rows = await conn.execute(_encrypted_listing(person))
        listing = []
        for row in rows:
            message_id, sent_at, ciphertext = row[:3]
            body = keyring.open(
                WrappedDataKey.from_row(row), person, CATEGORY, str(message_id), ciphertext
            )
            listing.append((message_id, sent_at, body.decode() if body else body))
        return listing


async def run_decryption(stack: Stack, config: DecryptionConfig) -> ScenarioResult:
    from confide_toolkit.clock import SystemClock
    from confide_toolkit.database import create_engine, toolkit_metadata

    clock = SystemClock()
    plain_ms: list[float] = []
    plain_binary_ms: list[float] = []
    cold_ms: list[float] = []
    warm_ms: list[float] = []
    per_row_ms: list[float] = []
    with scratch_database(stack, "decrypt") as url, TemporaryDirectory() as keys:
        engine = create_engine(url, pool_size=4)
        keks = CountingKeks(LocalKeyFile(Path(keys) / "kek.json"))
        writer = Keyring("messaging", keks, clock)
        try:
            async with engine.begin() as conn:
                await conn.run_sync(toolkit_metadata.create_all)
                await conn.run_sync(metadata.create_all)
            person = uuid.uuid4()
            for someone in [person] + [uuid.uuid4() for _ in range(config.background_people)]:
                async with engine.begin() as conn:
                    encrypted, plain = [], []
                    for i in range(config.records):
                        message_id, sent_at, body = (
                            uuid.uuid4(),
                            clock.now(),
                            _body(i, config.body_chars),
                        )
                        ciphertext = await writer.encrypt(
                            conn, someone, CATEGORY, str(message_id), body.encode()
                        )
                        encrypted.append(
                            dict(
                                message_id=message_id,
                                sender_id=someone,
                                sent_at=sent_at,
                                body=ciphertext,
                            )
                        )
                        plain.append(
                            dict(
                                message_id=message_id, sender_id=someone, sent_at=sent_at, body=body
                            )
                        )
                    await conn.execute(encrypted_messages.insert(), encrypted)
                    await conn.execute(plaintext_messages.insert(), plain)
            async with engine.begin() as conn:
                await conn.exec_driver_sql("ANALYZE")

            expected = await list_plaintext(engine, person)
            warm = Keyring("messaging", keks, clock)
            assert await list_encrypted(engine, warm, person) == expected, "listings differ"
            assert await list_encrypted_per_row(engine, warm, person) == expected
            assert await list_plaintext(engine, person, binary=True) == expected
            keks.unwraps = 0
            for _ in range(config.repetitions):
                # Alternate the three so that drift in the machine's load falls on all alike.
                began = time.perf_counter()
                await list_plaintext(engine, person)
                plain_ms.append((time.perf_counter() - began) * 1000)

                cold = Keyring("messaging", keks, clock)
                began = time.perf_counter()
                await list_encrypted(engine, cold, person)
                cold_ms.append((time.perf_counter() - began) * 1000)

                began = time.perf_counter()
                await list_encrypted(engine, warm, person)
                warm_ms.append((time.perf_counter() - began) * 1000)

                began = time.perf_counter()
                await list_plaintext(engine, person, binary=True)
                plain_binary_ms.append((time.perf_counter() - began) * 1000)

                began = time.perf_counter()
                await list_encrypted_per_row(engine, warm, person)
                per_row_ms.append((time.perf_counter() - began) * 1000)
            # Only the cold listings unwrap: the warm keyring (the last two listings too) has
            # its key cached since the check above.
            unwraps_per_cold_listing = keks.unwraps / config.repetitions
        finally:
            await engine.dispose()

    def rate(ms: list[float]) -> float:
        return config.records / (statistics.median(ms) / 1000)

    plain_rate, cold_rate, warm_rate = rate(plain_ms), rate(cold_ms), rate(warm_ms)
    plain_binary_rate, per_row_rate = rate(plain_binary_ms), rate(per_row_ms)
    figures = [
        Figure(
            "4 decryption",
            f"list {config.records:,} encrypted records, cold keyring",
            cold_rate,
            "records/s",
            plain_rate,
            "plaintext",
            "≥ 0.5x plaintext",
            cold_rate >= 0.5 * plain_rate,
        ),
        Figure(
            "4 decryption",
            f"list {config.records:,} encrypted records, warm keyring",
            warm_rate,
            "records/s",
            plain_rate,
            "plaintext",
            "≥ 0.5x plaintext",
            warm_rate >= 0.5 * plain_rate,
        ),
        Figure(
            "4 decryption",
            f"list {config.records:,} encrypted records, warm, beside binary plaintext",
            warm_rate,
            "records/s",
            plain_binary_rate,
            "plaintext, binary results",
            note="context: both listings read with binary results",
        ),
        Figure(
            "4 decryption",
            f"list {config.records:,} encrypted records, warm, Keyring.open per row",
            per_row_rate,
            "records/s",
            plain_rate,
            "plaintext",
            note="context: the path before KeyOpener (text results, open per row)",
        ),
        Figure(
            "4 decryption",
            "key unwraps per listing (cold; warm: 0)",
            unwraps_per_cold_listing,
            "",
            target="1 (once per key)",
            met=unwraps_per_cold_listing == 1,
        ),
    ]
    return ScenarioResult(
        name="decrypt",
        figures=figures,
        series={
            "plain_ms": plain_ms,
            "cold_ms": cold_ms,
            "warm_ms": warm_ms,
            "plain_binary_ms": plain_binary_ms,
            "per_row_ms": per_row_ms,
        },
        setup=[
            f"One person's {config.records:,} messages of {config.body_chars} characters, "
            f"beside {config.background_people} other people's {config.records:,} each; "
            "the same rows in a plaintext table (same columns, `text` body), both indexed on "
            "the sender.",
            "A listing is one query (ordered by time) and a list of (id, time, text), each row "
            "unpacked as a tuple; the encrypted one adds the `join_data_keys` LEFT JOIN, reads "
            "its results in binary format and opens each row with one `Keyring.opener` per key. "
            "Context rows: the plaintext listing with binary results too, and the encrypted one "
            "through `Keyring.open` per row with text results (the path before the opener). "
            f"Median of {config.repetitions} listings each, interleaved.",
        ],
    )
