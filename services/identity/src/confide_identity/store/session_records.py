"""Sessions and their refresh tokens (kept only as SHA-256 digests)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from confide_toolkit.auth import Role
from sqlalchemy import (
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from confide_identity import domain
from confide_identity.store.tables import (
    accounts,
    refresh_tokens,
    sessions,
)

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
