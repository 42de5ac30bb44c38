"""`idempotent_posts`: the first answer to each (sender, Idempotency-Key)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import (
    select,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from confide_messaging.store.tables import (
    idempotent_posts,
)


@dataclass(frozen=True)
class EarlierPost:
    conversation_id: uuid.UUID
    message_id: uuid.UUID
    sent_at: datetime


async def find_earlier_post(
    conn: AsyncConnection, sender_id: uuid.UUID, idempotency_key: str
) -> EarlierPost | None:
    row = (
        await conn.execute(
            select(idempotent_posts).where(
                idempotent_posts.c.sender_id == sender_id,
                idempotent_posts.c.idempotency_key == idempotency_key,
            )
        )
    ).first()
    return None if row is None else EarlierPost(row.conversation_id, row.message_id, row.sent_at)


async def remember_post(
    conn: AsyncConnection, sender_id: uuid.UUID, idempotency_key: str, post: EarlierPost
) -> bool:
    """Remember the post made with this key; False when another transaction took the key
    first (posts to one conversation queue on its lock, so only a post to another
    conversation can)."""
    remembered = await conn.scalar(
        pg_insert(idempotent_posts)
        .values(
            sender_id=sender_id,
            idempotency_key=idempotency_key,
            conversation_id=post.conversation_id,
            message_id=post.message_id,
            sent_at=post.sent_at,
        )
        .on_conflict_do_nothing()
        .returning(idempotent_posts.c.message_id)
    )
    return remembered is not None
