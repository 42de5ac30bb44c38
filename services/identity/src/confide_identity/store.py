"""Identity's tables, the account read model (a projection of the account events, updated in
the transaction of each append) and the queries the handlers need.

Nothing here holds personal data in plaintext: profile, password hash and TOTP secret are
keyring ciphertexts; emails and client addresses appear only as keyed hashes; refresh tokens
only as SHA-256 digests; signing keys and service secrets only wrapped by the KEK."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any
from uuid import UUID

from confide_toolkit.database import NAMING_CONVENTION
from confide_toolkit.event_store import RecordedEvent
from confide_toolkit.keyring import join_data_keys
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Row,
    Table,
    Text,
    Uuid,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from confide_identity import domain

metadata = MetaData(naming_convention=NAMING_CONVENTION)

accounts = Table(
    "accounts",
    metadata,
    Column("account_id", Uuid, primary_key=True),
    Column("role", Text, nullable=False),
    Column("status", Text, nullable=False),
    # Unique while the account exists: one email, one account. Cleared by shredding, which
    # frees the address and leaves no link between it and the erased account.
    Column("email_index", Text, nullable=True, unique=True),
    Column("profile", LargeBinary, nullable=False),
    Column("password_hash", LargeBinary, nullable=False),
    Column("password_changed_at", DateTime(timezone=True), nullable=False),
    Column("totp_pending", LargeBinary, nullable=True),
    Column("totp_secret", LargeBinary, nullable=True),
    Column("registered_at", DateTime(timezone=True), nullable=False),
    Column("closed_at", DateTime(timezone=True), nullable=True),
    Column("version", Integer, nullable=False),
)
"""The read model of the account streams (rebuildable from the event store)."""

sessions = Table(
    "sessions",
    metadata,
    Column("session_id", Uuid, primary_key=True),
    Column("account_id", Uuid, nullable=False, index=True),
    Column("auth_time", DateTime(timezone=True), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
    Column("revoked_because", Text, nullable=True),
)
"""A sign-in: one refresh-token family and the access tokens issued from it."""

refresh_tokens = Table(
    "refresh_tokens",
    metadata,
    Column("token_hash", LargeBinary, primary_key=True),
    Column("session_id", Uuid, ForeignKey("sessions.session_id"), nullable=False, index=True),
    Column("issued_at", DateTime(timezone=True), nullable=False),
    Column("spent_at", DateTime(timezone=True), nullable=True),
)

sign_in_failures = Table(
    "sign_in_failures",
    metadata,
    # "email:<keyed hash>" or "address:<keyed hash>": never the email or the IP itself.
    Column("throttle_key", Text, primary_key=True),
    Column("failures", Integer, nullable=False),
    Column("window_started_at", DateTime(timezone=True), nullable=False),
    Column("locked_until", DateTime(timezone=True), nullable=True),
)

totp_steps = Table(
    "totp_steps",
    metadata,
    Column("account_id", Uuid, primary_key=True),
    Column("last_step", BigInteger, nullable=False),
)
"""The last accepted TOTP time step per account, so a code is never accepted twice."""

identity_signing_keys = Table(
    "identity_signing_keys",
    metadata,
    Column("kid", Text, primary_key=True),
    Column("kek_version", Integer, nullable=False),
    Column("wrapped_private_key", LargeBinary, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("activates_at", DateTime(timezone=True), nullable=False),
    Column("not_after", DateTime(timezone=True), nullable=True),
    Index("ix_identity_signing_keys_activates_at", "activates_at"),
)
"""Identity's private signing keys, wrapped by the KEK; their public halves go out as events."""

service_secrets = Table(
    "service_secrets",
    metadata,
    Column("name", Text, primary_key=True),
    Column("kek_version", Integer, nullable=False),
    Column("wrapped_secret", LargeBinary, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)
"""Keys of identity's own (the blind-index and address-hash keys), wrapped by the KEK."""


def unseal(sealed: domain.Sealed) -> bytes:
    """The ciphertext bytes of a base64 value from a domain event."""
    return base64.b64decode(sealed)


def seal(ciphertext: bytes) -> domain.Sealed:
    """A ciphertext as the base64 text a domain event carries."""
    return base64.b64encode(ciphertext).decode("ascii")


# --- the projection -------------------------------------------------------------------------


async def project_account(conn: AsyncConnection, recorded: RecordedEvent) -> None:
    """Apply one account event to the `accounts` read model."""
    event = recorded.event
    changes: dict[str, Any]
    match event:
        case domain.AccountRegistered():
            await conn.execute(
                accounts.insert().values(
                    account_id=event.account_id,
                    role=event.role,
                    status="active",
                    email_index=event.email_index,
                    profile=unseal(event.profile),
                    password_hash=unseal(event.password_hash),
                    password_changed_at=event.registered_at,
                    registered_at=event.registered_at,
                    version=recorded.version,
                )
            )
            return
        case domain.ProfileUpdated():
            changes = {"profile": unseal(event.profile)}
        case domain.PasswordChanged():
            changes = {
                "password_hash": unseal(event.password_hash),
                "password_changed_at": event.changed_at,
            }
        case domain.PasswordRehashed():
            changes = {"password_hash": unseal(event.password_hash)}
        case domain.TotpEnrolmentStarted():
            changes = {"totp_pending": unseal(event.secret)}
        case domain.TotpEnabled():
            changes = {"totp_secret": accounts.c.totp_pending, "totp_pending": None}
        case domain.AccountClosed():
            changes = {"status": "closed", "closed_at": event.closed_at}
        case domain.ProfileShredded():
            changes = {"status": "erased", "email_index": None}
        case _:
            raise TypeError(f"no projection for {type(event).__name__}")
    await conn.execute(
        update(accounts)
        .where(accounts.c.account_id == recorded.stream_id)
        .values(version=recorded.version, **changes)
    )


# --- queries ----------------------------------------------------------------------------------


async def account_by_email_index(conn: AsyncConnection, email_index: str) -> Row[Any] | None:
    """The account row (with its profile data key joined on) registered under that email."""
    statement = join_data_keys(
        select(accounts).where(accounts.c.email_index == email_index),
        accounts.c.account_id,
        domain.PROFILE_CATEGORY,
    )
    row: Row[Any] | None = (await conn.execute(statement)).first()
    return row


async def account_by_id(conn: AsyncConnection, account_id: UUID) -> Row[Any] | None:
    """The account row with its profile data key joined on (None for an unknown id)."""
    statement = join_data_keys(
        select(accounts).where(accounts.c.account_id == account_id),
        accounts.c.account_id,
        domain.PROFILE_CATEGORY,
    )
    row: Row[Any] | None = (await conn.execute(statement)).first()
    return row


async def email_index_taken(conn: AsyncConnection, email_index: str) -> bool:
    found = await conn.scalar(
        select(accounts.c.account_id).where(accounts.c.email_index == email_index)
    )
    return found is not None


async def accept_totp_step(conn: AsyncConnection, account_id: UUID, step: int) -> bool:
    """Record `step` as used; False when it (or a later one) was used already (a replay)."""
    proposed = insert(totp_steps).values(account_id=account_id, last_step=step)
    statement = proposed.on_conflict_do_update(
        index_elements=[totp_steps.c.account_id],
        set_={"last_step": proposed.excluded.last_step},
        where=totp_steps.c.last_step < proposed.excluded.last_step,
    ).returning(totp_steps.c.account_id)
    row: Row[Any] | None = (await conn.execute(statement)).first()
    return row is not None


async def revoke_sessions(
    conn: AsyncConnection,
    account_id: UUID,
    now: datetime,
    because: str,
    *,
    except_session: UUID | None = None,
) -> int:
    """End every live session of an account (but `except_session`); returns how many."""
    statement = (
        update(sessions)
        .where(sessions.c.account_id == account_id, sessions.c.revoked_at.is_(None))
        .values(revoked_at=now, revoked_because=because)
    )
    if except_session is not None:
        statement = statement.where(sessions.c.session_id != except_session)
    result = await conn.execute(statement)
    return int(result.rowcount or 0)
