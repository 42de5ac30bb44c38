"""The keyring: one data key per (person, category), and crypto-shredding by destroying it.

Every piece of personal data a service keeps is encrypted with AES-256-GCM under the data key
(DEK, 256 random bits) of the person it is about and its category (`messaging.messages`, ...).
Data keys live in the service's own database, in `data_keys`, wrapped by the service's
key-encryption key (see `confide_toolkit.kek`). Erasing a person's data in a category is
`shred`: the wrapped key row is deleted and a tombstone recorded, in one statement, whatever the
amount of data written under the key; every copy of the ciphertext is unreadable from then on.

After a shredding, `encrypt` refuses new data for that (subject, category) by default: the
erasure must stay true for whatever is written next. A caller that decided new data of the
person is wanted after all (a message in a conversation that is still open) says so with
`encrypt(..., new_key_after_shredding=True)`: a new key, with a new id, starts beside the
shredded key's tombstone. At most one key of a (subject, category) is live at a time, and what
the shredded key sealed stays unreadable: every ciphertext names its key, and the new key never
opens a value sealed by another (see `join_data_keys(..., ciphertext_column=...)` to read both
generations side by side).

Reading follows one rule: *check the key row in the same query that reads the data, cache only
the unwrap*. A service reads its rows with `join_data_keys` (one LEFT OUTER JOIN onto
`data_keys`) and opens each value with `Keyring.open`; a shredded key is simply absent from the
result, so no process can decrypt with it once the shredding committed, however warm its cache.
Each key is unwrapped once per process (a bounded LRU cache, key id → data key), so reading a
thousand messages costs one query and one unwrap. For a listing, take a `Keyring.opener` per key
of the result instead of calling `open` per row: it does the per-key work (cache lookup, key id,
associated data up to the record id) once, and `KeyOpener.open` then costs little more than
AES-GCM. The key row still comes from the query being read, row by row.

Ciphertext format (version 1), 45 bytes of overhead:

    offset  size  field
    0       1     format version, 0x01
    1       16    key id (the data key's UUID, so a reader can tell which key it needs)
    17      12    nonce (random)
    29      n+16  AES-256-GCM ciphertext of the n plaintext bytes, then the 16-byte tag

The associated data binds the header and the context: service, category, subject id and record
id. A ciphertext copied into another record, person, category or service fails to decrypt with
`CiphertextContextMismatch`.

The functions take the caller's `AsyncConnection`, so key creation and shredding commit (or roll
back) with the caller's own changes. Services run at READ COMMITTED, PostgreSQL's default.
"""

from __future__ import annotations

import os
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal, final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import (
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    PrimaryKeyConstraint,
    Row,
    Select,
    Table,
    Text,
    UniqueConstraint,
    Uuid,
    and_,
    bindparam,
    delete,
    exists,
    func,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql import ColumnElement

from confide_toolkit.clock import Clock
from confide_toolkit.database import toolkit_metadata
from confide_toolkit.ids import uuid7
from confide_toolkit.kek import KeyEncryptionKeys

DATA_KEY_BYTES = 32
FORMAT_VERSION = 0x01
_KEY_ID_BYTES = 16
_NONCE_BYTES = 12
_TAG_BYTES = 16
_HEADER_BYTES = 1 + _KEY_ID_BYTES
_SEALED_AT = _HEADER_BYTES + _NONCE_BYTES
_OVERHEAD = _HEADER_BYTES + _NONCE_BYTES + _TAG_BYTES

data_keys = Table(
    "data_keys",
    toolkit_metadata,
    Column("key_id", Uuid, primary_key=True),
    Column("subject_id", Uuid, nullable=False),
    Column("category", Text, nullable=False),
    Column("kek_version", Integer, nullable=False),
    Column("wrapped_key", LargeBinary, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("subject_id", "category"),
    # rewrap_all looks for the keys not yet under the current KEK version.
    Index("ix_data_keys_kek_version", "kek_version"),
)
"""The live wrapped data key of each (subject, category); a row exists exactly while the key is
live. A (subject, category) may have had earlier keys: they were shredded (see the tombstones)."""

data_key_tombstones = Table(
    "data_key_tombstones",
    toolkit_metadata,
    Column("subject_id", Uuid, nullable=False),
    Column("category", Text, nullable=False),
    Column("key_id", Uuid, nullable=False),
    Column("shredded_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("subject_id", "category", "key_id"),
)
"""What was shredded and when: the evidence for erasure certificates, the reason new writes for
a shredded (subject, category) are refused unless the writer asks for a new key, and how a value
sealed by a shredded key is told from one that does not belong where it was found."""


class KeyringError(Exception):
    """A keyring failure. Messages carry pseudonymous ids only, never data or key material."""


class DataKeyShredded(KeyringError):
    """New data was offered for a (subject, category) whose data key was shredded.

    A shredded person must not quietly get a fresh key: the erasure would stop being true for
    whatever is written next. A caller that wants new data of the person after the erasure asks
    for it explicitly (`Keyring.encrypt(..., new_key_after_shredding=True)`)."""

    def __init__(self, subject_id: uuid.UUID, category: str) -> None:
        super().__init__(
            f"the data key of subject {subject_id} for {category} was shredded; "
            "new data for it is refused"
        )
        self.subject_id = subject_id
        self.category = category


class CiphertextRejected(KeyringError):
    """A ciphertext cannot be opened here; it is never a sign of erasure (that is `ERASED`)."""


class MalformedCiphertext(CiphertextRejected):
    """The bytes are not a keyring ciphertext of a known format version."""


class CiphertextContextMismatch(CiphertextRejected):
    """The ciphertext does not authenticate in this context: it was moved to another record,
    subject, category or service, or it was altered."""

    def __init__(self, subject_id: uuid.UUID, category: str, record_id: str) -> None:
        super().__init__(
            f"ciphertext does not belong to record {record_id!r} of subject {subject_id} in "
            f"{category} (moved from another row, or altered)"
        )
        self.subject_id = subject_id
        self.category = category
        self.record_id = record_id


@final
class Erased:
    """The value of data whose data key was shredded: an explicit answer, never an exception.

    There is exactly one instance, `ERASED`; it is falsy, so `value or placeholder` works, and
    `value is ERASED` is the precise test."""

    _instance: Erased | None = None

    def __new__(cls) -> Erased:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __bool__(self) -> Literal[False]:
        return False

    def __repr__(self) -> str:
        return "ERASED"

    def __reduce__(self) -> str:
        return "ERASED"  # pickles as the module global, so identity survives a round trip


ERASED: Final = Erased()
"""The marker `decrypt` and `open` return for data whose key was shredded."""


@dataclass(frozen=True, slots=True)
class Tombstone:
    """The record that a data key was destroyed."""

    subject_id: uuid.UUID
    category: str
    key_id: uuid.UUID
    shredded_at: datetime


@dataclass(frozen=True, slots=True)
class WrappedDataKey:
    """A data key as stored: its id, the KEK version that wraps it, and the wrapped bytes."""

    key_id: uuid.UUID
    kek_version: int
    wrapped_key: bytes

    @classmethod
    def from_row(cls, row: Row[Any], name: str = "data_key") -> WrappedDataKey | None:
        """The key columns that `join_data_keys(..., name=name)` added to `row`; None when the
        outer join found no key, i.e. the key was shredded."""
        mapping = row._mapping
        key_id = mapping[f"{name}_id"]
        if key_id is None:
            return None
        return cls(key_id, mapping[f"{name}_kek_version"], bytes(mapping[f"{name}_wrapped"]))


def join_data_keys(
    statement: Select[Any],
    subject_column: ColumnElement[uuid.UUID],
    category: str,
    *,
    name: str = "data_key",
    ciphertext_column: ColumnElement[bytes] | None = None,
) -> Select[Any]:
    """`statement` with the data key of each row's subject LEFT OUTER JOINed onto it.

    Adds the columns `<name>_id`, `<name>_kek_version` and `<name>_wrapped`; read them back with
    `WrappedDataKey.from_row(row, name)` and open each value with `Keyring.open` (or, for many
    rows, with a `Keyring.opener` per key: see there). The key is read
    in the same query (the same snapshot) as the data, which is what guarantees that a key
    shredded before the query is never used. Give each category its own `name` to join several
    onto one query. The join goes onto the statement's leftmost FROM, which must therefore be
    (or reach) the table of `subject_column`::

        statement = join_data_keys(
            select(messages.c.message_id, messages.c.sender_id, messages.c.body)
            .where(messages.c.conversation_id == conversation_id),
            messages.c.sender_id,
            "messaging.messages",
        )
        for row in await conn.execute(statement):
            body = keyring.open(
                WrappedDataKey.from_row(row), row.sender_id, "messaging.messages",
                str(row.message_id), row.body,
            )

    Where a (subject, category) may have had several keys over time (the caller encrypts with
    `new_key_after_shredding=True`), pass the column of the values as `ciphertext_column`: each
    row then gets the live key only if that key sealed its value (the key id in the value's
    header), so values of a shredded earlier key read as `ERASED` beside the newer values instead
    of failing against a key that never sealed them. In that form a value copied in from another
    subject or category also finds no key and reads as `ERASED` (it never decrypts either way);
    a value copied from another record under the same key still fails to authenticate.
    """
    keys = data_keys.alias(name)
    condition = and_(keys.c.subject_id == subject_column, keys.c.category == category)
    if ciphertext_column is not None:
        # Compared as bytes (the header's 16 bytes after the format version), so a value too short
        # to carry a key id simply matches nothing; the (subject, category) index finds the row.
        condition = and_(
            condition,
            func.uuid_send(keys.c.key_id) == func.substr(ciphertext_column, 2, _KEY_ID_BYTES),
        )
    return statement.outerjoin(keys, condition).add_columns(
        keys.c.key_id.label(f"{name}_id"),
        keys.c.kek_version.label(f"{name}_kek_version"),
        keys.c.wrapped_key.label(f"{name}_wrapped"),
    )


class _UnwrappedKeys:
    """A bounded LRU cache key id → AES-GCM instance of the unwrapped data key.

    It holds only the result of unwrapping; whether a key may be used is decided by the key row of
    the query at hand, never by the cache."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._entries: OrderedDict[uuid.UUID, AESGCM] = OrderedDict()

    def get(self, key_id: uuid.UUID) -> AESGCM | None:
        aead = self._entries.get(key_id)
        if aead is not None:
            self._entries.move_to_end(key_id)
        return aead

    def put(self, key_id: uuid.UUID, aead: AESGCM) -> None:
        if self._size <= 0:
            return
        self._entries[key_id] = aead
        self._entries.move_to_end(key_id)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)

    def evict(self, key_id: uuid.UUID) -> None:
        self._entries.pop(key_id, None)

    def __len__(self) -> int:
        return len(self._entries)


@final
class KeyOpener:
    """Opens the values of one query's rows that share one data key; see `Keyring.opener`.

    Built once per key per query; `open` then does only the per-row work: compare the
    ciphertext's header with the key's (bytes, no UUID), append the record id to the precomputed
    associated data, and run AES-GCM with the key resolved once (lazily, on the first value that
    names it, so a mismatching or malformed value never costs an unwrap). It answers exactly as
    `Keyring.open` with the same arguments would, which is implemented on top of it."""

    __slots__ = (
        "_aead",
        "_header",
        "_keyring",
        "_prefix",
        "_wrapped",
        "category",
        "key_id",
        "subject_id",
    )

    def __init__(
        self,
        keyring: Keyring,
        wrapped: WrappedDataKey | None,
        subject_id: uuid.UUID,
        category: str,
    ) -> None:
        self.key_id: Final = None if wrapped is None else wrapped.key_id
        """The id of the key row this opener was built from; None when the query found none.
        Compare it with a row's `<name>_id` column to tell whether the opener serves that row."""
        self.subject_id: Final = subject_id
        self.category: Final = category
        self._keyring = keyring
        self._wrapped = wrapped
        self._aead: AESGCM | None = None
        # None when the query found no key: no ciphertext header equals it, so every value takes
        # the slow path of `open` and reads as ERASED.
        self._header: bytes | None = None
        self._prefix = b""
        if wrapped is not None:
            self._header = bytes([FORMAT_VERSION]) + wrapped.key_id.bytes
            self._prefix = keyring._associated_prefix(self._header, subject_id, category)

    def open(self, record_id: str, ciphertext: bytes) -> bytes | Erased:
        """The plaintext of `ciphertext`, stored in record `record_id` of this opener's subject
        and category, or `ERASED` if the query found no key. Raises `CiphertextContextMismatch`
        for a value encrypted under another key, moved from another record or altered, and
        `MalformedCiphertext` for bytes that are not a keyring ciphertext."""
        if ciphertext[:_HEADER_BYTES] != self._header or len(ciphertext) < _OVERHEAD:
            _check_format(ciphertext)
            if self._wrapped is None:
                return ERASED
            raise CiphertextContextMismatch(self.subject_id, self.category, record_id)
        aead = self._aead
        if aead is None:
            assert self._wrapped is not None  # a header matched, so there is a key
            aead = self._aead = self._keyring._aead(self._wrapped)
        record = record_id.encode()
        try:
            return aead.decrypt(
                ciphertext[_HEADER_BYTES:_SEALED_AT],
                ciphertext[_SEALED_AT:],
                self._prefix + len(record).to_bytes(4, "big") + record,
            )
        except InvalidTag:
            raise CiphertextContextMismatch(self.subject_id, self.category, record_id) from None


def _length_prefixed(*parts: bytes) -> bytes:
    # Length prefixes make the encoding unambiguous: ("a.b", "c") never equals ("a", "b.c").
    return b"".join(len(part).to_bytes(4, "big") + part for part in parts)


def _lock_key(subject_id: uuid.UUID, category: str) -> ColumnElement[int]:
    return func.hashtextextended(literal(f"confide.keyring:{subject_id}:{category}"), 0)


class Keyring:
    """A service's data keys: encrypt, decrypt, shred, and re-wrap on KEK rotation.

    One instance per process, shared by every request: it holds the bounded cache of unwrapped
    keys (`cache_size` entries, 32 bytes of key each)."""

    def __init__(
        self, service: str, keks: KeyEncryptionKeys, clock: Clock, cache_size: int = 10_000
    ) -> None:
        self.service = service
        self.keks = keks
        self._clock = clock
        self._unwrapped = _UnwrappedKeys(cache_size)

    async def encrypt(
        self,
        conn: AsyncConnection,
        subject_id: uuid.UUID,
        category: str,
        record_id: str,
        plaintext: bytes,
        *,
        new_key_after_shredding: bool = False,
    ) -> bytes:
        """`plaintext` encrypted under the data key of (subject, category), bound to this record.

        Creates the data key on first use (in the caller's transaction; concurrent first writers
        end with one key). Raises `DataKeyShredded` if the key was shredded, unless the caller
        decided that new data of this person is wanted after the erasure and passes
        `new_key_after_shredding=True`: a new key is then created (once, as on first use) and
        used from then on, while the shredded key stays destroyed and its tombstone stays, so
        what it sealed still reads as `ERASED`. Readers of such a category join each value's own
        key (`join_data_keys(..., ciphertext_column=...)`)."""
        key = await self._data_key_for_writing(
            conn, subject_id, category, new_key_after_shredding=new_key_after_shredding
        )
        header = bytes([FORMAT_VERSION]) + key.key_id.bytes
        # A random 96-bit nonce is safe for up to 2^32 encryptions under one key, far beyond
        # what one person writes in one category.
        nonce = os.urandom(_NONCE_BYTES)
        associated = self._associated_prefix(header, subject_id, category) + _length_prefixed(
            record_id.encode()
        )
        return header + nonce + self._aead(key).encrypt(nonce, plaintext, associated)

    async def decrypt(
        self,
        conn: AsyncConnection,
        subject_id: uuid.UUID,
        category: str,
        record_id: str,
        ciphertext: bytes,
    ) -> bytes | Erased:
        """The plaintext of one value, or `ERASED` if its data key was shredded.

        Reads the row of the key the ciphertext names now, after the caller read the ciphertext,
        so a key shredded before this call is never used (and a value sealed by a shredded key
        reads as `ERASED` even when a newer key of the subject is live). Raises
        `CiphertextContextMismatch` for a ciphertext that does not belong to this record (or was
        altered) and `MalformedCiphertext` for bytes that are not a keyring ciphertext. To read
        many values, join the keys onto the query instead (`join_data_keys` and `open`)."""
        key_id = self._key_id_of(ciphertext)
        row = (
            await conn.execute(
                select(data_keys.c.key_id, data_keys.c.kek_version, data_keys.c.wrapped_key).where(
                    data_keys.c.subject_id == subject_id,
                    data_keys.c.category == category,
                    data_keys.c.key_id == key_id,
                )
            )
        ).first()
        if row is not None:
            return self.open(
                WrappedDataKey(row.key_id, row.kek_version, bytes(row.wrapped_key)),
                subject_id,
                category,
                record_id,
                ciphertext,
            )
        # The key it names is not live here. It is erasure only if this very key was shredded
        # for this subject and category; otherwise the ciphertext was moved here from elsewhere.
        shredded = await conn.scalar(
            select(
                exists().where(
                    data_key_tombstones.c.subject_id == subject_id,
                    data_key_tombstones.c.category == category,
                    data_key_tombstones.c.key_id == key_id,
                )
            )
        )
        if shredded:
            return ERASED
        raise CiphertextContextMismatch(subject_id, category, record_id)

    def open(
        self,
        wrapped: WrappedDataKey | None,
        subject_id: uuid.UUID,
        category: str,
        record_id: str,
        ciphertext: bytes,
    ) -> bytes | Erased:
        """Decrypts a value with the key row read in the same query (see `join_data_keys`).

        `wrapped` is None when the query found no key, i.e. it was shredded: the answer is then
        `ERASED`. Pass only key columns from the query that read `ciphertext`, never a key kept
        from an earlier query. Raises like `decrypt`. To open many rows under one key, take an
        `opener` once per key and query instead: it does the per-key work only once."""
        return self.opener(wrapped, subject_id, category).open(record_id, ciphertext)

    def opener(
        self, wrapped: WrappedDataKey | None, subject_id: uuid.UUID, category: str
    ) -> KeyOpener:
        """A `KeyOpener` for the values of (subject, category) under the key row `wrapped`.

        `wrapped` must come from the query that reads the values, exactly as for `open` (None
        when the query found no key: every value then opens as `ERASED`); the opener lives no
        longer than that query's rows. It resolves once what is the same for every row (the
        unwrapped key, from the cache or unwrapped on first use; the key id; the associated data
        up to the record id), so opening a row costs little more than AES-GCM itself::

            opener: KeyOpener | None = None
            for row in await conn.execute(statement):  # built with join_data_keys
                if opener is None or opener.key_id != row.data_key_id:
                    opener = keyring.opener(
                        WrappedDataKey.from_row(row), person, "messaging.messages"
                    )
                body = opener.open(str(row.message_id), row.body)
        """
        return KeyOpener(self, wrapped, subject_id, category)

    async def shred(
        self,
        conn: AsyncConnection,
        subject_id: uuid.UUID,
        category: str,
        *,
        unless_shredded_since: datetime | None = None,
    ) -> Tombstone | None:
        """Destroys the data key of (subject, category): deletes its wrapped row and records a
        tombstone, in one statement of the caller's transaction. From its commit on, everything
        written under the key reads as `ERASED` and new writes are refused (unless a writer asks
        for a new key: see `encrypt`).

        Idempotent: shredding again returns the tombstone of the earlier shredding (so a
        redelivered erasure reports the same key id and time) — as long as no writer started a
        new key since; if one did, that key is live and this shreds it. Returns None when the
        (subject, category) never had a key; nothing is recorded then, and a later write creates
        a key as for anyone else. The cost is one row, whatever the amount of data.

        `unless_shredded_since`: an expiry answered already. When a key of (subject, category)
        was shredded at or after that time (an expiry due then, emitted again because its answer
        came late), the earlier tombstone is returned and a newer live key is left alone: what
        was written under it came after the expiry, which it does not cover."""
        await self._lock(conn, subject_id, category)
        if unless_shredded_since is not None:
            earlier = await self._latest_tombstone(conn, subject_id, category)
            if earlier is not None and earlier.shredded_at >= unless_shredded_since:
                return earlier
        destroyed = (
            delete(data_keys)
            .where(data_keys.c.subject_id == subject_id, data_keys.c.category == category)
            .returning(data_keys.c.key_id)
            .cte("destroyed")
        )
        # One statement deletes the key and records its tombstone, so neither can happen alone
        # even on a connection in autocommit mode.
        recorded = (
            await conn.execute(
                insert(data_key_tombstones)
                .from_select(
                    ["subject_id", "category", "key_id", "shredded_at"],
                    select(
                        literal(subject_id, Uuid),
                        literal(category, Text),
                        destroyed.c.key_id,
                        literal(self._clock.now(), DateTime(timezone=True)),
                    ),
                )
                .returning(*data_key_tombstones.c)
            )
        ).first()
        if recorded is None:
            return await self._latest_tombstone(conn, subject_id, category)
        self._unwrapped.evict(recorded.key_id)
        return _tombstone(recorded)

    async def _latest_tombstone(
        self, conn: AsyncConnection, subject_id: uuid.UUID, category: str
    ) -> Tombstone | None:
        earlier = (
            await conn.execute(
                select(*data_key_tombstones.c)
                .where(
                    data_key_tombstones.c.subject_id == subject_id,
                    data_key_tombstones.c.category == category,
                )
                .order_by(data_key_tombstones.c.shredded_at.desc())
                .limit(1)
            )
        ).first()
        return None if earlier is None else _tombstone(earlier)

    async def tombstones(self, conn: AsyncConnection, subject_id: uuid.UUID) -> list[Tombstone]:
        """Every data key of the subject that was shredded, oldest first."""
        rows = await conn.execute(
            select(*data_key_tombstones.c)
            .where(data_key_tombstones.c.subject_id == subject_id)
            .order_by(data_key_tombstones.c.shredded_at, data_key_tombstones.c.category)
        )
        return [_tombstone(row) for row in rows]

    async def is_shredded(
        self, conn: AsyncConnection, subject_id: uuid.UUID, category: str
    ) -> bool:
        """Whether a data key of (subject, category) was ever shredded (a newer key that a
        writer asked for with `new_key_after_shredding` may be live beside its tombstone)."""
        return bool(
            await conn.scalar(
                select(
                    exists().where(
                        data_key_tombstones.c.subject_id == subject_id,
                        data_key_tombstones.c.category == category,
                    )
                )
            )
        )

    async def rewrap_all(self, conn: AsyncConnection, batch_size: int = 500) -> int:
        """Re-wraps every data key not yet under the current KEK version; returns how many.

        Data is untouched: a data key keeps its id and its bytes, only its wrapping changes.
        Commits after each batch, so a long rotation never holds many row locks (shredding waits
        on a locked key) and resumes where it stopped if interrupted; run it on a connection of
        its own (`engine.connect()`), not inside a unit of work or `engine.begin()`, where
        SQLAlchemy refuses the inner commit. Keys locked by a concurrent writer or shredding are
        skipped until the next batch. Raises `RetiredKekVersion` if a key is still wrapped under
        a version that was already retired: that key is lost, and it is named in the chained
        error's notes."""
        if batch_size <= 0:
            raise ValueError("batch_size must be positive")
        target = self.keks.current_version
        rewrapped = 0
        while True:
            rows = (
                await conn.execute(
                    select(data_keys.c.key_id, data_keys.c.kek_version, data_keys.c.wrapped_key)
                    .where(data_keys.c.kek_version != target)
                    .order_by(data_keys.c.key_id)
                    .limit(batch_size)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            if not rows:
                await conn.commit()
                return rewrapped
            changes: list[dict[str, Any]] = []
            for row in rows:
                try:
                    data_key = self.keks.unwrap(row.kek_version, bytes(row.wrapped_key))
                except Exception as error:
                    error.add_note(f"data key {row.key_id} could not be re-wrapped")
                    raise
                version, wrapped_key = self.keks.wrap(data_key)
                changes.append(
                    {"b_key_id": row.key_id, "b_version": version, "b_wrapped": wrapped_key}
                )
            await conn.execute(
                update(data_keys)
                .where(data_keys.c.key_id == bindparam("b_key_id"))
                .values(kek_version=bindparam("b_version"), wrapped_key=bindparam("b_wrapped")),
                changes,
            )
            await conn.commit()
            rewrapped += len(changes)

    async def _data_key_for_writing(
        self,
        conn: AsyncConnection,
        subject_id: uuid.UUID,
        category: str,
        *,
        new_key_after_shredding: bool,
    ) -> WrappedDataKey:
        live = await self._live_key(conn, subject_id, category)
        if live is not None:
            return live
        # Creating a key races with other creators and with shredding. The transaction-scoped
        # advisory lock (also taken by `shred`) orders them, so a key is never created after a
        # shredding of the same (subject, category) committed, unless the writer asked for a new
        # key; ON CONFLICT settles creators that do not hold it.
        await self._lock(conn, subject_id, category)
        if not new_key_after_shredding and await self.is_shredded(conn, subject_id, category):
            raise DataKeyShredded(subject_id, category)
        data_key = AESGCM.generate_key(bit_length=8 * DATA_KEY_BYTES)
        kek_version, wrapped_key = self.keks.wrap(data_key)
        key_id = uuid7()
        created = await conn.scalar(
            pg_insert(data_keys)
            .values(
                key_id=key_id,
                subject_id=subject_id,
                category=category,
                kek_version=kek_version,
                wrapped_key=wrapped_key,
                created_at=self._clock.now(),
            )
            .on_conflict_do_nothing(index_elements=["subject_id", "category"])
            .returning(data_keys.c.key_id)
        )
        if created is not None:
            self._unwrapped.put(key_id, AESGCM(data_key))
            return WrappedDataKey(key_id, kek_version, wrapped_key)
        live = await self._live_key(conn, subject_id, category)
        if live is None:  # another writer's key was shredded in between
            raise DataKeyShredded(subject_id, category)
        return live

    async def _live_key(
        self, conn: AsyncConnection, subject_id: uuid.UUID, category: str
    ) -> WrappedDataKey | None:
        row = (
            await conn.execute(
                select(data_keys.c.key_id, data_keys.c.kek_version, data_keys.c.wrapped_key).where(
                    data_keys.c.subject_id == subject_id, data_keys.c.category == category
                )
            )
        ).first()
        if row is None:
            return None
        return WrappedDataKey(row.key_id, row.kek_version, bytes(row.wrapped_key))

    async def _lock(self, conn: AsyncConnection, subject_id: uuid.UUID, category: str) -> None:
        await conn.execute(select(func.pg_advisory_xact_lock(_lock_key(subject_id, category))))

    def _aead(self, key: WrappedDataKey) -> AESGCM:
        aead = self._unwrapped.get(key.key_id)
        if aead is None:
            aead = AESGCM(self.keks.unwrap(key.kek_version, key.wrapped_key))
            self._unwrapped.put(key.key_id, aead)
        return aead

    def _associated_prefix(self, header: bytes, subject_id: uuid.UUID, category: str) -> bytes:
        # The associated data is this prefix followed by the length-prefixed record id: the only
        # part that changes from row to row under one key.
        return _length_prefixed(
            b"confide.keyring",
            header,
            self.service.encode(),
            category.encode(),
            subject_id.bytes,
        )

    @staticmethod
    def _key_id_of(ciphertext: bytes) -> uuid.UUID:
        _check_format(ciphertext)
        return uuid.UUID(bytes=bytes(ciphertext[1:_HEADER_BYTES]))


def _check_format(ciphertext: bytes) -> None:
    if len(ciphertext) < _OVERHEAD:
        raise MalformedCiphertext("too short to be a keyring ciphertext")
    if ciphertext[0] != FORMAT_VERSION:
        raise MalformedCiphertext(f"unknown ciphertext format version {ciphertext[0]}")


def _tombstone(row: Row[Any]) -> Tombstone:
    return Tombstone(row.subject_id, row.category, row.key_id, row.shredded_at)
