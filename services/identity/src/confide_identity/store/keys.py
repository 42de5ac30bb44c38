"""Identity's signing keys and service secrets, wrapped by the KEK."""

from __future__ import annotations

from datetime import datetime
from typing import Final

from confide_toolkit.auth import signing_keys
from sqlalchemy import (
    func,
    literal,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from confide_identity.store.tables import (
    identity_signing_keys,
    service_secrets,
)

# --- signing keys and service secrets ----------------------------------------------------------

_ROTATION_LOCK: Final = "confide.identity.signing-key-rotation"


async def lock_signing_key_rotation(conn: AsyncConnection) -> None:
    """Queue replicas racing to rotate the signing key, until the transaction ends."""
    await conn.execute(
        select(func.pg_advisory_xact_lock(func.hashtextextended(literal(_ROTATION_LOCK), 0)))
    )


async def newest_signing_key(conn: AsyncConnection) -> tuple[str, datetime] | None:
    """The kid and activation time of the newest signing key, active or not yet."""
    row = (
        await conn.execute(
            select(identity_signing_keys.c.kid, identity_signing_keys.c.activates_at)
            .order_by(identity_signing_keys.c.activates_at.desc())
            .limit(1)
        )
    ).first()
    return None if row is None else (row.kid, row.activates_at)


async def add_signing_key(
    conn: AsyncConnection,
    kid: str,
    kek_version: int,
    wrapped_private_key: bytes,
    now: datetime,
    activates_at: datetime,
) -> None:
    await conn.execute(
        identity_signing_keys.insert().values(
            kid=kid,
            kek_version=kek_version,
            wrapped_private_key=wrapped_private_key,
            created_at=now,
            activates_at=activates_at,
        )
    )


async def retire_signing_key(
    conn: AsyncConnection, kid: str, not_after: datetime
) -> tuple[int, bytes]:
    """Set the key's end of use; returns its KEK version and wrapped private key."""
    row = (
        await conn.execute(
            update(identity_signing_keys)
            .where(identity_signing_keys.c.kid == kid)
            .values(not_after=not_after)
            .returning(
                identity_signing_keys.c.kek_version, identity_signing_keys.c.wrapped_private_key
            )
        )
    ).one()
    return row.kek_version, bytes(row.wrapped_private_key)


async def signing_key_in_use(conn: AsyncConnection, now: datetime) -> tuple[str, int, bytes] | None:
    """The newest active signing key that the verifiers already know (its publication came back
    from Kafka into the toolkit's `signing_keys`): kid, KEK version, wrapped private key."""
    row = (
        await conn.execute(
            select(
                identity_signing_keys.c.kid,
                identity_signing_keys.c.kek_version,
                identity_signing_keys.c.wrapped_private_key,
            )
            .join(signing_keys, signing_keys.c.kid == identity_signing_keys.c.kid)
            .where(identity_signing_keys.c.activates_at <= now)
            .order_by(identity_signing_keys.c.activates_at.desc())
            .limit(1)
        )
    ).first()
    return None if row is None else (row.kid, row.kek_version, bytes(row.wrapped_private_key))


async def keep_service_secret(
    conn: AsyncConnection, name: str, kek_version: int, wrapped_secret: bytes, now: datetime
) -> tuple[int, bytes]:
    """Store the secret of that name unless one is stored already; returns the stored one's KEK
    version and wrapped bytes."""
    await conn.execute(
        insert(service_secrets)
        .values(name=name, kek_version=kek_version, wrapped_secret=wrapped_secret, created_at=now)
        .on_conflict_do_nothing(index_elements=[service_secrets.c.name])
    )
    row = (await conn.execute(select(service_secrets).where(service_secrets.c.name == name))).one()
    return row.kek_version, bytes(row.wrapped_secret)


async def rewrap_service_secret(
    conn: AsyncConnection, name: str, kek_version: int, wrapped_secret: bytes
) -> None:
    await conn.execute(
        update(service_secrets)
        .where(service_secrets.c.name == name)
        .values(kek_version=kek_version, wrapped_secret=wrapped_secret)
    )
