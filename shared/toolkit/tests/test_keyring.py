"""The keyring against real PostgreSQL: per-(subject, category) data keys and crypto-shredding."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from confide_toolkit.clock import FrozenClock
from confide_toolkit.ids import uuid7
from confide_toolkit.kek import LocalKeyFile, RetiredKekVersion
from confide_toolkit.keyring import (
    ERASED,
    CiphertextContextMismatch,
    DataKeyShredded,
    Erased,
    KeyOpener,
    Keyring,
    MalformedCiphertext,
    Tombstone,
    WrappedDataKey,
    data_key_tombstones,
    data_keys,
    join_data_keys,
)
from sqlalchemy import Column, LargeBinary, MetaData, Table, Text, Uuid, func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

MESSAGES = "messaging.messages"
NOTES = "messaging.session_notes"
BODY = b"I have not told anyone this before."


class CountingKeks:
    """A key file that counts unwraps, to see what the keyring's cache saves."""

    def __init__(self, inner: LocalKeyFile) -> None:
        self.inner = inner
        self.unwraps = 0

    @property
    def current_version(self) -> int:
        return self.inner.current_version

    def wrap(self, data_key: bytes) -> tuple[int, bytes]:
        return self.inner.wrap(data_key)

    def unwrap(self, version: int, wrapped: bytes) -> bytes:
        self.unwraps += 1
        return self.inner.unwrap(version, wrapped)


@pytest.fixture
def key_file(tmp_path: Path) -> LocalKeyFile:
    return LocalKeyFile(tmp_path / "kek.json")


@pytest.fixture
def keks(key_file: LocalKeyFile) -> CountingKeks:
    return CountingKeks(key_file)


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock()


@pytest.fixture
def keyring(keks: CountingKeks, clock: FrozenClock) -> Keyring:
    return Keyring("messaging", keks, clock)


@pytest.fixture
def another_replica(keks: CountingKeks, clock: FrozenClock) -> Keyring:
    """A second process of the same service: same KEKs, its own cache."""
    return Keyring("messaging", keks, clock)


@pytest.fixture
def subject() -> uuid.UUID:
    return uuid7()


async def _encrypt(
    engine: AsyncEngine,
    keyring: Keyring,
    subject: uuid.UUID,
    record_id: str,
    plaintext: bytes = BODY,
    category: str = MESSAGES,
) -> bytes:
    async with engine.begin() as conn:
        return await keyring.encrypt(conn, subject, category, record_id, plaintext)


async def _decrypt(
    engine: AsyncEngine,
    keyring: Keyring,
    subject: uuid.UUID,
    record_id: str,
    ciphertext: bytes,
    category: str = MESSAGES,
) -> bytes | Erased:
    async with engine.connect() as conn:
        return await keyring.decrypt(conn, subject, category, record_id, ciphertext)


async def _shred(
    engine: AsyncEngine, keyring: Keyring, subject: uuid.UUID, category: str = MESSAGES
) -> Tombstone | None:
    async with engine.begin() as conn:
        return await keyring.shred(conn, subject, category)


# A service's own table of encrypted rows, to read them with their keys in one query.
service_metadata = MetaData()
messages = Table(
    "messages",
    service_metadata,
    Column("message_id", Uuid, primary_key=True),
    Column("sender_id", Uuid, nullable=False),
    Column("body", LargeBinary, nullable=False),
    Column("note", Text),
)


@pytest.fixture
async def messages_engine(toolkit_engine: AsyncEngine) -> AsyncIterator[AsyncEngine]:
    async with toolkit_engine.begin() as conn:
        await conn.run_sync(service_metadata.create_all)
    yield toolkit_engine


async def _write_messages(
    engine: AsyncEngine, keyring: Keyring, sender: uuid.UUID, count: int
) -> None:
    async with engine.begin() as conn:
        rows = []
        for n in range(count):
            message_id = uuid7()
            body = await keyring.encrypt(conn, sender, MESSAGES, str(message_id), b"body %d" % n)
            rows.append({"message_id": message_id, "sender_id": sender, "body": body})
        await conn.execute(messages.insert(), rows)


async def _read_messages(engine: AsyncEngine, keyring: Keyring) -> dict[uuid.UUID, list[object]]:
    """Every message, decrypted, per sender: one query for data and keys."""
    statement = join_data_keys(
        select(messages.c.message_id, messages.c.sender_id, messages.c.body).order_by(
            messages.c.message_id
        ),
        messages.c.sender_id,
        MESSAGES,
    )
    bodies: dict[uuid.UUID, list[object]] = {}
    async with engine.connect() as conn:
        for row in await conn.execute(statement):
            body = keyring.open(
                WrappedDataKey.from_row(row),
                row.sender_id,
                MESSAGES,
                str(row.message_id),
                row.body,
            )
            bodies.setdefault(row.sender_id, []).append(body)
    return bodies


async def test_encrypted_data_round_trips(
    toolkit_engine: AsyncEngine, keyring: Keyring, another_replica: Keyring, subject: uuid.UUID
) -> None:
    ciphertext = await _encrypt(toolkit_engine, keyring, subject, "m-1")

    assert await _decrypt(toolkit_engine, keyring, subject, "m-1", ciphertext) == BODY
    assert await _decrypt(toolkit_engine, another_replica, subject, "m-1", ciphertext) == BODY


async def test_one_data_key_per_subject_and_category(
    toolkit_engine: AsyncEngine, keyring: Keyring, subject: uuid.UUID
) -> None:
    await _encrypt(toolkit_engine, keyring, subject, "m-1")
    await _encrypt(toolkit_engine, keyring, subject, "m-2")
    await _encrypt(toolkit_engine, keyring, subject, "n-1", category=NOTES)
    await _encrypt(toolkit_engine, keyring, uuid7(), "m-3")

    async with toolkit_engine.connect() as conn:
        rows = (await conn.execute(select(data_keys.c.subject_id, data_keys.c.category))).all()
    assert sorted((s == subject, c) for s, c in rows) == [
        (False, MESSAGES),
        (True, MESSAGES),
        (True, NOTES),
    ]


async def test_plaintext_appears_neither_in_data_keys_nor_in_ciphertext(
    toolkit_engine: AsyncEngine, keyring: Keyring, key_file: LocalKeyFile, subject: uuid.UUID
) -> None:
    ciphertext = await _encrypt(toolkit_engine, keyring, subject, "m-1")

    assert BODY not in ciphertext
    async with toolkit_engine.connect() as conn:
        row = (await conn.execute(select(data_keys))).one()
        row_as_text = await conn.scalar(text("SELECT data_keys::text FROM data_keys"))
    assert BODY not in row.wrapped_key
    assert BODY.hex() not in (row_as_text or "")
    data_key = key_file.unwrap(row.kek_version, row.wrapped_key)
    assert data_key not in row.wrapped_key
    assert data_key.hex() not in (row_as_text or "")
    assert data_key not in ciphertext


async def test_ciphertext_names_its_format_version_and_key(
    toolkit_engine: AsyncEngine, keyring: Keyring, subject: uuid.UUID
) -> None:
    ciphertext = await _encrypt(toolkit_engine, keyring, subject, "m-1")

    async with toolkit_engine.connect() as conn:
        key_id = await conn.scalar(select(data_keys.c.key_id))
    assert ciphertext[0] == 0x01
    assert uuid.UUID(bytes=ciphertext[1:17]) == key_id
    assert len(ciphertext) == len(BODY) + 45


async def test_shredded_data_reads_as_erased(
    toolkit_engine: AsyncEngine, keyring: Keyring, another_replica: Keyring, subject: uuid.UUID
) -> None:
    ciphertext = await _encrypt(toolkit_engine, keyring, subject, "m-1")
    kept = await _encrypt(toolkit_engine, keyring, subject, "n-1", category=NOTES)

    await _shred(toolkit_engine, keyring, subject)

    assert await _decrypt(toolkit_engine, keyring, subject, "m-1", ciphertext) is ERASED
    assert await _decrypt(toolkit_engine, another_replica, subject, "m-1", ciphertext) is ERASED
    # Only that category is erased.
    assert await _decrypt(toolkit_engine, keyring, subject, "n-1", kept, category=NOTES) == BODY


async def test_shredded_data_reads_as_erased_through_the_joined_query(
    messages_engine: AsyncEngine, keyring: Keyring, keks: CountingKeks
) -> None:
    erased_sender, kept_sender = uuid7(), uuid7()
    await _write_messages(messages_engine, keyring, erased_sender, 3)
    await _write_messages(messages_engine, keyring, kept_sender, 3)

    await _shred(messages_engine, keyring, erased_sender)

    bodies = await _read_messages(messages_engine, keyring)
    assert bodies[erased_sender] == [ERASED, ERASED, ERASED]
    assert bodies[kept_sender] == [b"body 0", b"body 1", b"body 2"]


async def test_many_rows_are_read_in_one_query_with_each_key_unwrapped_once(
    messages_engine: AsyncEngine, keyring: Keyring, keks: CountingKeks, clock: FrozenClock
) -> None:
    sender = uuid7()
    await _write_messages(messages_engine, keyring, sender, 1_000)
    reader = Keyring("messaging", keks, clock)  # a fresh process: nothing cached yet
    keks.unwraps = 0

    bodies = await _read_messages(messages_engine, reader)

    assert bodies[sender] == [b"body %d" % n for n in range(1_000)]
    assert keks.unwraps == 1


async def test_cache_never_lets_a_reader_decrypt_after_shred(
    messages_engine: AsyncEngine, keyring: Keyring, another_replica: Keyring
) -> None:
    sender = uuid7()
    await _write_messages(messages_engine, keyring, sender, 2)
    async with messages_engine.connect() as conn:
        message_id, ciphertext = (
            await conn.execute(select(messages.c.message_id, messages.c.body).limit(1))
        ).one()
    # Both processes have the key unwrapped in their caches.
    assert await _decrypt(messages_engine, another_replica, sender, str(message_id), ciphertext)
    assert (await _read_messages(messages_engine, another_replica))[sender][0] == b"body 0"

    # The shredding happens in the other process, so this one's cache still holds the key.
    await _shred(messages_engine, keyring, sender)

    assert (
        await _decrypt(messages_engine, another_replica, sender, str(message_id), ciphertext)
        is ERASED
    )
    assert (await _read_messages(messages_engine, another_replica))[sender] == [ERASED, ERASED]


async def _read_messages_with_openers(
    engine: AsyncEngine, keyring: Keyring
) -> dict[uuid.UUID, list[object]]:
    """`_read_messages` through one `KeyOpener` per key of the result, as a listing would."""
    statement = join_data_keys(
        select(messages.c.message_id, messages.c.sender_id, messages.c.body).order_by(
            messages.c.message_id
        ),
        messages.c.sender_id,
        MESSAGES,
    )
    bodies: dict[uuid.UUID, list[object]] = {}
    openers: dict[uuid.UUID, KeyOpener] = {}
    async with engine.connect() as conn:
        for row in await conn.execute(statement):
            opener = openers.get(row.sender_id)
            if opener is None or opener.key_id != row.data_key_id:
                opener = openers[row.sender_id] = keyring.opener(
                    WrappedDataKey.from_row(row), row.sender_id, MESSAGES
                )
            body = opener.open(str(row.message_id), row.body)
            bodies.setdefault(row.sender_id, []).append(body)
    return bodies


async def _key_row(engine: AsyncEngine, subject: uuid.UUID, category: str) -> WrappedDataKey:
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                select(data_keys.c.key_id, data_keys.c.kek_version, data_keys.c.wrapped_key).where(
                    data_keys.c.subject_id == subject, data_keys.c.category == category
                )
            )
        ).one()
    return WrappedDataKey(row.key_id, row.kek_version, bytes(row.wrapped_key))


async def test_an_opener_round_trips_many_rows_with_one_unwrap(
    messages_engine: AsyncEngine, keyring: Keyring, keks: CountingKeks, clock: FrozenClock
) -> None:
    sender, other = uuid7(), uuid7()
    await _write_messages(messages_engine, keyring, sender, 200)
    await _write_messages(messages_engine, keyring, other, 3)
    reader = Keyring("messaging", keks, clock)  # a fresh process: nothing cached yet
    keks.unwraps = 0

    bodies = await _read_messages_with_openers(messages_engine, reader)

    assert bodies[sender] == [b"body %d" % n for n in range(200)]
    assert bodies[other] == [b"body 0", b"body 1", b"body 2"]
    assert keks.unwraps == 2  # one per key
    assert await _read_messages(messages_engine, reader) == bodies  # and `open` agrees


async def test_an_opener_opens_what_encrypt_wrote(
    toolkit_engine: AsyncEngine, keyring: Keyring, subject: uuid.UUID
) -> None:
    ciphertext = await _encrypt(toolkit_engine, keyring, subject, "m-1")
    wrapped = await _key_row(toolkit_engine, subject, MESSAGES)

    opener = keyring.opener(wrapped, subject, MESSAGES)

    assert opener.key_id == wrapped.key_id
    assert (opener.subject_id, opener.category) == (subject, MESSAGES)
    assert opener.open("m-1", ciphertext) == BODY


async def test_an_opener_reads_erased_when_the_query_found_no_key(
    messages_engine: AsyncEngine, keyring: Keyring, another_replica: Keyring
) -> None:
    erased_sender, kept_sender = uuid7(), uuid7()
    await _write_messages(messages_engine, keyring, erased_sender, 3)
    await _write_messages(messages_engine, keyring, kept_sender, 2)
    # The reader's cache holds both keys before the shredding, done by another process.
    assert (await _read_messages_with_openers(messages_engine, another_replica))[erased_sender] == [
        b"body 0",
        b"body 1",
        b"body 2",
    ]

    await _shred(messages_engine, keyring, erased_sender)

    bodies = await _read_messages_with_openers(messages_engine, another_replica)
    assert bodies[erased_sender] == [ERASED, ERASED, ERASED]
    assert bodies[kept_sender] == [b"body 0", b"body 1"]
    erased = another_replica.opener(None, erased_sender, MESSAGES)
    assert erased.key_id is None
    with pytest.raises(MalformedCiphertext):  # erasure is no excuse for accepting garbage
        erased.open("m-1", b"\x01" * 40)


async def test_an_opener_refuses_a_ciphertext_moved_from_another_record_or_subject(
    toolkit_engine: AsyncEngine, keyring: Keyring, keks: CountingKeks, clock: FrozenClock
) -> None:
    subject, other_subject = uuid7(), uuid7()
    ciphertext = await _encrypt(toolkit_engine, keyring, subject, "m-1")
    wrapped = await _key_row(toolkit_engine, subject, MESSAGES)
    # The same key row, claimed for another record, subject, category or service.
    for opener, record in (
        (keyring.opener(wrapped, subject, MESSAGES), "m-2"),
        (keyring.opener(wrapped, other_subject, MESSAGES), "m-1"),
        (keyring.opener(wrapped, subject, NOTES), "m-1"),
        (Keyring("billing", keks, clock).opener(wrapped, subject, MESSAGES), "m-1"),
    ):
        with pytest.raises(CiphertextContextMismatch) as raised:
            opener.open(record, ciphertext)
        assert raised.value.record_id == record
        assert BODY.decode() not in str(raised.value)
    for position in (20, 30, len(ciphertext) - 1):  # nonce, body, tag
        tampered = bytearray(ciphertext)
        tampered[position] ^= 0x01
        with pytest.raises(CiphertextContextMismatch):
            keyring.opener(wrapped, subject, MESSAGES).open("m-1", bytes(tampered))


async def test_an_opener_refuses_a_ciphertext_of_another_key_without_unwrapping(
    toolkit_engine: AsyncEngine,
    keyring: Keyring,
    keks: CountingKeks,
    clock: FrozenClock,
    subject: uuid.UUID,
) -> None:
    other_subject = uuid7()
    ciphertext = await _encrypt(toolkit_engine, keyring, subject, "m-1")
    await _encrypt(toolkit_engine, keyring, other_subject, "m-9")
    others_key = await _key_row(toolkit_engine, other_subject, MESSAGES)
    reader = Keyring("messaging", keks, clock)  # nothing cached
    keks.unwraps = 0

    with pytest.raises(CiphertextContextMismatch):
        reader.opener(others_key, subject, MESSAGES).open("m-1", ciphertext)
    # A key row whose id differs from the ciphertext's, even one carrying the right key.
    own_key = await _key_row(toolkit_engine, subject, MESSAGES)
    relabelled = WrappedDataKey(uuid7(), own_key.kek_version, own_key.wrapped_key)
    with pytest.raises(CiphertextContextMismatch):
        reader.opener(relabelled, subject, MESSAGES).open("m-1", ciphertext)
    with pytest.raises(CiphertextContextMismatch):
        reader.open(relabelled, subject, MESSAGES, "m-1", ciphertext)
    tampered = bytearray(ciphertext)
    tampered[1] ^= 0x01  # the key id in the header
    with pytest.raises(CiphertextContextMismatch):
        reader.opener(own_key, subject, MESSAGES).open("m-1", bytes(tampered))
    assert keks.unwraps == 0


async def test_an_opener_rejects_malformed_ciphertext(
    toolkit_engine: AsyncEngine, keyring: Keyring, subject: uuid.UUID
) -> None:
    ciphertext = await _encrypt(toolkit_engine, keyring, subject, "m-1")
    opener = keyring.opener(await _key_row(toolkit_engine, subject, MESSAGES), subject, MESSAGES)

    with pytest.raises(MalformedCiphertext, match="version 2"):
        opener.open("m-1", b"\x02" + ciphertext[1:])
    with pytest.raises(MalformedCiphertext, match="too short"):
        opener.open("m-1", ciphertext[:40])  # the header is right, the rest is missing
    with pytest.raises(MalformedCiphertext):
        opener.open("m-1", b"")


async def test_shredding_is_idempotent_and_records_a_tombstone_with_the_key_id(
    toolkit_engine: AsyncEngine, keyring: Keyring, clock: FrozenClock, subject: uuid.UUID
) -> None:
    await _encrypt(toolkit_engine, keyring, subject, "m-1")
    async with toolkit_engine.connect() as conn:
        key_id = await conn.scalar(select(data_keys.c.key_id))

    first = await _shred(toolkit_engine, keyring, subject)
    clock.advance(timedelta(hours=1))
    second = await _shred(toolkit_engine, keyring, subject)

    assert first is not None
    assert first.key_id == key_id
    assert first.subject_id == subject
    assert first.category == MESSAGES
    assert first.shredded_at == clock.now() - timedelta(hours=1)
    assert second == first  # the earlier tombstone, not a new one
    async with toolkit_engine.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(data_keys)) == 0
        assert await conn.scalar(select(func.count()).select_from(data_key_tombstones)) == 1
        assert await keyring.tombstones(conn, subject) == [first]
        assert await keyring.is_shredded(conn, subject, MESSAGES)
        assert not await keyring.is_shredded(conn, subject, NOTES)


async def test_shredding_a_category_never_written_records_nothing(
    toolkit_engine: AsyncEngine, keyring: Keyring, subject: uuid.UUID
) -> None:
    assert await _shred(toolkit_engine, keyring, subject) is None
    async with toolkit_engine.connect() as conn:
        assert await keyring.tombstones(conn, subject) == []


async def test_shredding_rolls_back_with_the_callers_transaction(
    toolkit_engine: AsyncEngine, keyring: Keyring, subject: uuid.UUID
) -> None:
    ciphertext = await _encrypt(toolkit_engine, keyring, subject, "m-1")

    async with toolkit_engine.connect() as conn:
        assert await keyring.shred(conn, subject, MESSAGES) is not None
        await conn.rollback()

    assert await _decrypt(toolkit_engine, keyring, subject, "m-1", ciphertext) == BODY


async def test_writing_after_shred_is_refused(
    toolkit_engine: AsyncEngine, keyring: Keyring, another_replica: Keyring, subject: uuid.UUID
) -> None:
    await _encrypt(toolkit_engine, keyring, subject, "m-1")
    await _shred(toolkit_engine, keyring, subject)

    for writer in (keyring, another_replica):
        with pytest.raises(DataKeyShredded) as raised:
            await _encrypt(toolkit_engine, writer, subject, "m-2")
        assert BODY.decode() not in str(raised.value)
    async with toolkit_engine.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(data_keys)) == 0


@pytest.mark.parametrize("moved_to", ["record", "subject", "category", "service"])
async def test_ciphertext_moved_elsewhere_fails_with_context_mismatch(
    toolkit_engine: AsyncEngine,
    keyring: Keyring,
    keks: CountingKeks,
    clock: FrozenClock,
    subject: uuid.UUID,
    moved_to: str,
) -> None:
    other_subject = uuid7()
    ciphertext = await _encrypt(toolkit_engine, keyring, subject, "m-1")
    # The other subject and category have keys of their own, and one without any key at all.
    await _encrypt(toolkit_engine, keyring, other_subject, "m-9")
    await _encrypt(toolkit_engine, keyring, subject, "n-1", category=NOTES)
    reader, record, where, category = keyring, "m-1", subject, MESSAGES
    if moved_to == "record":
        record = "m-2"
    elif moved_to == "subject":
        where = other_subject
    elif moved_to == "category":
        category = NOTES
    else:
        reader = Keyring("billing", keks, clock)

    with pytest.raises(CiphertextContextMismatch):
        await _decrypt(toolkit_engine, reader, where, record, ciphertext, category=category)
    with pytest.raises(CiphertextContextMismatch):
        await _decrypt(toolkit_engine, reader, uuid7(), record, ciphertext, category=category)


async def test_tampered_ciphertext_fails(
    toolkit_engine: AsyncEngine, keyring: Keyring, subject: uuid.UUID
) -> None:
    ciphertext = await _encrypt(toolkit_engine, keyring, subject, "m-1")

    for position in (1, 20, 30, len(ciphertext) - 1):  # key id, nonce, body, tag
        tampered = bytearray(ciphertext)
        tampered[position] ^= 0x01
        with pytest.raises(CiphertextContextMismatch):
            await _decrypt(toolkit_engine, keyring, subject, "m-1", bytes(tampered))
    with pytest.raises(MalformedCiphertext):
        await _decrypt(toolkit_engine, keyring, subject, "m-1", b"\x02" + ciphertext[1:])
    with pytest.raises(MalformedCiphertext):
        await _decrypt(toolkit_engine, keyring, subject, "m-1", ciphertext[:40])


async def test_data_stays_readable_across_a_kek_rotation(
    toolkit_engine: AsyncEngine,
    keyring: Keyring,
    keks: CountingKeks,
    key_file: LocalKeyFile,
    clock: FrozenClock,
    subject: uuid.UUID,
) -> None:
    ciphertexts = {
        (s, f"m-{n}"): await _encrypt(toolkit_engine, keyring, s, f"m-{n}")
        for n, s in enumerate([subject, uuid7(), uuid7(), uuid7(), uuid7()])
    }
    async with toolkit_engine.connect() as conn:
        before = (await conn.execute(select(data_keys).order_by(data_keys.c.key_id))).all()

    new_version = key_file.rotate()
    async with toolkit_engine.connect() as conn:
        assert await keyring.rewrap_all(conn, batch_size=2) == 5
        assert await keyring.rewrap_all(conn, batch_size=2) == 0
    key_file.retire(1)

    async with toolkit_engine.connect() as conn:
        after = (await conn.execute(select(data_keys).order_by(data_keys.c.key_id))).all()
    assert [row.key_id for row in after] == [row.key_id for row in before]
    assert {row.kek_version for row in after} == {new_version}
    assert all(a.wrapped_key != b.wrapped_key for a, b in zip(after, before, strict=True))
    restarted = Keyring("messaging", keks, clock)  # nothing cached from before the rotation
    for (s, record), ciphertext in ciphertexts.items():
        assert await _decrypt(toolkit_engine, restarted, s, record, ciphertext) == BODY
    # New keys are wrapped under the new version.
    await _encrypt(toolkit_engine, restarted, uuid7(), "m-new")
    async with toolkit_engine.connect() as conn:
        versions = set((await conn.scalars(select(data_keys.c.kek_version))).all())
    assert versions == {new_version}


async def test_retiring_a_kek_version_before_rewrap_makes_data_unreadable(
    toolkit_engine: AsyncEngine,
    keyring: Keyring,
    keks: CountingKeks,
    key_file: LocalKeyFile,
    clock: FrozenClock,
    subject: uuid.UUID,
) -> None:
    ciphertext = await _encrypt(toolkit_engine, keyring, subject, "m-1")

    key_file.rotate()
    key_file.retire(1)

    restarted = Keyring("messaging", keks, clock)
    with pytest.raises(RetiredKekVersion) as raised:
        await _decrypt(toolkit_engine, restarted, subject, "m-1", ciphertext)
    assert raised.value.version == 1
    async with toolkit_engine.connect() as conn:
        with pytest.raises(RetiredKekVersion):
            await keyring.rewrap_all(conn)


async def test_concurrent_first_encrypts_end_with_one_key(
    toolkit_engine: AsyncEngine, keks: CountingKeks, clock: FrozenClock, subject: uuid.UUID
) -> None:
    replicas = [Keyring("messaging", keks, clock) for _ in range(4)]

    ciphertexts = await asyncio.gather(
        *(
            _encrypt(toolkit_engine, replica, subject, f"m-{n}")
            for n, replica in enumerate(replicas)
        )
    )

    async with toolkit_engine.connect() as conn:
        key_ids = (await conn.scalars(select(data_keys.c.key_id))).all()
    assert len(key_ids) == 1
    for n, ciphertext in enumerate(ciphertexts):
        assert uuid.UUID(bytes=ciphertext[1:17]) == key_ids[0]
        for replica in replicas:
            assert await _decrypt(toolkit_engine, replica, subject, f"m-{n}", ciphertext) == BODY


async def test_shredding_concurrent_with_a_first_write_never_leaves_a_key_behind(
    toolkit_engine: AsyncEngine, keyring: Keyring, another_replica: Keyring, subject: uuid.UUID
) -> None:
    await _encrypt(toolkit_engine, keyring, subject, "m-1", category=NOTES)
    for round_ in range(5):
        category = f"{MESSAGES}.{round_}"
        write = _encrypt(toolkit_engine, another_replica, subject, "m-2", category=category)
        results = await asyncio.gather(
            write, _shred(toolkit_engine, keyring, subject, category), return_exceptions=True
        )
        async with toolkit_engine.connect() as conn:
            live = await conn.scalar(
                select(func.count())
                .select_from(data_keys)
                .where(data_keys.c.subject_id == subject, data_keys.c.category == category)
            )
            shredded = await keyring.is_shredded(conn, subject, category)
        # Either the write came first and the key was shredded, or the shredding found nothing.
        assert (live, shredded) in {(0, True), (1, False)}
        assert not isinstance(results[0], Exception) or isinstance(results[0], DataKeyShredded)


def test_erased_is_a_falsy_singleton_with_a_clear_repr() -> None:
    assert Erased() is ERASED
    assert not ERASED
    assert repr(ERASED) == "ERASED"


# --- a new key after a shredding, only when the writer asks -----------------------------------


async def _encrypt_after_shredding(
    engine: AsyncEngine, keyring: Keyring, subject: uuid.UUID, record_id: str, plaintext: bytes
) -> bytes:
    async with engine.begin() as conn:
        return await keyring.encrypt(
            conn, subject, MESSAGES, record_id, plaintext, new_key_after_shredding=True
        )


async def test_a_writer_that_asks_gets_a_new_key_and_the_shredded_one_stays_erased(
    toolkit_engine: AsyncEngine, keyring: Keyring, another_replica: Keyring, subject: uuid.UUID
) -> None:
    before = await _encrypt(toolkit_engine, keyring, subject, "m-1")
    old_key = await _key_row(toolkit_engine, subject, MESSAGES)  # as a stale copy would hold it
    tombstone = await _shred(toolkit_engine, keyring, subject)
    assert tombstone is not None

    # The default stays: nothing new is written for the erased person unless asked for.
    with pytest.raises(DataKeyShredded):
        await _encrypt(toolkit_engine, another_replica, subject, "m-2")
    after = await _encrypt_after_shredding(toolkit_engine, another_replica, subject, "m-2", BODY)
    # Once the new key is live, every write uses it, asked for or not.
    later = await _encrypt(toolkit_engine, keyring, subject, "m-3", b"later")

    new_key = await _key_row(toolkit_engine, subject, MESSAGES)
    assert new_key.key_id != old_key.key_id
    assert [uuid.UUID(bytes=c[1:17]) for c in (before, after, later)] == [
        old_key.key_id,
        new_key.key_id,
        new_key.key_id,
    ]
    for reader in (keyring, another_replica):
        assert await _decrypt(toolkit_engine, reader, subject, "m-1", before) is ERASED
        assert await _decrypt(toolkit_engine, reader, subject, "m-2", after) == BODY
        assert await _decrypt(toolkit_engine, reader, subject, "m-3", later) == b"later"
    async with toolkit_engine.connect() as conn:
        assert await keyring.tombstones(conn, subject) == [tombstone]
        assert await keyring.is_shredded(conn, subject, MESSAGES)
        assert await conn.scalar(select(func.count()).select_from(data_keys)) == 1
    # Each value is bound to the key that sealed it: neither key opens the other's value.
    with pytest.raises(CiphertextContextMismatch):
        keyring.opener(new_key, subject, MESSAGES).open("m-1", before)
    with pytest.raises(CiphertextContextMismatch):
        keyring.opener(old_key, subject, MESSAGES).open("m-2", after)
    # A new value relabelled with the shredded key's id reads as erased, never as plaintext.
    relabelled = after[:1] + old_key.key_id.bytes + after[17:]
    assert await _decrypt(toolkit_engine, keyring, subject, "m-2", relabelled) is ERASED


async def test_the_new_key_can_be_shredded_in_turn(
    toolkit_engine: AsyncEngine, keyring: Keyring, clock: FrozenClock, subject: uuid.UUID
) -> None:
    first = await _encrypt(toolkit_engine, keyring, subject, "m-1")
    await _shred(toolkit_engine, keyring, subject)
    second = await _encrypt_after_shredding(toolkit_engine, keyring, subject, "m-2", BODY)
    clock.advance(timedelta(days=1))

    tombstone = await _shred(toolkit_engine, keyring, subject)

    assert tombstone is not None and tombstone.key_id == uuid.UUID(bytes=second[1:17])
    assert await _decrypt(toolkit_engine, keyring, subject, "m-1", first) is ERASED
    assert await _decrypt(toolkit_engine, keyring, subject, "m-2", second) is ERASED
    async with toolkit_engine.connect() as conn:
        shredded = [t.key_id for t in await keyring.tombstones(conn, subject)]
    assert shredded == [uuid.UUID(bytes=first[1:17]), tombstone.key_id]
    with pytest.raises(DataKeyShredded):
        await _encrypt(toolkit_engine, keyring, subject, "m-3")


async def test_concurrent_writers_asking_for_a_new_key_end_with_one(
    toolkit_engine: AsyncEngine, keks: CountingKeks, clock: FrozenClock, subject: uuid.UUID
) -> None:
    replicas = [Keyring("messaging", keks, clock) for _ in range(4)]
    await _encrypt(toolkit_engine, replicas[0], subject, "m-0")
    await _shred(toolkit_engine, replicas[0], subject)

    ciphertexts = await asyncio.gather(
        *(
            _encrypt_after_shredding(toolkit_engine, replica, subject, f"m-{n}", BODY)
            for n, replica in enumerate(replicas, start=1)
        )
    )

    async with toolkit_engine.connect() as conn:
        key_ids = (await conn.scalars(select(data_keys.c.key_id))).all()
    assert len(key_ids) == 1
    assert {uuid.UUID(bytes=c[1:17]) for c in ciphertexts} == set(key_ids)


async def test_a_listing_joined_on_each_values_key_reads_both_generations(
    messages_engine: AsyncEngine, keyring: Keyring, keks: CountingKeks, clock: FrozenClock
) -> None:
    sender, other = uuid7(), uuid7()
    await _write_messages(messages_engine, keyring, sender, 2)
    await _write_messages(messages_engine, keyring, other, 1)
    await _shred(messages_engine, keyring, sender)
    async with messages_engine.begin() as conn:
        message_id = uuid7()
        body = await keyring.encrypt(
            conn, sender, MESSAGES, str(message_id), b"anew", new_key_after_shredding=True
        )
        await conn.execute(
            messages.insert().values(message_id=message_id, sender_id=sender, body=body)
        )
        # A value too short to name a key finds none (and is refused as malformed, not a 500).
        await conn.execute(
            messages.insert().values(message_id=uuid7(), sender_id=other, body=b"\x01")
        )
    statement = join_data_keys(
        select(messages.c.message_id, messages.c.sender_id, messages.c.body).order_by(
            messages.c.message_id
        ),
        messages.c.sender_id,
        MESSAGES,
        ciphertext_column=messages.c.body,
    )
    reader = Keyring("messaging", keks, clock)
    bodies: dict[uuid.UUID, list[object]] = {}
    async with messages_engine.connect() as conn:
        rows = (await conn.execute(statement)).all()
    for row in rows:
        opener = reader.opener(WrappedDataKey.from_row(row), row.sender_id, MESSAGES)
        try:
            body_or_erased: object = opener.open(str(row.message_id), bytes(row.body))
        except MalformedCiphertext:
            body_or_erased = "malformed"
        bodies.setdefault(row.sender_id, []).append(body_or_erased)

    assert bodies[sender] == [ERASED, ERASED, b"anew"]
    assert bodies[other] == [b"body 0", "malformed"]


async def test_an_expiry_answered_already_leaves_the_newer_key_alone(
    toolkit_engine: AsyncEngine, keyring: Keyring, clock: FrozenClock, subject: uuid.UUID
) -> None:
    await _encrypt(toolkit_engine, keyring, subject, "m-1")
    due_at = clock.now()
    clock.advance(timedelta(seconds=5))
    async with toolkit_engine.begin() as conn:
        first = await keyring.shred(conn, subject, MESSAGES, unless_shredded_since=due_at)
    assert first is not None
    clock.advance(timedelta(minutes=1))
    async with toolkit_engine.begin() as conn:
        later = await keyring.encrypt(
            conn, subject, MESSAGES, "m-2", b"said since", new_key_after_shredding=True
        )

    # The same expiry again: answered by the first shredding, the newer key stays.
    async with toolkit_engine.begin() as conn:
        again = await keyring.shred(conn, subject, MESSAGES, unless_shredded_since=due_at)
    assert again == first
    assert await _decrypt(toolkit_engine, keyring, subject, "m-2", later) == b"said since"

    # An expiry due after that shredding covers the newer key: it goes too.
    async with toolkit_engine.begin() as conn:
        newer = await keyring.shred(conn, subject, MESSAGES, unless_shredded_since=clock.now())
    assert newer is not None and newer.key_id != first.key_id
    assert await _decrypt(toolkit_engine, keyring, subject, "m-2", later) is ERASED
