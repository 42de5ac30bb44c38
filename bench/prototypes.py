"""Prototypes of toolkit changes, measured by `python -m bench --only pipeline --consumer ...`.

They are copies beside the toolkit, not the toolkit: the figures in docs/benchmarks.md come from
the toolkit as it is (`--consumer toolkit`, the default) unless the command says otherwise.

- `deferred-commit`: `subscriptions.kafka_record_handler` without a synchronous Kafka offset
  commit per record. The record's effect is durable when `consume` returns; the offset (of
  records already applied, never beyond) is committed by a background flush at most `interval`
  later. A crash in between redelivers a few applied records, which the consumer's position
  already recognises (DUPLICATE).
- (the `batch` prototype is now the toolkit's own: `InboxConsumer.consume_batch` with
  `subscriptions.kafka_batch_handler`, as `Service` subscribes; so is committing offsets in the
  background, `subscriptions.DeferredOffsetCommits`, for batches.)"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import TopicPartition
from confide_toolkit.inbox import InboxConsumer

logger = logging.getLogger(__name__)


def deferred_commit_handler(
    consumer: InboxConsumer, interval: float = 0.05
) -> Callable[[Any], Awaitable[None]]:
    """Like `subscriptions.kafka_record_handler`, committing offsets in the background."""
    pending: dict[TopicPartition, int] = {}
    flushing: list[asyncio.Task[None]] = []

    async def flush(kafka_consumer: Any) -> None:
        await asyncio.sleep(interval)
        offsets = dict(pending)
        pending.clear()
        flushing.clear()
        # After a rebalance the partition may be someone else's: its records come again, and
        # the inbox makes them harmless.
        with contextlib.suppress(Exception):
            await kafka_consumer.commit(offsets)

    async def on_record(message: Any) -> None:
        # One ConsumerRecord: this handler serves a per-record subscriber (a batch one would
        # hand over a tuple of them).
        record: Any = message.raw_message
        await consumer.consume(record)
        pending[TopicPartition(record.topic, record.partition)] = record.offset + 1
        if not flushing:
            flushing.append(asyncio.create_task(flush(message.consumer)))

    return on_record


class KeyOpener:
    """Prototype of a `Keyring.opener(wrapped, subject_id, category)`: what is the same for every
    row under one data key (the unwrapped AEAD, the key id to compare, the associated data up to
    the record id) computed once per query instead of once per row, as `Keyring.open` does."""

    def __init__(self, keyring: Any, wrapped: Any, subject_id: Any, category: str) -> None:
        from confide_toolkit.keyring import FORMAT_VERSION, _length_prefixed

        self._subject_id, self._category = subject_id, category
        self.key_id = wrapped.key_id
        self._key_id_bytes = wrapped.key_id.bytes
        self._aead = keyring._aead(wrapped)
        header = bytes([FORMAT_VERSION]) + self._key_id_bytes
        self._prefix = _length_prefixed(
            b"confide.keyring",
            header,
            keyring.service.encode(),
            category.encode(),
            subject_id.bytes,
        )

    def open(self, record_id: str, ciphertext: bytes) -> bytes:
        from confide_toolkit.keyring import CiphertextContextMismatch, MalformedCiphertext

        if len(ciphertext) < 45 or ciphertext[0] != 1:
            raise MalformedCiphertext("not a keyring ciphertext")
        if ciphertext[1:17] != self._key_id_bytes:
            raise CiphertextContextMismatch(self._subject_id, self._category, record_id)
        rid = record_id.encode()
        associated = self._prefix + len(rid).to_bytes(4, "big") + rid
        try:
            plaintext: bytes = self._aead.decrypt(ciphertext[17:29], ciphertext[29:], associated)
            return plaintext
        except Exception:
            raise CiphertextContextMismatch(self._subject_id, self._category, record_id) from None


async def list_encrypted_with_opener(engine: Any, keyring: Any, person: Any) -> list[Any]:
    """`bench.decryption.list_encrypted` with one `KeyOpener` per key of the query."""
    from confide_toolkit.keyring import ERASED, WrappedDataKey, join_data_keys
    from sqlalchemy import select

    from bench.decryption import CATEGORY, encrypted_messages

    statement = join_data_keys(
        select(
            encrypted_messages.c.message_id, encrypted_messages.c.sent_at, encrypted_messages.c.body
        )
        .where(encrypted_messages.c.sender_id == person)
        .order_by(encrypted_messages.c.sent_at),
        encrypted_messages.c.sender_id,
        CATEGORY,
    )
    async with engine.connect() as conn:
        rows = await conn.execute(statement)
        listing: list[tuple[Any, ...]] = []
        opener: KeyOpener | None = None
        for row in rows:
            key_id = row.data_key_id
            if key_id is None:
                listing.append((row.message_id, row.sent_at, ERASED))
                continue
            if opener is None or opener.key_id != key_id:
                opener = KeyOpener(keyring, WrappedDataKey.from_row(row), person, CATEGORY)
            body = opener.open(str(row.message_id), row.body)
            listing.append((row.message_id, row.sent_at, body.decode()))
        return listing
