"""Every service's own read model of the sessions identity ended, so that the access tokens of
a signed-out, closed or stolen session are refused everywhere within about a second, not only
when they expire (their lifetime is ten minutes).

Services never call identity (DESIGN rule 1). Identity publishes `SessionsRevoked` on
`identity.events` (sign-out, password change, account closure, a refresh token presented twice,
an erased profile); a service that opts in records the sessions in `session_revocations` in its
own database, and its `TokenVerifier` refuses every token whose `sid` claim names one of them.
A service opts in with two lines:

    run_migrations(store.metadata, toolkit_parts=[SESSION_REVOCATIONS])  # migrations/env.py
    service.refuse_revoked_sessions()  # app.py, before create_app

It is an optional part of the toolkit's history, as `consent_view` is, rather than a core table:
identity, which decides revocations, checks its own sessions table and must not also wait for
its own events; the other services opt in with the two lines above.

A revocation names sessions, not tokens: a token carries its session (`sid`), and a revoked
session issues no more tokens, so the last of its tokens expires by the event's
`tokens_expire_by`. A row is forgotten a margin after that: the table holds the revocations of
the last quarter of an hour or so, whatever the number of tokens.

The check runs for every authenticated request, so `RevokedSessions` keeps the revoked session
ids in memory and reloads them when they are older than `max_age` (half a second): at most two
small queries a second per process, and a revocation recorded by any replica's consumer is
refused by every replica within `max_age`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from datetime import timedelta
from typing import Final
from uuid import UUID

from confide_events import IntegrationEvent
from confide_events.identity import SessionsRevoked
from sqlalchemy import Column, DateTime, Index, String, Table, Uuid, delete, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from confide_toolkit.auth import Caller
from confide_toolkit.clock import Clock
from confide_toolkit.database import toolkit_metadata
from confide_toolkit.inbox import EventContext, EventHandler

FORGET_MARGIN: Final = timedelta(minutes=2)
"""How long past `tokens_expire_by` a revoked session is kept: covers the verifiers' leeway
on `exp` (30 s) and clock skew between identity and the service."""

session_revocations = Table(
    "session_revocations",
    toolkit_metadata,
    Column("session_id", Uuid, primary_key=True),
    Column("subject_id", Uuid, nullable=False),
    Column("reason", String(32), nullable=False),
    Column("revoked_at", DateTime(timezone=True), nullable=False),
    Column("forget_after", DateTime(timezone=True), nullable=False),
    # Loading the revocations still in force, and forgetting the others, scan by this column.
    Index("ix_session_revocations_forget_after", "forget_after"),
)
"""A service's copy of the sessions identity ended whose tokens may still be presented."""


async def record_sessions_revoked(event: SessionsRevoked, ctx: EventContext) -> None:
    """Add the event's sessions to the read model (idempotent: the first revocation stands),
    and forget the sessions whose last token has expired."""
    forget_after = event.tokens_expire_by + FORGET_MARGIN
    statement = insert(session_revocations).values(
        [
            {
                "session_id": session_id,
                "subject_id": event.subject_id,
                "reason": event.reason,
                "revoked_at": event.revoked_at,
                "forget_after": forget_after,
            }
            for session_id in event.session_ids
        ]
    )
    await ctx.conn.execute(statement.on_conflict_do_nothing(index_elements=["session_id"]))
    # Forgetting rides on the next revocation: the table stays small without a job of its own.
    await ctx.conn.execute(
        delete(session_revocations).where(session_revocations.c.forget_after < func.now())
    )


def revocation_handlers() -> Mapping[type[IntegrationEvent], EventHandler]:
    """The handler that keeps `session_revocations`, for
    `service.subscribe(IDENTITY_EVENTS, ...)` (`Service.refuse_revoked_sessions` does it)."""
    return {SessionsRevoked: record_sessions_revoked}


class RevokedSessions:
    """The sessions of `session_revocations` still in force, as a `TokenVerifier` revocation
    check: `await revoked.is_revoked(caller)`.

    The ids are kept in memory and reloaded on the first check after they are `max_age` old
    (measured on the process's monotonic time, so a test's frozen clock does not freeze them);
    concurrent checks wait for one reload."""

    def __init__(
        self, engine: AsyncEngine, clock: Clock, *, max_age: timedelta = timedelta(seconds=0.5)
    ) -> None:
        self._engine = engine
        self._clock = clock
        self._max_age = max_age.total_seconds()
        self._revoked: frozenset[UUID] = frozenset()
        self._loaded_at: float | None = None
        self._lock = asyncio.Lock()

    async def is_revoked(self, caller: Caller) -> bool:
        """Whether the caller's session was revoked (a token without a session never is: it
        predates the `sid` claim and expires within its short lifetime)."""
        if caller.session_id is None:
            return False
        await self._reload_if_old()
        return caller.session_id in self._revoked

    def _fresh(self) -> bool:
        return self._loaded_at is not None and time.monotonic() - self._loaded_at < self._max_age

    async def _reload_if_old(self) -> None:
        if self._fresh():
            return
        async with self._lock:
            # Another check may have reloaded while this one waited for the lock.
            if self._fresh():
                return
            started = time.monotonic()
            async with self._engine.connect() as conn:
                rows = await conn.execute(
                    select(session_revocations.c.session_id).where(
                        session_revocations.c.forget_after > self._clock.now()
                    )
                )
                self._revoked = frozenset(row.session_id for row in rows)
            # Aged from before the query: a revocation committed during it is seen next time.
            self._loaded_at = started
