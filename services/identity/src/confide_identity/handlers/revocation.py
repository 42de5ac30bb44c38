"""Ending sessions and saying so: every service refuses the ended sessions' access tokens once
it has read `SessionsRevoked` from identity.events (`confide_toolkit.revocations`), instead of
when they expire.

The functions end the sessions in the caller's transaction and return the event that announces
it; the caller writes it with that transaction (`deps.outbox.put`, or `ctx.emit` in a consumer),
so the sessions end and the announcement leaves together or not at all."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from uuid import UUID

from confide_events.identity import SessionRevocationReason, SessionsRevoked
from sqlalchemy.ext.asyncio import AsyncConnection

from confide_identity.handlers import Dependencies


async def end_session(
    deps: Dependencies,
    conn: AsyncConnection,
    account_id: UUID,
    session_id: UUID,
    now: datetime,
    reason: SessionRevocationReason,
) -> SessionsRevoked | None:
    """End one session; its announcement, or None when it had ended already (and was
    announced then)."""
    ended = await deps.sessions.revoke(conn, session_id, now, reason)
    return announcement(deps, account_id, ended, now, reason)


async def end_sessions_of(
    deps: Dependencies,
    conn: AsyncConnection,
    account_id: UUID,
    now: datetime,
    reason: SessionRevocationReason,
    *,
    except_session: UUID | None = None,
) -> SessionsRevoked | None:
    """End every live session of an account but `except_session`; their announcement, or None
    when none was live."""
    ended = await deps.sessions.revoke_all_of(
        conn, account_id, now, reason, except_session=except_session
    )
    return announcement(deps, account_id, ended, now, reason)


def announcement(
    deps: Dependencies,
    account_id: UUID,
    ended: Sequence[UUID],
    now: datetime,
    reason: SessionRevocationReason,
) -> SessionsRevoked | None:
    """`SessionsRevoked` for the sessions just ended (None for none). An ended session issues no
    more tokens, so the last of them expires one access-token lifetime from now."""
    if not ended:
        return None
    return SessionsRevoked(
        subject_id=account_id,
        session_ids=tuple(ended),
        reason=reason,
        revoked_at=now,
        tokens_expire_by=now + deps.access_token_ttl,
    )
