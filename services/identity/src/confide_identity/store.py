"""Identity's tables, the account read model (a projection of the account events, updated in
the transaction of each append), the repositories of the accounts, sessions, sign-in failures
and TOTP steps, and the statements of the signing keys and service secrets: every SQL
statement of identity.

Nothing here holds personal data in plaintext: profile, password hash and TOTP secret are
keyring ciphertexts; emails and client addresses appear only as keyed hashes; refresh tokens
only as SHA-256 digests; signing keys and service secrets only wrapped by the KEK."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final
from uuid import UUID

import psycopg
from confide_toolkit.auth import Role, signing_keys
from confide_toolkit.clock import Clock
from confide_toolkit.database import NAMING_CONVENTION
from confide_toolkit.event_store import EventStore, RecordedEvent
from confide_toolkit.keyring import WrappedDataKey, join_data_keys
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
    delete,
    func,
    literal,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement

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


# --- the accounts -----------------------------------------------------------------------------

EMAIL_INDEX_UNIQUE: Final = "uq_accounts_email_index"
"""The unique constraint (named by the naming convention) that keeps one account per email."""


@dataclass(frozen=True)
class AccountRecord:
    """One account as the read model holds it: its ciphertexts, and the profile data key they
    open with (read in the same query; None once shredded)."""

    account_id: UUID
    role: Role
    status: domain.AccountStatus
    email_index: str | None
    profile: bytes
    password_hash: bytes
    password_changed_at: datetime
    totp_pending: bytes | None
    totp_secret: bytes | None
    data_key: WrappedDataKey | None


def _account_record(row: Row[Any]) -> AccountRecord:
    return AccountRecord(
        account_id=row.account_id,
        role=row.role,
        status=row.status,
        email_index=row.email_index,
        profile=bytes(row.profile),
        password_hash=bytes(row.password_hash),
        password_changed_at=row.password_changed_at,
        totp_pending=None if row.totp_pending is None else bytes(row.totp_pending),
        totp_secret=None if row.totp_secret is None else bytes(row.totp_secret),
        data_key=WrappedDataKey.from_row(row),
    )


class Accounts:
    """The account repository: loads and saves account aggregates through the event store (the
    `accounts` read model follows in the same transaction), and reads that read model."""

    def __init__(self, clock: Clock) -> None:
        self.events = EventStore(domain.ACCOUNT_EVENTS, clock, projections=[project_account])

    async def load(
        self, conn: AsyncConnection, account_id: UUID, *, for_change: bool = False
    ) -> domain.Account | None:
        """The account as its stream stands (None for an unknown id)."""
        recorded = await self.events.load(conn, account_id, for_change=for_change)
        if not recorded:
            return None
        return domain.Account.replay((r.event for r in recorded), recorded[-1].version)

    async def load_for_change(
        self, conn: AsyncConnection, account_id: UUID
    ) -> domain.Account | None:
        """The account, locked until the transaction ends: commands on one account queue up
        instead of racing (optimistic concurrency still guards the append)."""
        return await self.load(conn, account_id, for_change=True)

    async def save(self, conn: AsyncConnection, account: domain.Account) -> list[RecordedEvent]:
        """Append the account's pending events; raises `ConcurrencyConflict` if the stream moved
        on, and `EmailAlreadyRegistered` if another account took the email meanwhile."""
        try:
            recorded = await self.events.append(
                conn, account.account_id, account.version, account.pending
            )
        except IntegrityError as error:
            # Two registrations of one email at the same moment: the unique index settles it.
            if isinstance(error.orig, psycopg.Error) and (
                error.orig.diag.constraint_name == EMAIL_INDEX_UNIQUE
            ):
                raise domain.EmailAlreadyRegistered() from None
            raise
        account.version += len(recorded)
        account.pending.clear()
        return recorded

    async def by_id(self, conn: AsyncConnection, account_id: UUID) -> AccountRecord | None:
        """The account's read-model record (None for an unknown id)."""
        return await self._record(conn, accounts.c.account_id == account_id)

    async def by_email_index(self, conn: AsyncConnection, email_index: str) -> AccountRecord | None:
        """The record of the account registered under that email (by its keyed hash)."""
        return await self._record(conn, accounts.c.email_index == email_index)

    async def email_index_taken(self, conn: AsyncConnection, email_index: str) -> bool:
        found = await conn.scalar(
            select(accounts.c.account_id).where(accounts.c.email_index == email_index)
        )
        return found is not None

    async def _record(
        self, conn: AsyncConnection, condition: ColumnElement[bool]
    ) -> AccountRecord | None:
        statement = join_data_keys(
            select(accounts).where(condition), accounts.c.account_id, domain.PROFILE_CATEGORY
        )
        row = (await conn.execute(statement)).first()
        return None if row is None else _account_record(row)


# --- sessions and refresh tokens ---------------------------------------------------------------


@dataclass(frozen=True)
class PresentedRefreshToken:
    """A refresh token found by its digest, with its session and the account's standing."""

    spent_at: datetime | None
    session_id: UUID
    account_id: UUID
    auth_time: datetime
    expires_at: datetime
    revoked_at: datetime | None
    role: Role
    account_status: domain.AccountStatus


@dataclass(frozen=True)
class SessionLifetime:
    revoked_at: datetime | None
    expires_at: datetime


class Sessions:
    """Sign-in sessions and their refresh-token families."""

    async def open(
        self,
        conn: AsyncConnection,
        session_id: UUID,
        account_id: UUID,
        auth_time: datetime,
        now: datetime,
        expires_at: datetime,
    ) -> None:
        await conn.execute(
            sessions.insert().values(
                session_id=session_id,
                account_id=account_id,
                auth_time=auth_time,
                created_at=now,
                expires_at=expires_at,
            )
        )

    async def add_refresh_token(
        self, conn: AsyncConnection, token_hash: bytes, session_id: UUID, now: datetime
    ) -> None:
        await conn.execute(
            refresh_tokens.insert().values(
                token_hash=token_hash, session_id=session_id, issued_at=now
            )
        )

    async def presented(
        self, conn: AsyncConnection, token_hash: bytes
    ) -> PresentedRefreshToken | None:
        """The refresh token with that digest, locked until the transaction ends."""
        row = (
            await conn.execute(
                select(
                    refresh_tokens.c.spent_at,
                    sessions.c.session_id,
                    sessions.c.account_id,
                    sessions.c.auth_time,
                    sessions.c.expires_at,
                    sessions.c.revoked_at,
                    accounts.c.role,
                    accounts.c.status,
                )
                .join(sessions, sessions.c.session_id == refresh_tokens.c.session_id)
                .join(accounts, accounts.c.account_id == sessions.c.account_id)
                .where(refresh_tokens.c.token_hash == token_hash)
                .with_for_update(of=refresh_tokens)
            )
        ).first()
        if row is None:
            return None
        return PresentedRefreshToken(
            spent_at=row.spent_at,
            session_id=row.session_id,
            account_id=row.account_id,
            auth_time=row.auth_time,
            expires_at=row.expires_at,
            revoked_at=row.revoked_at,
            role=row.role,
            account_status=row.status,
        )

    async def spend(self, conn: AsyncConnection, token_hash: bytes, now: datetime) -> bool:
        """Mark the refresh token spent; False when it was spent already (a concurrent use)."""
        result = await conn.execute(
            update(refresh_tokens)
            .where(refresh_tokens.c.token_hash == token_hash, refresh_tokens.c.spent_at.is_(None))
            .values(spent_at=now)
        )
        return bool(result.rowcount)

    async def lifetime(self, conn: AsyncConnection, session_id: UUID) -> SessionLifetime | None:
        row = (
            await conn.execute(
                select(sessions.c.revoked_at, sessions.c.expires_at).where(
                    sessions.c.session_id == session_id
                )
            )
        ).first()
        return None if row is None else SessionLifetime(row.revoked_at, row.expires_at)

    async def revoke(
        self, conn: AsyncConnection, session_id: UUID, now: datetime, because: str
    ) -> list[UUID]:
        """End one session (if it is still live); returns it, or nothing when it had ended."""
        result = await conn.execute(
            update(sessions)
            .where(sessions.c.session_id == session_id, sessions.c.revoked_at.is_(None))
            .values(revoked_at=now, revoked_because=because)
            .returning(sessions.c.session_id)
        )
        return list(result.scalars())

    async def revoke_all_of(
        self,
        conn: AsyncConnection,
        account_id: UUID,
        now: datetime,
        because: str,
        *,
        except_session: UUID | None = None,
    ) -> list[UUID]:
        """End every live session of an account (but `except_session`); returns those ended."""
        statement = (
            update(sessions)
            .where(sessions.c.account_id == account_id, sessions.c.revoked_at.is_(None))
            .values(revoked_at=now, revoked_because=because)
            .returning(sessions.c.session_id)
        )
        if except_session is not None:
            statement = statement.where(sessions.c.session_id != except_session)
        result = await conn.execute(statement)
        return list(result.scalars())


# --- sign-in failures ------------------------------------------------------------------------


@dataclass(frozen=True)
class FailureCount:
    """Failed sign-ins counted under one throttle key (an email's or an address's keyed hash)
    since `window_started_at`, and the lock they led to, if any."""

    failures: int
    window_started_at: datetime
    locked_until: datetime | None


class SignInFailures:
    """The counts of failed sign-ins per throttle key."""

    async def locked_until(self, conn: AsyncConnection, key: str) -> datetime | None:
        """When the key's lock ends (None when it was never locked); it may be over already."""
        locked_until: datetime | None = await conn.scalar(
            select(sign_in_failures.c.locked_until).where(sign_in_failures.c.throttle_key == key)
        )
        return locked_until

    async def count_for_update(
        self, conn: AsyncConnection, key: str, now: datetime
    ) -> FailureCount:
        """The key's count (a fresh one from `now` on first failure), locked until the
        transaction ends so that concurrent failures are all counted."""
        await conn.execute(
            insert(sign_in_failures)
            .values(throttle_key=key, failures=0, window_started_at=now)
            .on_conflict_do_nothing(index_elements=[sign_in_failures.c.throttle_key])
        )
        row = (
            await conn.execute(
                select(sign_in_failures)
                .where(sign_in_failures.c.throttle_key == key)
                .with_for_update()
            )
        ).one()
        return FailureCount(row.failures, row.window_started_at, row.locked_until)

    async def save(self, conn: AsyncConnection, key: str, count: FailureCount) -> None:
        await conn.execute(
            update(sign_in_failures)
            .where(sign_in_failures.c.throttle_key == key)
            .values(
                failures=count.failures,
                window_started_at=count.window_started_at,
                locked_until=count.locked_until,
            )
        )

    async def forget(self, conn: AsyncConnection, key: str) -> None:
        """Drop the key's count (after a successful sign-in)."""
        await conn.execute(delete(sign_in_failures).where(sign_in_failures.c.throttle_key == key))

    async def forget_stale(
        self, conn: AsyncConnection, window_ended_before: datetime, now: datetime
    ) -> None:
        """Drop the counts whose window ended and whose lock (if any) is over."""
        await conn.execute(
            delete(sign_in_failures).where(
                sign_in_failures.c.window_started_at < window_ended_before,
                (sign_in_failures.c.locked_until.is_(None))
                | (sign_in_failures.c.locked_until < now),
            )
        )


# --- TOTP steps --------------------------------------------------------------------------------


class TotpSteps:
    """The last accepted TOTP time step per account."""

    async def accept(self, conn: AsyncConnection, account_id: UUID, step: int) -> bool:
        """Record `step` as used; False when it (or a later one) was used already (a replay)."""
        proposed = insert(totp_steps).values(account_id=account_id, last_step=step)
        statement = proposed.on_conflict_do_update(
            index_elements=[totp_steps.c.account_id],
            set_={"last_step": proposed.excluded.last_step},
            where=totp_steps.c.last_step < proposed.excluded.last_step,
        ).returning(totp_steps.c.account_id)
        row = (await conn.execute(statement)).first()
        return row is not None


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
