"""The accounts: their repository over the event store, and the `accounts` read model, a
projection of the account events updated in the transaction of each append."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final
from uuid import UUID

import psycopg
from confide_toolkit.auth import Role
from confide_toolkit.clock import Clock
from confide_toolkit.event_store import EventStore, RecordedEvent
from confide_toolkit.keyring import WrappedDataKey, join_data_keys
from sqlalchemy import Row, bindparam, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement

from confide_identity import domain
from confide_identity.store.tables import (
    accounts,
)


def unseal(sealed: domain.Sealed) -> bytes:
    """The ciphertext bytes of a base64 value from a domain event."""
    return base64.b64decode(sealed)


def seal(ciphertext: bytes) -> domain.Sealed:
    """A ciphertext as the base64 text a domain event carries."""
    return base64.b64encode(ciphertext).decode("ascii")


# --- the projection -------------------------------------------------------------------------


# Built once, as every service's projection: a statement built per event cost more CPU than
# running it. The SET columns are the parameters' names (all but the WHERE's `of_account`).
_REGISTER_ACCOUNT = accounts.insert()
_UPDATE_ACCOUNT = update(accounts).where(accounts.c.account_id == bindparam("of_account"))
_ENABLE_TOTP = _UPDATE_ACCOUNT.values(totp_secret=accounts.c.totp_pending, totp_pending=None)


async def project_account(conn: AsyncConnection, recorded: RecordedEvent) -> None:
    """Apply one account event to the `accounts` read model."""
    event = recorded.event
    changes: dict[str, Any]
    statement = _UPDATE_ACCOUNT
    match event:
        case domain.AccountRegistered():
            await conn.execute(
                _REGISTER_ACCOUNT,
                {
                    "account_id": event.account_id,
                    "role": event.role,
                    "status": "active",
                    "email_index": event.email_index,
                    "profile": unseal(event.profile),
                    "password_hash": unseal(event.password_hash),
                    "password_changed_at": event.registered_at,
                    "registered_at": event.registered_at,
                    "version": recorded.version,
                },
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
            # The secret moves from one column to the other: no parameter carries it.
            changes, statement = {}, _ENABLE_TOTP
        case domain.AccountClosed():
            changes = {"status": "closed", "closed_at": event.closed_at}
        case domain.ProfileShredded():
            changes = {"status": "erased", "email_index": None}
        case _:
            raise TypeError(f"no projection for {type(event).__name__}")
    await conn.execute(
        statement, {"of_account": recorded.stream_id, "version": recorded.version, **changes}
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
