"""The erasure certificates issued, as they were signed."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import (
    insert,
    select,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from confide_retention.store.tables import (
    certificates,
)

# --- certificates ----------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredCertificate:
    certificate_id: uuid.UUID
    erasure_case_id: uuid.UUID
    subject_id: uuid.UUID
    kid: str
    jws: str
    issued_at: datetime


async def add_certificate(conn: AsyncConnection, certificate: StoredCertificate) -> None:
    await conn.execute(
        insert(certificates).values(
            certificate_id=certificate.certificate_id,
            erasure_case_id=certificate.erasure_case_id,
            subject_id=certificate.subject_id,
            kid=certificate.kid,
            jws=certificate.jws,
            issued_at=certificate.issued_at,
        )
    )


async def certificate(conn: AsyncConnection, certificate_id: uuid.UUID) -> StoredCertificate | None:
    row = (
        await conn.execute(
            select(certificates).where(certificates.c.certificate_id == certificate_id)
        )
    ).first()
    if row is None:
        return None
    return StoredCertificate(
        row.certificate_id, row.erasure_case_id, row.subject_id, row.kid, row.jws, row.issued_at
    )
