"""`disclosures`: each disclosure and its one-time bundle, taken once by its download token."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import (
    insert,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from confide_messaging.store.tables import (
    disclosures,
)


@dataclass(frozen=True)
class DisclosureRecord:
    disclosure_id: uuid.UUID
    subject_id: uuid.UUID
    recipient_id: uuid.UUID
    consent_id: uuid.UUID
    data_categories: tuple[str, ...]
    disclosed_at: datetime
    expires_at: datetime


async def add_disclosure(
    conn: AsyncConnection, record: DisclosureRecord, token_sha256: bytes, sealed_bundle: bytes
) -> None:
    await conn.execute(
        insert(disclosures).values(
            disclosure_id=record.disclosure_id,
            subject_id=record.subject_id,
            recipient_id=record.recipient_id,
            consent_id=record.consent_id,
            data_categories=list(record.data_categories),
            disclosed_at=record.disclosed_at,
            expires_at=record.expires_at,
            token_sha256=token_sha256,
            sealed_bundle=sealed_bundle,
        )
    )


async def take_bundle(
    conn: AsyncConnection, disclosure_id: uuid.UUID, token_sha256: bytes, now: datetime
) -> bytes | None:
    """The sealed bundle of the disclosure if the token is its own, it was not downloaded yet
    and it has not expired; it is removed in the same statement (a second download finds
    nothing)."""
    taken = (
        select(disclosures.c.disclosure_id, disclosures.c.sealed_bundle)
        .where(
            disclosures.c.disclosure_id == disclosure_id,
            disclosures.c.token_sha256 == token_sha256,
            disclosures.c.sealed_bundle.is_not(None),
            disclosures.c.expires_at > now,
        )
        .with_for_update()
        .cte("taken")
    )
    sealed: bytes | None = await conn.scalar(
        update(disclosures)
        .where(disclosures.c.disclosure_id == taken.c.disclosure_id)
        .values(sealed_bundle=None, downloaded_at=now)
        .returning(taken.c.sealed_bundle)
    )
    return None if sealed is None else bytes(sealed)
